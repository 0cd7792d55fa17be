"""``fusion_node``: the rclpy shell around :class:`~moe_fusion_ros.pipeline.FusionPipeline` (the only rclpy importer).

Lifecycle node ``moe_fusion`` (``autostart`` configures and activates it in :func:`main`):

- subscribes ``thermal/image_raw`` and ``rgb/image_raw`` (``sensor_msgs/Image``, QoS copied from the publisher,
  else sensor data) through ``message_filters.Subscriber`` into the optimal approximate-time synchroniser
  (:mod:`moe_fusion_ros.sync`);
- the synchroniser's callback only drops the pair into a latest-only slot (:mod:`moe_fusion_ros.latest`); a worker
  thread decodes, fuses and publishes, so the executor is never blocked;
- subscribes ``rgb/camera_info`` (``output.camera_info``) and republishes the RGB calibration as
  ``fused/camera_info`` with each fused image's header (the fused pixels are the RGB image's);
- publishes ``fused/image`` (mono8, rgb8 with ``output.color``), ``fused/detections`` (vision_msgs
  Detection2DArray), ``fused/gates`` (Float32MultiArray) and ``fused/debug_image`` (only while subscribed), all with
  the RGB input's header;
- reports inputs, sync and inference on ``/diagnostics`` (diagnostic_updater).

Parameters: :mod:`moe_fusion_ros.params` (``config/fusion.yaml``).
"""

from __future__ import annotations

import array
import threading
import time
from collections import deque
from typing import Any

try:
    import message_filters
    import rclpy
    from diagnostic_msgs.msg import DiagnosticStatus
    from rcl_interfaces.msg import (
        FloatingPointRange,
        IntegerRange,
        ParameterDescriptor,
        ParameterType,
        SetParametersResult,
    )
    from rclpy.lifecycle import Node as LifecycleNode
    from rclpy.lifecycle import State, TransitionCallbackReturn
    from rclpy.qos import (
        DurabilityPolicy,
        HistoryPolicy,
        QoSProfile,
        ReliabilityPolicy,
        qos_profile_sensor_data,
    )
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Float32MultiArray, MultiArrayDimension
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
except ImportError as e:  # pragma: no cover - depends on the ROS installation
    raise ImportError(f"moe_fusion_ros.node needs a ROS 2 (Humble or Jazzy) environment with rclpy, message_filters, "
                      f"vision_msgs and diagnostic_msgs: source /opt/ros/<distro>/setup.bash ({e})") from e

from .latest import BufferClosed, make_buffer
from .params import DECLARATIONS, FusionParams, ParamSpec, check_change, validate
from .pipeline import FusionPipeline, percentile
from .sync import optimal_approximate_time_synchronizer
from .thermal import stamp_ns

PARAM_TYPES = {"bool": ParameterType.PARAMETER_BOOL, "int": ParameterType.PARAMETER_INTEGER,
               "double": ParameterType.PARAMETER_DOUBLE, "string": ParameterType.PARAMETER_STRING}
INPUTS = {"thermal": "thermal/image_raw", "rgb": "rgb/image_raw"}
RGB_INFO = "rgb/camera_info"


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """A ParameterDescriptor with type, description, range and read-only flag from a :class:`ParamSpec`."""
    d = ParameterDescriptor(name=spec.name, type=PARAM_TYPES[spec.type], description=spec.description,
                            read_only=spec.read_only)
    if spec.range is not None and spec.type == "double":
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]), to_value=float(spec.range[1]),
                                                     step=0.0)]
    elif spec.range is not None and spec.type == "int":
        d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
    if spec.choices:
        d.additional_constraints = "one of: " + ", ".join(spec.choices)
    return d


def _event_callbacks(on_incompatible: Any) -> Any:
    try:
        from rclpy.event_handler import SubscriptionEventCallbacks  # Iron and newer
    except ImportError:
        from rclpy.qos_event import SubscriptionEventCallbacks  # Humble
    return SubscriptionEventCallbacks(incompatible_qos=on_incompatible)


def _qos_overriding() -> dict[str, Any]:
    try:
        from rclpy.qos_overriding_options import QoSOverridingOptions

        return {"qos_overriding_options": QoSOverridingOptions.with_default_policies()}
    except ImportError:  # pragma: no cover
        return {}


# ---------------------------------------------------------------------- plain data -> ROS messages
def to_image(d: dict[str, Any]) -> Image:
    m = Image()
    _fill_header(m.header, d["header"])
    m.height, m.width, m.encoding = int(d["height"]), int(d["width"]), d["encoding"]
    m.is_bigendian, m.step = int(d["is_bigendian"]), int(d["step"])
    m.data = array.array("B", d["data"].tobytes())
    return m


def _fill_header(h: Any, d: dict[str, Any]) -> None:
    h.stamp.sec, h.stamp.nanosec, h.frame_id = int(d["stamp"]["sec"]), int(d["stamp"]["nanosec"]), d["frame_id"]


def to_detections(d: dict[str, Any]) -> Detection2DArray:
    arr = Detection2DArray()
    _fill_header(arr.header, d["header"])
    for det in d["detections"]:
        m = Detection2D()
        _fill_header(m.header, det["header"])
        c = det["bbox"]["center"]
        if "position" in c:
            m.bbox.center.position.x, m.bbox.center.position.y = float(c["position"]["x"]), float(c["position"]["y"])
        else:
            m.bbox.center.x, m.bbox.center.y = float(c["x"]), float(c["y"])
        m.bbox.size_x, m.bbox.size_y = float(det["bbox"]["size_x"]), float(det["bbox"]["size_y"])
        for r in det["results"]:
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id = r["hypothesis"]["class_id"]
            hyp.hypothesis.score = float(r["hypothesis"]["score"])
            m.results.append(hyp)
        m.id = det["id"]
        arr.detections.append(m)
    return arr


def to_camera_info(d: dict[str, Any]) -> CameraInfo:
    m = CameraInfo()
    _fill_header(m.header, d["header"])
    m.width, m.height, m.distortion_model = int(d["width"]), int(d["height"]), d["distortion_model"]
    m.d = [float(x) for x in d["d"]]
    m.k, m.r, m.p = (d[k].astype("float64") for k in ("k", "r", "p"))
    m.binning_x, m.binning_y = int(d["binning_x"]), int(d["binning_y"])
    roi = d["roi"]
    m.roi.x_offset, m.roi.y_offset = int(roi["x_offset"]), int(roi["y_offset"])
    m.roi.width, m.roi.height, m.roi.do_rectify = int(roi["width"]), int(roi["height"]), bool(roi["do_rectify"])
    return m


def to_gates(d: dict[str, Any]) -> Float32MultiArray:
    m = Float32MultiArray()
    m.layout.dim = [MultiArrayDimension(label=x["label"], size=x["size"], stride=x["stride"])
                    for x in d["layout"]["dim"]]
    m.layout.data_offset = 0
    m.data = array.array("f", d["data"].astype("float32").tobytes())
    return m


def detection_layout() -> str:
    """``jazzy`` (vision_msgs 4.x: bbox.center.position) or ``galactic`` (3.x: bbox.center.x)."""
    return "jazzy" if hasattr(Detection2D().bbox.center, "position") else "galactic"


# ---------------------------------------------------------------------- the node
class RateMeter:
    """Messages per second over a sliding window (thread-safe enough for counters under the GIL)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self.times: deque[float] = deque()
        self.count = 0
        self.last: float | None = None

    def tick(self) -> None:
        now = time.monotonic()
        self.times.append(now)
        self.count += 1
        self.last = now
        while self.times and now - self.times[0] > self.window_s:
            self.times.popleft()

    def rate(self) -> float:
        now = time.monotonic()
        while self.times and now - self.times[0] > self.window_s:
            self.times.popleft()
        return len(self.times) / self.window_s


class FusionNode(LifecycleNode):
    """Thermal + RGB fusion lifecycle node (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("moe_fusion", **kwargs)
        for spec in DECLARATIONS:
            self.declare_parameter(spec.name, spec.default, descriptor(spec))
        self.params: FusionParams | None = None
        self.engine: Any = None
        self.pipeline: FusionPipeline | None = None
        self.buffer: Any = None
        self.worker: threading.Thread | None = None
        self.subs: list[Any] = []
        self.info_sub: Any = None
        self.sync: Any = None
        self.pubs: dict[str, Any] = {}
        self.updater: Any = None
        self.rates = {k: RateMeter() for k in (*INPUTS, "pairs", "published")}
        self.last_stamp: dict[str, int] = {}
        self.latency_ms: deque[float] = deque(maxlen=200)
        self.stamp_age_ms: deque[float] = deque(maxlen=200)
        self.incompatible_qos = 0
        self.last_pair_time = time.monotonic()
        self._param_cb = self.add_on_set_parameters_callback(self._on_set_parameters)
        self._no_pair_timer = None

    # ------------------------------------------------------------------ parameters
    def _read_params(self) -> FusionParams:
        return validate({s.name: self.get_parameter(s.name).value for s in DECLARATIONS})

    def _on_set_parameters(self, params: list[Any]) -> SetParametersResult:
        if self.params is None:  # not configured yet: checked at configure
            return SetParametersResult(successful=True)
        new = self.params
        try:
            for p in params:
                new = check_change(p.name, p.value, new)
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        self._apply(new)
        return SetParametersResult(successful=True)

    def _apply(self, p: FusionParams) -> None:
        self.params = p
        if self.engine is not None:
            self.engine.score_threshold = p.model_score_threshold
        if self.pipeline is not None:
            self.pipeline.color = p.output_color
            self.pipeline.detections = p.model_detections
            self.pipeline.gates = p.output_gates
            self.pipeline.class_id = p.output_class_id
            self.pipeline.frame_id = p.output_frame_id
            self.pipeline.camera_info = p.output_camera_info
            self.pipeline.normalizer.cfg = p.thermal_normalization()

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            p = self._read_params()
            self.engine = self._load_engine(p)
        except Exception as e:  # rclpy would swallow it: say why configure failed
            self.get_logger().error(f"configure failed: {type(e).__name__}: {e}")
            return TransitionCallbackReturn.FAILURE
        self.params = p
        self.pipeline = FusionPipeline(
            self.engine, slop=p.sync_slop, queue_size=p.sync_queue_size, thermal_offset=p.sync_thermal_offset,
            normalization=p.thermal_normalization(), color=p.output_color, detections=p.model_detections,
            gates=p.output_gates, layout=detection_layout(), class_id=p.output_class_id, frame_id=p.output_frame_id,
            keep_unpaired=False, camera_info=p.output_camera_info)
        over = _qos_overriding()
        reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        self.pubs = {
            "image": self.create_publisher(Image, "fused/image", reliable, **over),
            "detections": self.create_publisher(Detection2DArray, "fused/detections",
                                                QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE), **over),
            "gates": self.create_publisher(Float32MultiArray, "fused/gates", 10),
            "debug": self.create_publisher(Image, "fused/debug_image", qos_profile_sensor_data),
            "camera_info": self.create_publisher(CameraInfo, "fused/camera_info", reliable, **over),
        }
        self._setup_diagnostics()
        return TransitionCallbackReturn.SUCCESS

    def _load_engine(self, p: FusionParams) -> Any:
        import torch

        from moe_fusion_core.engine import FusionEngine

        device = p.model_device
        if device.startswith("cuda") and not torch.cuda.is_available():
            if not p.model_allow_cpu_fallback:
                raise ValueError(f"model.device={device} but CUDA is not available "
                                 "(set model.allow_cpu_fallback:=true to run on CPU)")
            self.get_logger().warning(f"CUDA unavailable: running on CPU instead of {device}")
            device = "cpu"
        t = time.perf_counter()
        engine = FusionEngine(p.model_checkpoint or None, device=device, precision=p.model_precision,
                              detections=p.model_detections, score_threshold=p.model_score_threshold,
                              max_side=p.model_max_side or None, backend=p.model_backend,
                              deploy=p.model_deploy)
        load_s = time.perf_counter() - t
        warm_s = engine.warmup(p.model_warmup_iters) if p.model_warmup_iters else 0.0
        name = torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else "cpu"
        self.get_logger().info(f"model {engine.checkpoint} on {engine.device} ({name}), {p.model_precision}, "
                               f"torch {torch.__version__}; loaded in {load_s:.1f} s, warm-up {warm_s:.1f} s")
        self.hardware_id = name
        return engine

    def _input_qos(self, topic: str) -> QoSProfile:
        p = self.params
        depth = p.qos_input_depth
        mode = p.qos_input_reliability
        if mode == "reliable":
            return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.VOLATILE)
        if mode == "auto":
            try:
                name = self.resolve_topic_name(topic)
            except AttributeError:
                name = topic
            infos = self.get_publishers_info_by_topic(name)
            if infos:
                pub_qos = infos[0].qos_profile
                qos.reliability = pub_qos.reliability
                qos.durability = pub_qos.durability
                self.get_logger().info(f"{name}: QoS copied from its publisher ({pub_qos.reliability.name}, "
                                       f"{pub_qos.durability.name})")
            else:
                self.get_logger().info(f"{name}: no publisher yet, subscribing best effort (matches any publisher)")
        return qos

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        p = self.params
        events = _event_callbacks(self._on_incompatible_qos)
        self.subs = []
        for key, topic in INPUTS.items():
            sub = message_filters.Subscriber(self, Image, topic, qos_profile=self._input_qos(topic),
                                             event_callbacks=events)
            sub.registerCallback(self._on_input, key)
            self.subs.append(sub)
        self.sync = optimal_approximate_time_synchronizer(self.subs, sync=self.pipeline.sync)
        self.sync.registerCallback(self._on_pair)
        self.info_sub = self.create_subscription(CameraInfo, RGB_INFO, self.pipeline.set_camera_info,
                                                 self._input_qos(RGB_INFO))
        self.buffer = make_buffer(p.processing_mode)
        self.worker = threading.Thread(target=self._work, name="moe_fusion_worker", daemon=True)
        self.worker.start()
        self.last_pair_time = time.monotonic()
        self._no_pair_timer = self.create_timer(1.0, self._check_pairs)
        self.get_logger().info(f"active: {INPUTS['thermal']} + {INPUTS['rgb']} -> fused/image, fused/detections "
                               f"(slop {p.sync_slop} s, mode {p.processing_mode})")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop()
        return super().on_deactivate(state)

    def _stop(self) -> None:
        if self._no_pair_timer is not None:
            self.destroy_timer(self._no_pair_timer)
            self._no_pair_timer = None
        for sub in self.subs:
            self.destroy_subscription(sub.sub)
        self.subs, self.sync = [], None
        if self.info_sub is not None:
            self.destroy_subscription(self.info_sub)
            self.info_sub = None
        if self.buffer is not None:
            self.buffer.close()
        if self.worker is not None:
            self.worker.join(timeout=10.0)
            self.worker = None

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        for pub in self.pubs.values():
            self.destroy_publisher(pub)
        self.pubs = {}
        self.engine = self.pipeline = None
        self.params = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._stop()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------ callbacks (executor thread: keep short)
    def _on_incompatible_qos(self, event: Any) -> None:
        self.incompatible_qos += 1
        self.get_logger().warning("incompatible QoS between an input publisher and this node's subscription "
                                  "(set qos.input_reliability:=best_effort)", throttle_duration_sec=5.0)

    def _on_input(self, msg: Image, key: str) -> None:
        self.rates[key].tick()
        self.last_stamp[key] = stamp_ns(msg)

    def _on_pair(self, thermal: Image, rgb: Image) -> None:
        self.rates["pairs"].tick()
        self.last_pair_time = time.monotonic()
        try:
            if self.buffer.put((thermal, rgb, time.monotonic())):
                self.get_logger().debug("worker busy: older pair dropped")
        except BufferClosed:
            pass

    def _check_pairs(self) -> None:
        p = self.params
        if p is None:
            return
        now = time.monotonic()
        flowing = all(m.last is not None and now - m.last < 1.0 for k, m in self.rates.items() if k in INPUTS)
        if flowing and now - self.last_pair_time > p.diagnostics_no_pair_warn_s:
            th, rgb = self.last_stamp.get("thermal", 0), self.last_stamp.get("rgb", 0)
            self.get_logger().warning(
                f"both inputs flow but no pair for {now - self.last_pair_time:.1f} s: latest thermal stamp "
                f"{th / 1e9:.3f}, rgb {rgb / 1e9:.3f}, delta {(th - rgb) / 1e6:.1f} ms (sync.slop {p.sync_slop} s; "
                "a constant offset? set sync.thermal_offset)", throttle_duration_sec=5.0)

    # ------------------------------------------------------------------ worker thread
    def _work(self) -> None:
        while True:
            try:
                item = self.buffer.get(timeout=0.5)
            except BufferClosed:
                return
            if item is None:
                continue
            thermal, rgb, t_ready = item
            p = self.params
            pipe = self.pipeline
            if p is None or pipe is None:
                return
            debug = p.output_debug_image and self.pubs["debug"].get_subscription_count() > 0
            n_fail = len(pipe.failures)
            out = pipe.process(thermal, rgb, debug=debug)
            if out is None:
                why = pipe.failures[n_fail].reason if len(pipe.failures) > n_fail else "unknown"
                self.get_logger().warning(f"frame skipped: {why}", throttle_duration_sec=5.0)
                continue
            self.pubs["image"].publish(to_image(out.image))
            self.pubs["detections"].publish(to_detections(out.detections))
            if p.output_gates:
                self.pubs["gates"].publish(to_gates(out.gates))
            if out.debug_image is not None:
                self.pubs["debug"].publish(to_image(out.debug_image))
            if out.camera_info is not None:
                self.pubs["camera_info"].publish(to_camera_info(out.camera_info))
            self.rates["published"].tick()
            self.latency_ms.append((time.monotonic() - t_ready) * 1e3)
            age = self.get_clock().now().nanoseconds - stamp_ns(rgb)
            self.stamp_age_ms.append(age / 1e6)
            del pipe.failures[:-100]  # keep memory bounded on long runs

    # ------------------------------------------------------------------ diagnostics
    def _setup_diagnostics(self) -> None:
        import diagnostic_updater

        if self.updater is None:
            self.updater = diagnostic_updater.Updater(self, period=1.0)
            self.updater.add("inputs", self._diag_inputs)
            self.updater.add("sync", self._diag_sync)
            self.updater.add("inference", self._diag_inference)
        self.updater.setHardwareID(getattr(self, "hardware_id", "moe_fusion"))

    def _diag_inputs(self, stat: Any) -> Any:
        p = self.params
        if p is None:
            stat.summary(DiagnosticStatus.STALE, "not configured")
            return stat
        expected = {"thermal": p.diagnostics_expected_thermal_hz, "rgb": p.diagnostics_expected_rgb_hz}
        level, msgs = DiagnosticStatus.OK, []
        for k in INPUTS:
            r = self.rates[k].rate()
            stat.add(f"{k} rate (Hz)", f"{r:.1f}")
            stat.add(f"{k} received", str(self.rates[k].count))
            if r < 0.5 * expected[k]:
                level = max(level, DiagnosticStatus.WARN if r > 0 else DiagnosticStatus.ERROR)
                msgs.append(f"{k} {r:.1f} Hz < expected {expected[k]:.0f}")
        stat.add("incompatible QoS events", str(self.incompatible_qos))
        stat.summary(level, "; ".join(msgs) or "inputs at expected rates")
        return stat

    def _diag_sync(self, stat: Any) -> Any:
        if self.pipeline is None:
            stat.summary(DiagnosticStatus.STALE, "not configured")
            return stat
        s = self.pipeline.sync.stats
        since = time.monotonic() - self.last_pair_time
        stat.add("pair rate (Hz)", f"{self.rates['pairs'].rate():.1f}")
        stat.add("pairs", str(s.pairs))
        stat.add("mean |dt| (ms)", f"{s.mean_abs_dt_ms:.2f}")
        stat.add("max |dt| (ms)", f"{s.abs_dt_max_ns / 1e6:.2f}")
        for reason, n in sorted(self.pipeline.unpaired_counts.items()):
            stat.add(f"unpaired: {reason}", str(n))
        stat.add("seconds since last pair", f"{since:.1f}")
        warn = since > (self.params.diagnostics_no_pair_warn_s if self.params else 1.0)
        stat.summary(DiagnosticStatus.WARN if warn else DiagnosticStatus.OK,
                     "no pairs" if warn else "pairing")
        return stat

    def _diag_inference(self, stat: Any) -> Any:
        if self.pipeline is None:
            stat.summary(DiagnosticStatus.STALE, "not configured")
            return stat
        lat = list(self.latency_ms)
        ages = list(self.stamp_age_ms)
        stat.add("published rate (Hz)", f"{self.rates['published'].rate():.1f}")
        stat.add("latency p50 (ms)", f"{percentile(lat, 50):.1f}")
        stat.add("latency p95 (ms)", f"{percentile(lat, 95):.1f}")
        stat.add("stamp age p50 (ms)", f"{percentile(ages, 50):.1f}")
        stat.add("dropped pairs (worker busy)", str(self.buffer.dropped if self.buffer is not None else 0))
        stat.add("frames skipped (corrupt)", str(len(self.pipeline.failures)))
        for reason, n in sorted(self.pipeline.camera_info_errors.items()):
            stat.add(f"camera_info not published: {reason}", str(n))
        stat.add("device", str(self.engine.device) if self.engine is not None else "-")
        stat.summary(DiagnosticStatus.OK, "running")
        return stat


def main(args: list[str] | None = None) -> None:
    """Console script ``fusion_node``: start, autostart (configure + activate), spin."""
    rclpy.init(args=args)
    node = FusionNode()
    try:
        if node.get_parameter("autostart").value:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
            else:
                node.get_logger().error("configure failed; node left unconfigured (fix parameters, then "
                                        "ros2 lifecycle set /moe_fusion configure)")
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node._stop()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
