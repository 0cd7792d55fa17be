"""The rclpy node in this process: lifecycle transitions in every order, threads and subscriptions, failed configure,
incompatible QoS. Runs in a live ROS 2 graph (skips without ROS 2, fails under MOE_FUSION_REQUIRE_ROS=1)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

MS = 1_000_000
FAST = {"model.device": "cpu", "model.warmup_iters": 0, "model.max_side": 128, "model.detections": False}


def make_node(**params):
    from rclpy.parameter import Parameter

    from moe_fusion_ros.node import FusionNode

    remaps = ["-r", "thermal/image_raw:=/thermal/image_raw", "-r", "rgb/image_raw:=/camera/image_raw",
              "-r", "rgb/camera_info:=/camera/camera_info"]  # as launch/fusion.launch.py does
    return FusionNode(parameter_overrides=[Parameter(k, value=v) for k, v in {**FAST, **params}.items()],
                      cli_args=["--ros-args", *remaps])


class Spinner:
    """Spins a node on a background executor thread, as rclpy.spin would in the node's own process."""

    def __init__(self, node) -> None:
        from rclpy.executors import SingleThreadedExecutor

        self.ex = SingleThreadedExecutor()
        self.ex.add_node(node)
        self.running = True
        self.th = threading.Thread(target=self._loop, daemon=True)
        self.th.start()

    def _loop(self) -> None:
        while self.running:
            self.ex.spin_once(timeout_sec=0.02)

    def stop(self) -> None:
        self.running = False
        self.th.join(timeout=5)
        self.ex.shutdown()


def workers() -> int:
    return sum(t.name == "moe_fusion_worker" and t.is_alive() for t in threading.enumerate())


def graph(probe) -> dict[str, int]:
    n = probe.node
    return {"subs": n.count_subscribers("/thermal/image_raw") + n.count_subscribers("/camera/image_raw"),
            "pubs": n.count_publishers("/fused/image")}


def settle(probe, want: dict[str, int], timeout: float = 10.0) -> dict[str, int]:
    probe.wait(lambda: graph(probe) == want, timeout)
    return graph(probe)


def image(stamp: int, frame: str, arr: np.ndarray, encoding: str):
    from sensor_msgs.msg import Image

    m = Image()
    m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id = stamp // 10**9, stamp % 10**9, frame
    m.height, m.width = arr.shape[:2]
    m.encoding, m.is_bigendian, m.step = encoding, 0, arr.nbytes // arr.shape[0]
    m.data = arr.tobytes()
    return m


def publish_pairs(probe, t0: int, n: int, seed: int) -> None:
    """``n`` small random thermal/RGB pairs 40 ms apart from stamp ``t0`` (thermal 2 ms after its RGB frame)."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        probe.pub["thermal"].publish(image(t0 + k * 40 * MS + 2 * MS, "thermal",
                                           rng.integers(0, 255, (48, 64)).astype(np.uint8), "mono8"))
        probe.pub["rgb"].publish(image(t0 + k * 40 * MS, "camera",
                                       rng.integers(0, 255, (48, 64, 3)).astype(np.uint8), "rgb8"))


@pytest.fixture()
def probe(ros_domain):
    from ros_graph import Probe

    p = Probe(name=f"probe_{time.monotonic_ns()}", ns="/fused")
    yield p
    p.close()


def test_every_lifecycle_order_leaves_no_thread_or_subscription_behind(probe):
    from rclpy.lifecycle import TransitionCallbackReturn as R

    node = make_node()
    spin = Spinner(node)
    try:
        assert settle(probe, {"subs": 0, "pubs": 0}) == {"subs": 0, "pubs": 0} and workers() == 0
        for step, want, n_workers in (
                ("configure", {"subs": 0, "pubs": 1}, 0), ("activate", {"subs": 2, "pubs": 1}, 1),
                ("deactivate", {"subs": 0, "pubs": 1}, 0), ("activate", {"subs": 2, "pubs": 1}, 1),
                ("deactivate", {"subs": 0, "pubs": 1}, 0), ("cleanup", {"subs": 0, "pubs": 0}, 0),
                ("configure", {"subs": 0, "pubs": 1}, 0), ("activate", {"subs": 2, "pubs": 1}, 1)):
            assert getattr(node, f"trigger_{step}")() == R.SUCCESS, step
            assert settle(probe, want) == want, step
            assert workers() == n_workers, step
        # active again after the round trip: it still fuses
        publish_pairs(probe, 1_700_000_000 * 10**9, 2, seed=0)
        assert probe.wait(lambda: len(probe.messages("image")) >= 2, 120), "no output after re-activation"
        assert node.trigger_shutdown() == R.SUCCESS  # from active
        assert settle(probe, {"subs": 0, "pubs": 0}) == {"subs": 0, "pubs": 0} and workers() == 0
    finally:
        spin.stop()
        node.destroy_node()
    for first in ([], ["configure"]):  # shutdown from unconfigured and from inactive
        node = make_node()
        try:
            for step in first:
                assert getattr(node, f"trigger_{step}")() == R.SUCCESS
            assert node.trigger_shutdown() == R.SUCCESS
            assert settle(probe, {"subs": 0, "pubs": 0}) == {"subs": 0, "pubs": 0} and workers() == 0
        finally:
            node.destroy_node()


def test_failed_configure_says_why_and_the_node_recovers_after_fixing_the_parameter(probe, tmp_path, capfd):
    """Fixed by naming an embedded model: model.checkpoint "fast" loads moe_fusion_core/fast_model."""
    from rclpy.lifecycle import TransitionCallbackReturn as R
    from rclpy.parameter import Parameter

    from moe_fusion_core.embedded import EMBEDDED_MODELS

    missing = tmp_path / "no_such_model"
    node = make_node(**{"model.checkpoint": str(missing)})
    try:
        assert node.trigger_configure() == R.FAILURE
        err = capfd.readouterr().err
        assert "configure failed: CheckpointError" in err and f"{missing}: no checkpoint here" in err
        assert "embedded model: default, fast" in err
        assert settle(probe, {"subs": 0, "pubs": 0}) == {"subs": 0, "pubs": 0}
        # unconfigured: model parameters may change (configured, they are refused), bad values never
        bad = node.set_parameters([Parameter("model.device", value="gpu7")])[0]
        assert not bad.successful and "model.device" in bad.reason
        assert node.set_parameters([Parameter("model.checkpoint", value="fast")])[0].successful
        assert node.trigger_configure() == R.SUCCESS
        assert node.engine.checkpoint == EMBEDDED_MODELS["fast"] and node.engine.config.model.name == "fast"
        refused = node.set_parameters([Parameter("model.checkpoint", value=str(missing))])[0]
        assert not refused.successful and "read-only while the node is configured" in refused.reason
        assert node.trigger_cleanup() == R.SUCCESS
    finally:
        node.destroy_node()


def test_a_best_effort_camera_and_a_reliable_subscription_is_counted_and_the_fix_named(ros_domain, capfd):
    from rclpy.lifecycle import TransitionCallbackReturn as R
    from ros_graph import Probe

    be = Probe(name=f"be_probe_{time.monotonic_ns()}", reliable_inputs=False)  # a best-effort camera driver
    node = make_node(**{"qos.input_reliability": "reliable"})
    spin = Spinner(node)
    try:
        assert node.trigger_configure() == R.SUCCESS and node.trigger_activate() == R.SUCCESS
        assert be.wait(lambda: node.incompatible_qos > 0, 20), "no incompatible-QoS event"
        err = capfd.readouterr().err
        assert "qos.input_reliability:=best_effort" in err, err[-2000:]
        status = node._inputs_status()
        assert dict(status.values)["incompatible QoS events"] == str(node.incompatible_qos)
        assert "best_effort" in status.message
        node.trigger_deactivate()
        node.trigger_cleanup()
    finally:
        spin.stop()
        node.destroy_node()
        be.close()


def test_an_unexpected_error_in_one_frame_is_counted_and_the_worker_goes_on(probe, capfd):
    from rclpy.lifecycle import TransitionCallbackReturn as R

    node = make_node(**{"processing.mode": "all"})
    spin = Spinner(node)
    try:
        assert node.trigger_configure() == R.SUCCESS and node.trigger_activate() == R.SUCCESS
        settle(probe, {"subs": 2, "pubs": 1})
        engine = node.engine
        real, calls = engine.fuse, []

        def flaky(*a, **kw):  # the first frame hits a device error (e.g. CUDA out of memory)
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("CUDA out of memory (simulated)")
            return real(*a, **kw)

        engine.fuse = flaky
        rng = np.random.default_rng(1)
        t0 = 1_700_000_100 * 10**9
        for k in range(3):  # the third pair makes the second final
            probe.pub["thermal"].publish(image(t0 + k * 40 * MS + 2 * MS, "thermal",
                                               rng.integers(0, 255, (48, 64)).astype(np.uint8), "mono8"))
            probe.pub["rgb"].publish(image(t0 + k * 40 * MS, "camera",
                                           rng.integers(0, 255, (48, 64, 3)).astype(np.uint8), "rgb8"))
        assert probe.wait(lambda: len(probe.messages("image")) >= 2, 120), "the worker stopped after the error"
        assert node.pipeline.failure_counts == {"RuntimeError": 1}
        assert dict(node._inference_status().values)["frames skipped: RuntimeError"] == "1"
        assert "frame failed: RuntimeError: CUDA out of memory (simulated)" in capfd.readouterr().err
        node.trigger_deactivate()
        node.trigger_cleanup()
    finally:
        spin.stop()
        node.destroy_node()


def test_the_onnxruntime_backend_runs_the_node_on_an_exported_graph(probe, tmp_path):
    """model.backend:=onnxruntime with model.checkpoint an exported .onnx file (no torch model at run time)."""
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install '.[onnx]')")
    from rclpy.lifecycle import TransitionCallbackReturn as R

    from moe_fusion_core.checkpoint import load_model
    from moe_fusion_core.engine import default_checkpoint
    from moe_fusion_core.onnx_export import export_onnx

    model, cfg = load_model(default_checkpoint())
    graph = export_onnx(model, cfg, tmp_path / "model.onnx", fused_only=True, size=(64, 48), dynamic=True)
    node = make_node(**{"model.checkpoint": str(graph), "model.backend": "onnxruntime", "model.max_side": 0,
                        "processing.mode": "all"})
    spin = Spinner(node)
    try:
        assert node.trigger_configure() == R.SUCCESS and node.engine.path == "onnxruntime"
        assert node.trigger_activate() == R.SUCCESS
        settle(probe, {"subs": 2, "pubs": 1})
        publish_pairs(probe, 1_700_000_200 * 10**9, 3, seed=1)
        assert probe.wait(lambda: len(probe.messages("image")) >= 3, 120)
        m = probe.messages("image")[0]
        assert (m.width, m.height, m.encoding, m.header.frame_id) == (64, 48, "mono8", "camera")
        node.trigger_deactivate()
        node.trigger_cleanup()
    finally:
        spin.stop()
        node.destroy_node()

