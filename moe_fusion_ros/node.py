"""``fusion_node``: the rclpy shell around :class:`~moe_fusion_ros.pipeline.FusionPipeline` (the only rclpy importer).

Lifecycle node ``moe_fusion`` (``autostart`` configures and activates it in :func:`main`):

- configure: reads and validates the parameters, loads and warms up the model, creates the publishers; cleanup
  releases them. A failure is logged with the exception and reported as ERROR on ``/diagnostics``; at autostart
  the process then exits with code 1, unless ``exit_on_configure_failure`` is false: then the node stays
  unconfigured (still reporting the ERROR) until a configure succeeds;
- activate: subscribes ``thermal/image_raw`` and ``rgb/image_raw`` (``sensor_msgs/Image``, QoS copied from the
  publisher, else best effort) through ``message_filters.Subscriber`` into the optimal approximate-time
  synchroniser behind an :class:`~moe_fusion_ros.inputs.InputFrontEnd` (time jumps, idle flush, a missing input);
  deactivate stops them and the worker;
- the synchroniser's callback only drops the pair into a latest-only slot (:mod:`moe_fusion_ros.latest`); a worker
  thread decodes, fuses and publishes, so the executor is never blocked;
- publishes ``fused/image``, ``fused/detections``, ``fused/gates``, ``fused/status``, ``fused/camera_info`` and
  ``fused/debug_image`` (only while subscribed), all with the RGB input's header (:mod:`moe_fusion_ros.messages`);
- reports inputs, sync and inference on ``/diagnostics`` (content: :mod:`moe_fusion_ros.health`).

Parameters: :mod:`moe_fusion_ros.params` (``config/fusion.yaml``). Messages are built from the pipeline's plain
data by :mod:`moe_fusion_ros.convert`. SIGINT and SIGTERM end the node cleanly with exit code 0.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any

try:
    import message_filters
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rcl_interfaces.msg import (
        FloatingPointRange,
        IntegerRange,
        ParameterDescriptor,
        ParameterType,
        SetParametersResult,
    )
    from rclpy.clock import Clock, ClockType
    from rclpy.executors import ExternalShutdownException
    from rclpy.lifecycle import Node as LifecycleNode
    from rclpy.lifecycle import State, TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from rclpy.qos import (
        DurabilityPolicy,
        HistoryPolicy,
        QoSProfile,
        ReliabilityPolicy,
        qos_profile_sensor_data,
    )
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Float32MultiArray
    from vision_msgs.msg import Detection2D, Detection2DArray
except ImportError as e:  # pragma: no cover - depends on the ROS installation
    raise ImportError(f"moe_fusion_ros.node needs a ROS 2 (Humble or Jazzy) environment with rclpy, message_filters, "
                      f"vision_msgs and diagnostic_msgs: source /opt/ros/<distro>/setup.bash ({e})") from e

from moe_fusion_core.registration import homography_yaml

from . import health
from .auto_registration import IDLE, AutoRegistration
from .convert import to_ros
from .inputs import InputFrontEnd, Single, matching_qos, other
from .latest import BufferClosed, make_buffer
from .params import DECLARATIONS, FusionParams, ParamSpec, check_change, is_ours, validate
from .pipeline import FusionPipeline
from .sync import RGB, THERMAL, optimal_approximate_time_synchronizer
from .thermal import decode_visible, stamp_ns, thermal_array

PARAM_TYPES = {"bool": ParameterType.PARAMETER_BOOL, "int": ParameterType.PARAMETER_INTEGER,
               "double": ParameterType.PARAMETER_DOUBLE, "string": ParameterType.PARAMETER_STRING,
               "double_array": ParameterType.PARAMETER_DOUBLE_ARRAY,
               "string_array": ParameterType.PARAMETER_STRING_ARRAY}
INPUTS = {THERMAL: "thermal/image_raw", RGB: "rgb/image_raw"}
RGB_INFO = "rgb/camera_info"
OUTPUT_TYPES = {"image": Image, "detections": Detection2DArray, "gates": Float32MultiArray,
                "debug_image": Image, "camera_info": CameraInfo, "status": DiagnosticArray}


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """A ParameterDescriptor with type, description and range from a :class:`ParamSpec`.

    Read-only parameters (model, device, QoS, processing mode) are not marked ``read_only`` for rclpy, which
    would refuse them even while the node is unconfigured: :meth:`FusionNode._on_set_parameters` refuses them
    while the node is configured, with the reason, and accepts them while unconfigured (fix, then configure)."""
    text = spec.description + ("; read-only while configured (set it while unconfigured, then configure)"
                               if spec.read_only else "")
    d = ParameterDescriptor(name=spec.name, type=PARAM_TYPES[spec.type], description=text)
    if spec.range is not None and spec.type == "double":
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]), to_value=float(spec.range[1]),
                                                     step=0.0)]
    elif spec.range is not None and spec.type == "int":
        d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
    if spec.choices:
        d.additional_constraints = "one of: " + ", ".join(spec.choices)
    return d


def detection_layout() -> str:
    """``jazzy`` (vision_msgs 4.x: bbox.center.position) or ``galactic`` (3.x: bbox.center.x)."""
    return "jazzy" if hasattr(Detection2D().bbox.center, "position") else "galactic"


def _event_callbacks(on_incompatible: Any) -> Any:
    try:
        from rclpy.event_handler import SubscriptionEventCallbacks  # Iron and newer
    except ImportError:  # pragma: no cover
        from rclpy.qos_event import SubscriptionEventCallbacks  # Humble
    return SubscriptionEventCallbacks(incompatible_qos=on_incompatible)


def _qos_overriding() -> dict[str, Any]:
    from rclpy.qos_overriding_options import QoSOverridingOptions

    return {"qos_overriding_options": QoSOverridingOptions.with_default_policies()}


class FusionNode(LifecycleNode):
    """Thermal + RGB fusion lifecycle node (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("moe_fusion", **kwargs)
        for spec in DECLARATIONS:
            if spec.type == "string_array" and not spec.default:  # rclpy types an empty list as a byte array
                if self.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY, descriptor(spec)).value is None:
                    self.set_parameters([Parameter(spec.name, Parameter.Type.STRING_ARRAY, [])])
            else:
                self.declare_parameter(spec.name, spec.default, descriptor(spec))
        self.params: FusionParams | None = None
        self.engine: Any = None
        self.pipeline: FusionPipeline | None = None
        self.front: InputFrontEnd | None = None
        self.buffer: Any = None
        self.worker: threading.Thread | None = None
        self.subs: list[Any] = []
        self.info_sub: Any = None
        self.sync: Any = None
        self.pubs: dict[str, Any] = {}
        self.updater: Any = None
        self.hardware_id = "moe_fusion"
        self.rates = {k: health.RateMeter() for k in (*INPUTS, "pairs", "published")}
        self.latency_ms: deque[float] = deque(maxlen=200)
        self.stamp_age_ms: deque[float] = deque(maxlen=200)
        self.incompatible_qos = 0
        self.last_jump_time: float | None = None
        self.last_skip: str | None = None
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._ticker: Any = None
        self._requalify = False
        self._ros_time = (0, time.monotonic())  # last ROS time seen by the ticker, and when it changed
        self.configure_error: str | None = None  # why the last configure failed (ERROR on /diagnostics)
        self.autoreg = AutoRegistration(self._on_autoreg)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ------------------------------------------------------------------ parameters
    def _read_params(self) -> FusionParams:
        return validate({s.name: self.get_parameter(s.name).value for s in DECLARATIONS})

    def _on_set_parameters(self, params: list[Any]) -> SetParametersResult:
        ours = [p for p in params if is_ours(p.name)]  # others (use_sim_time, qos_overrides.*, ...) are rclpy's
        try:
            if self.params is None:  # unconfigured: any of ours may change, checked with the others' current values
                current = {s.name: self.get_parameter(s.name).value for s in DECLARATIONS}
                validate({**current, **{p.name: p.value for p in ours}})
                return SetParametersResult(successful=True)
            new = self.params
            for p in ours:
                new = check_change(p.name, p.value, new)
            if self.pipeline is not None:
                self.pipeline.set_classes(new.detections_classes)  # names the model does not have: refused
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        self._apply(new)
        for p in ours:
            if p.name == "registration.auto" and p.value:  # setting it true (again) starts a new estimate
                self._autoreg_start()
            elif p.name == "registration.auto":
                self.autoreg.stop()
        return SetParametersResult(successful=True)

    def _autoreg_start(self) -> None:
        p = self.params
        self.autoreg.start(p.registration_auto_max_frames, p.registration_auto_timeout_s)
        self.get_logger().info("registration.auto: estimating the thermal-to-RGB homography from the next pairs")

    def _on_autoreg(self, est: Any) -> None:
        """A confident estimate (from the estimating thread): apply it as registration.homography, say so."""
        h = [float(x) for x in est.h.ravel()]
        res = self.set_parameters([Parameter("registration.homography", Parameter.Type.DOUBLE_ARRAY, h)])[0]
        if not res.successful:
            self.get_logger().error(f"registration.auto: estimate not applied: {res.reason}")
            return
        self.get_logger().info(f"registration.auto: applied ({est.summary()}); to keep it, put in the parameter "
                               f"file: registration.homography: {homography_yaml(est.h)}")

    def _apply(self, p: FusionParams) -> None:
        """Live parameter changes take effect from the next message / pair."""
        self.params = p
        if self.engine is not None:
            self.engine.score_threshold = p.score_threshold()  # None: the model's own, per class
        pipe = self.pipeline
        if pipe is not None:
            pipe.color = p.output_color
            pipe.detections = p.model_detections
            pipe.set_classes(p.detections_classes)
            pipe.set_tracking(p.detections_tracking)
            pipe.gates = p.output_gates
            pipe.class_id = p.output_class_id
            pipe.frame_id = p.output_frame_id
            pipe.camera_info = p.output_camera_info
            pipe.normalizer.cfg = p.thermal_normalization()
            pipe.max_invalid_fraction = p.thermal_max_invalid_fraction
            pipe.set_homography(p.homography())
            pipe.sync.configure(p.sync_slop, p.sync_queue_size, p.sync_thermal_offset, p.sync_time_jump_s)
        if self.front is not None:
            self.front.configure(p.sync_idle_flush_s, p.inputs_missing_timeout_s, p.inputs_single_modality)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            p = self._read_params()
            self.engine = self._load_engine(p)
            self.pipeline = FusionPipeline(
                self.engine, slop=p.sync_slop, queue_size=p.sync_queue_size, thermal_offset=p.sync_thermal_offset,
                time_jump=p.sync_time_jump_s, normalization=p.thermal_normalization(), color=p.output_color,
                detections=p.model_detections, gates=p.output_gates, layout=detection_layout(),
                class_id=p.output_class_id, frame_id=p.output_frame_id, keep_history=False,
                camera_info=p.output_camera_info, homography=p.homography(),
                max_invalid_fraction=p.thermal_max_invalid_fraction, classes=p.detections_classes,
                tracking=p.detections_tracking)
            self.pipeline.sync.on_reset = self._on_time_jump
            self.pubs = self._create_publishers()
            self._setup_diagnostics()
        except Exception as e:  # rclpy would turn it into a silent ERROR transition: say why, always
            self._release()
            if self.context.ok():  # (not when Ctrl-C shut the context down during a long warm-up)
                self.configure_error = f"{type(e).__name__}: {e}"
                self.get_logger().error(f"configure failed: {self.configure_error}\n{traceback.format_exc()}")
                self._setup_diagnostics()
                self.updater.force_update()
            return TransitionCallbackReturn.FAILURE
        self.params = p
        self.configure_error = None
        if p.registration_auto:
            self._autoreg_start()
        return TransitionCallbackReturn.SUCCESS

    def _create_publishers(self) -> dict[str, Any]:
        over = _qos_overriding()
        latest = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        every = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        qos = {"image": latest, "detections": every, "gates": every, "debug_image": qos_profile_sensor_data,
               "camera_info": latest, "status": every}
        return {k: self.create_publisher(OUTPUT_TYPES[k], f"fused/{k}", qos[k], **over) for k in OUTPUT_TYPES}

    def _load_engine(self, p: FusionParams) -> Any:
        import torch

        from moe_fusion_core.engine import FusionEngine

        device = p.model_device
        if device.startswith("cuda") and not torch.cuda.is_available():
            if not p.model_allow_cpu_fallback:
                raise ValueError(f"model.device={device} but CUDA is not available "
                                 "(launch with device:=cpu, or set model.allow_cpu_fallback:=true)")
            self.get_logger().warning(f"CUDA unavailable: running on CPU instead of {device}")
            device = "cpu"
        t = time.perf_counter()
        engine = FusionEngine(device=device, **p.engine_options())
        load_s = time.perf_counter() - t
        warm_s = engine.warmup(p.model_warmup_iters) if p.model_warmup_iters else 0.0
        name = torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else "cpu"
        precision = engine.quantization or p.model_precision
        self.get_logger().info(f"model {engine.checkpoint} on {engine.device} ({name}), {precision}, "
                               f"torch {torch.__version__}; loaded in {load_s:.1f} s, warm-up {warm_s:.1f} s")
        self.hardware_id = name
        return engine

    def _input_qos(self, topic: str) -> QoSProfile:
        p = self.params
        qos = QoSProfile(depth=p.qos_input_depth, reliability=ReliabilityPolicy.BEST_EFFORT,
                         history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE)
        if p.qos_input_reliability == "reliable":
            qos.reliability = ReliabilityPolicy.RELIABLE
        elif p.qos_input_reliability == "auto":
            name = self.resolve_topic_name(topic)
            offers = [(i.qos_profile.reliability.name.lower(), i.qos_profile.durability.name.lower())
                      for i in self.get_publishers_info_by_topic(name)]
            rel, dur = matching_qos(offers)
            qos.reliability = ReliabilityPolicy[rel.upper()]
            qos.durability = DurabilityPolicy[dur.upper()]
            self.get_logger().info(f"{name}: subscribing {rel}, {dur} (qos.input_reliability auto, "
                                   f"{len(offers)} publisher(s))")
        return qos

    def _ros_now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        p = self.params
        self.pipeline.tracker.reset()  # tracks do not outlive a deactivation
        self.front = InputFrontEnd(self.pipeline.sync, self._ros_now_ns, idle_flush_s=p.sync_idle_flush_s,
                                   missing_timeout_s=p.inputs_missing_timeout_s,
                                   single_modality=p.inputs_single_modality, on_missing=self._on_missing)
        self._subscribe()
        self.sync = optimal_approximate_time_synchronizer(self.subs, source=self.front)
        self.sync.registerCallback(self._on_pair)
        self.buffer = make_buffer(p.processing_mode)
        self.worker = threading.Thread(target=self._work, name="moe_fusion_worker", daemon=True)
        self.worker.start()
        # a steady timer: it keeps running when a bag's /clock stops (idle flush, missing inputs)
        self._ticker = self.create_timer(0.05, self._tick, clock=self._steady)
        self.get_logger().info(f"active: {self.resolve_topic_name(INPUTS[THERMAL])} + "
                               f"{self.resolve_topic_name(INPUTS[RGB])} -> fused/image, fused/detections "
                               f"(slop {p.sync_slop} s, mode {p.processing_mode})")
        return super().on_activate(state)

    def _subscribe(self) -> None:
        """The input subscriptions (message_filters subscribers for the images, CameraInfo), QoS per parameter."""
        events = _event_callbacks(self._on_incompatible_qos)
        self.subs = []
        for key, topic in INPUTS.items():
            sub = message_filters.Subscriber(self, Image, topic, qos_profile=self._input_qos(topic),
                                             event_callbacks=events)
            sub.registerCallback(self._on_input, key)
            self.subs.append(sub)
        self.info_sub = self.create_subscription(CameraInfo, RGB_INFO, self.pipeline.set_camera_info,
                                                 self._input_qos(RGB_INFO), event_callbacks=events)
        self._requalify = False

    def _unsubscribe(self) -> None:
        for sub in self.subs:
            self.destroy_subscription(sub.sub)
        self.subs = []
        if self.info_sub is not None:
            self.destroy_subscription(self.info_sub)
            self.info_sub = None

    def _resubscribe(self) -> None:
        """``auto`` QoS and a publisher the subscriptions cannot hear: subscribe again, matching every publisher."""
        self._unsubscribe()
        self._subscribe()
        self.sync.connectInput(self.subs)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop()
        return super().on_deactivate(state)

    def _stop(self) -> None:
        """Undo :meth:`on_activate`: timer, subscriptions, synchroniser, worker (joined)."""
        if self._ticker is not None:
            self.destroy_timer(self._ticker)
            self._ticker = None
        self._unsubscribe()
        self.sync, self.front = None, None
        if self.buffer is not None:
            self.buffer.close()
        if self.worker is not None:
            self.worker.join(timeout=30.0)
            if self.worker.is_alive():
                self.get_logger().warning("worker still busy after 30 s; leaving it to finish its frame")
            self.worker = None

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        """Undo :meth:`on_configure`: publishers, pipeline, model (and the CUDA cache)."""
        self.autoreg.stop()
        for pub in self.pubs.values():
            self.destroy_publisher(pub)
        self.pubs = {}
        had_engine = self.engine is not None
        self.engine = self.pipeline = None
        self.params = None
        if had_engine:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._stop()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------ callbacks (executor thread: keep short)
    def _on_incompatible_qos(self, event: Any) -> None:
        policy = getattr(getattr(event, "last_policy_kind", None), "name", "?")
        if self.params is not None and self.params.qos_input_reliability == "auto":
            self._requalify = True  # the steady timer re-subscribes (not from inside this subscription's callback)
            self.get_logger().warning(f"a new input publisher offers an incompatible QoS ({policy}): re-subscribing "
                                      "to match every publisher (qos.input_reliability auto)")
        else:
            self.get_logger().warning(
                f"an input publisher's QoS is incompatible with this node's subscription ({policy}): nothing is "
                "received from it. Set qos.input_reliability:=best_effort or auto (both match reliable and "
                "best-effort publishers), or make the publisher reliable", throttle_duration_sec=5.0)
        self.incompatible_qos += 1  # after the warning: whoever sees the count can read why in the log

    def _on_time_jump(self, stream: str, newest_ns: int, stamp_ns_: int) -> None:
        self.last_jump_time = time.monotonic()
        self.get_logger().warning(
            f"time went backwards on {stream} by {(newest_ns - stamp_ns_) / 1e9:.3f} s (bag replayed or looped, "
            "or sim time reset): pairing reset, pairing the new stream")

    def _on_missing(self, before: str | None, now: str | None) -> None:
        log = self.get_logger()
        single = self.params is not None and self.params.inputs_single_modality
        if now is not None:
            gap = self.front.monitor.timeout(now) / 1e9 if self.front is not None else 0.0
            log.warning(f"{now} input missing (nothing for {gap:.2g} s while {other(now)}"
                        f" streams): " + (f"publishing {other(now)} alone" if single else "publishing nothing"))
        elif before is not None:
            log.info(f"{before} input back: fusing pairs again")

    def _on_input(self, msg: Image, key: str) -> None:
        self.rates[key].tick()

    def _on_pair(self, thermal: Image | None, rgb: Image | None) -> None:
        """A pair, or one image whose partner input is missing (the other is ``None``), ready to fuse."""
        if thermal is not None and rgb is not None:
            self.rates["pairs"].tick()
        with contextlib.suppress(BufferClosed):  # deactivating
            self.buffer.put((thermal, rgb, time.monotonic()))

    def _tick(self) -> None:
        """Steady timer: idle flush and missing inputs, also while a bag's /clock stands still."""
        if self.sync is None or self.params is None:
            return
        if self._requalify:
            self._resubscribe()
        ros_now, mono = self._ros_now_ns(), time.monotonic()
        if ros_now != self._ros_time[0]:
            self._ros_time = (ros_now, mono)
        stalled = mono - self._ros_time[1] >= self.params.sync_idle_flush_s
        self.sync.tick(clock_stalled=stalled)

    # ------------------------------------------------------------------ worker thread
    def _work(self) -> None:
        while True:
            try:
                item = self.buffer.get(timeout=0.5)
            except BufferClosed:
                return
            if item is None:
                continue
            p, pipe = self.params, self.pipeline
            if p is None or pipe is None:
                return
            try:
                self._fuse_and_publish(*item, p, pipe)
            except Exception as e:  # a frame must never end the worker
                if not self.context.ok():
                    return  # Ctrl-C / SIGTERM while this frame was being fused: nothing to publish it to
                thermal, rgb, _ = item
                pipe.record_failure(None if thermal is None else stamp_ns(thermal),
                                    None if rgb is None else stamp_ns(rgb), e)
                self.last_skip = pipe.failures[-1].reason
                self.get_logger().error(f"frame failed: {self.last_skip}\n{traceback.format_exc()}",
                                        throttle_duration_sec=5.0)

    def _fuse_and_publish(self, thermal: Image | None, rgb: Image | None, t_ready: float, p: FusionParams,
                          pipe: FusionPipeline) -> None:
        debug = p.output_debug_image and self.pubs["debug_image"].get_subscription_count() > 0
        if thermal is not None and rgb is not None:
            if self.autoreg.wants():  # estimated in its own thread, from the thermal image in its own pixels
                self.autoreg.offer(thermal_array(thermal), decode_visible(rgb))
            out = pipe.process(thermal, rgb, debug=debug)
        else:
            msg, stream = (thermal, THERMAL) if thermal is not None else (rgb, RGB)
            out = pipe.process_single(Single(stream, msg, stamp_ns(msg), other(stream)), debug=debug)
        if out is None:
            self.last_skip = pipe.failures[-1].reason if pipe.failures else "unknown"
            self.get_logger().warning(f"frame skipped: {self.last_skip}", throttle_duration_sec=5.0)
            return
        self._publish(out, p)
        self.latency_ms.append((time.monotonic() - t_ready) * 1e3)
        now = self._ros_now_ns()
        if now > 0:  # sim time before the first /clock is 0: no meaningful age
            self.stamp_age_ms.append((now - stamp_ns(rgb if rgb is not None else thermal)) / 1e6)

    def _publish(self, out: Any, p: FusionParams) -> None:
        pubs = self.pubs
        pubs["image"].publish(to_ros(Image, out.image))
        pubs["detections"].publish(to_ros(Detection2DArray, out.detections))
        if self.autoreg.state != IDLE:
            out.status["status"][0]["values"] += [{"key": k, "value": v} for k, v in self.autoreg.values()]
        pubs["status"].publish(to_ros(DiagnosticArray, out.status))
        if p.output_gates:
            pubs["gates"].publish(to_ros(Float32MultiArray, out.gates))
        if out.debug_image is not None:
            pubs["debug_image"].publish(to_ros(Image, out.debug_image))
        if out.camera_info is not None:
            pubs["camera_info"].publish(to_ros(CameraInfo, out.camera_info))
        self.rates["published"].tick()

    # ------------------------------------------------------------------ diagnostics
    def _setup_diagnostics(self) -> None:
        import diagnostic_updater

        if self.updater is None:
            self.updater = diagnostic_updater.Updater(self, period=1.0)
            # its timer runs on the node clock, which stops with a bag's /clock: publish on wall time instead
            self.destroy_timer(self.updater.timer)
            self.updater.timer = self.create_timer(self.updater.period, self.updater.update, clock=self._steady)
            self.updater.add("inputs", self._diag(self._inputs_status))
            self.updater.add("sync", self._diag(self._sync_status))
            self.updater.add("inference", self._diag(self._inference_status))
            self.updater.add("registration", self._diag(self.autoreg.status))
        self.updater.setHardwareID(self.hardware_id)

    def _diag(self, build: Any) -> Any:
        def task(stat: Any) -> Any:
            if self.pipeline is not None and self.params is not None:
                s = build()
            elif self.configure_error is not None:
                s = health.Status(health.ERROR, f"configure failed: {self.configure_error}")
            else:
                s = health.Status(health.STALE, "not configured")
            stat.summary(bytes([s.level]), s.message)  # DiagnosticStatus.level is a byte
            for k, v in s.values:
                stat.add(k, v)
            return stat

        return task

    def _inputs_status(self) -> health.Status:
        p = self.params
        states = self.front.status() if self.front is not None else {}
        return health.inputs_status(
            {k: self.rates[k].rate() for k in INPUTS}, {k: self.rates[k].count for k in INPUTS},
            {THERMAL: p.diagnostics_expected_thermal_hz, RGB: p.diagnostics_expected_rgb_hz}, states,
            self.incompatible_qos, p.inputs_single_modality)

    def _sync_status(self) -> health.Status:
        p, pipe, now = self.params, self.pipeline, time.monotonic()
        st, last_pair = pipe.sync.stats, self.rates["pairs"].last
        flowing = all(m.last is not None and now - m.last < 1.0 for k, m in self.rates.items() if k in INPUTS)
        return health.sync_status(
            st.pairs, self.rates["pairs"].rate(), st.mean_abs_dt_ms if st.pairs else float("nan"),
            st.abs_dt_max_ns / 1e6, pipe.unpaired_counts, st.time_jumps,
            None if self.last_jump_time is None else now - self.last_jump_time,
            self.front.idle_flushes if self.front is not None else 0,
            None if last_pair is None else now - last_pair, flowing, p.diagnostics_no_pair_warn_s)

    def _inference_status(self) -> health.Status:
        pipe = self.pipeline
        return health.inference_status(
            self.rates["published"].rate(), self.latency_ms, self.stamp_age_ms,
            self.buffer.dropped if self.buffer is not None else 0, pipe.failure_counts, self.last_skip,
            pipe.singles, pipe.camera_info_errors, str(self.engine.device) if self.engine is not None else "-",
            health.rss_mb())


def main(args: list[str] | None = None) -> int:
    """Console script ``fusion_node``: start, autostart (configure + activate), spin; exit 0 on SIGINT/SIGTERM."""
    signals: list[int] = []

    def note(signum: int, frame: Any) -> None:  # rclpy's own handler (which runs first) shuts the context down
        signals.append(signum)

    signal.signal(signal.SIGINT, note)
    signal.signal(signal.SIGTERM, note)
    rclpy.init(args=args)
    node = FusionNode()
    exit_code = 0
    try:
        if node.get_parameter("autostart").value and not signals:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                if not signals:
                    node.trigger_activate()
            elif node.get_parameter("exit_on_configure_failure").value and not signals:
                node.get_logger().error("configure failed (reason above): exiting with code 1 "
                                        "(exit_on_configure_failure: false waits for a retry instead)")
                _report_before_exit(node)
                exit_code = 1
            elif not signals:
                node.get_logger().error(
                    f"configure failed (reason above); {node.get_fully_qualified_name()} left unconfigured: fix "
                    f"the parameters (ros2 param set {node.get_fully_qualified_name()} ...), then: ros2 lifecycle "
                    f"set {node.get_fully_qualified_name()} configure")
        if not signals and not exit_code:
            rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # a signal shut the context down while the executor was building its wait set
        if not signals and rclpy.ok():
            raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        node._stop()
        node._release()
        node.destroy_node()
        rclpy.try_shutdown()
    if signals:
        print(f"[moe_fusion] stopped by {signal.Signals(signals[0]).name}", file=sys.stderr)
        return 0
    return exit_code


def _report_before_exit(node: FusionNode, seconds: float = 2.0) -> None:
    """Publish the configure ERROR on /diagnostics for ``seconds`` (twice a second): a diagnostics aggregator
    or monitor that discovers the node only now still receives it before the process exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and rclpy.ok():
        node.updater.force_update()
        rclpy.spin_once(node, timeout_sec=0.5)


if __name__ == "__main__":
    sys.exit(main())
