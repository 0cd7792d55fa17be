"""Proof of life of the rclpy node (Isaac ROS pattern: an untrained model, so only headers and shapes are checked).

Skipped where ROS 2 is not installed; run it in a sourced Humble/Jazzy environment.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) not installed: source /opt/ros/<distro>/setup.bash")
pytest.importorskip("message_filters", reason="message_filters not installed")
pytest.importorskip("vision_msgs", reason="vision_msgs not installed")
pytest.importorskip("diagnostic_updater", reason="diagnostic_updater not installed")

T0 = 1_700_000_000 * 1_000_000_000
MS = 1_000_000


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from moe_fusion_core.checkpoint import save_model
    from moe_fusion_core.config import named_config
    from moe_fusion_core.model.moe_fusion import build_model

    cfg = named_config("embedded")
    return save_model(build_model(cfg.model).eval(), cfg, tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture()
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


def image(stamp: int, frame: str, arr: np.ndarray, encoding: str):
    from sensor_msgs.msg import Image

    m = Image()
    m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id = stamp // 10**9, stamp % 10**9, frame
    m.height, m.width = arr.shape[:2]
    m.encoding, m.is_bigendian, m.step = encoding, 0, arr.nbytes // arr.shape[0]
    m.data = arr.tobytes()
    return m


def test_descriptors_carry_types_ranges_and_read_only():
    from rcl_interfaces.msg import ParameterType

    from moe_fusion_ros.node import descriptor
    from moe_fusion_ros.params import SPECS

    d = descriptor(SPECS["sync.slop"])
    assert d.type == ParameterType.PARAMETER_DOUBLE and d.floating_point_range[0].to_value == 1.0
    d = descriptor(SPECS["sync.queue_size"])
    assert d.type == ParameterType.PARAMETER_INTEGER and d.integer_range[0].from_value == 1
    assert descriptor(SPECS["model.device"]).read_only


def test_node_publishes_fused_image_detections_and_camera_info_with_the_rgb_header(ros, checkpoint):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CameraInfo, Image
    from vision_msgs.msg import Detection2DArray

    from moe_fusion_ros.node import FusionNode

    node = FusionNode(parameter_overrides=[
        Parameter("model.checkpoint", value=str(checkpoint)), Parameter("model.device", value="cpu"),
        Parameter("model.warmup_iters", value=0), Parameter("qos.input_reliability", value="reliable"),
        Parameter("processing.mode", value="all")])
    helper = rclpy.create_node("moe_fusion_test_helper")
    got: dict[str, list] = {"image": [], "det": [], "info": []}
    helper.create_subscription(Image, "fused/image", lambda m: got["image"].append(m), 10)
    helper.create_subscription(Detection2DArray, "fused/detections", lambda m: got["det"].append(m), 10)
    helper.create_subscription(CameraInfo, "fused/camera_info", lambda m: got["info"].append(m), 10)
    pub_t = helper.create_publisher(Image, "thermal/image_raw", 10)
    pub_r = helper.create_publisher(Image, "rgb/image_raw", 10)
    pub_i = helper.create_publisher(CameraInfo, "rgb/camera_info", 10)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    ex.add_node(helper)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and 0 in (pub_t.get_subscription_count(), pub_r.get_subscription_count()):
            ex.spin_once(timeout_sec=0.05)
        rng = np.random.default_rng(0)
        for k in range(3):  # the third pair makes the first two final
            pub_t.publish(image(T0 + k * 40 * MS + 3 * MS, "thermal",
                                (rng.integers(0, 4000, (48, 64)) + 28000).astype(np.uint16), "mono16"))
            info = CameraInfo(width=64, height=48, distortion_model="plumb_bob")
            info.header.stamp.sec, info.header.stamp.nanosec = (T0 + k * 40 * MS) // 10**9, (T0 + k * 40 * MS) % 10**9
            info.k = [300.0, 0.0, 32.0, 0.0, 300.0, 24.0, 0.0, 0.0, 1.0]
            pub_i.publish(info)
            pub_r.publish(image(T0 + k * 40 * MS, "camera_optical", rng.integers(0, 255, (48, 64, 3)).astype(np.uint8),
                                "rgb8"))
            ex.spin_once(timeout_sec=0.05)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (len(got["image"]) < 2 or len(got["det"]) < 2):
            ex.spin_once(timeout_sec=0.1)
        assert len(got["image"]) >= 2 and len(got["det"]) >= 2
        first = got["image"][0]
        assert (first.header.stamp.sec, first.header.stamp.nanosec) == (T0 // 10**9, T0 % 10**9)
        assert first.header.frame_id == "camera_optical"
        assert (first.width, first.height, first.encoding) == (64, 48, "mono8")
        assert got["det"][0].header == first.header
        assert got["info"] and got["info"][0].header == first.header and got["info"][0].k[0] == 300.0
    finally:
        node.trigger_deactivate()
        node.trigger_cleanup()
        ex.shutdown()
        node.destroy_node()
        helper.destroy_node()


def test_node_runs_the_onnxruntime_backend_on_an_exported_graph(ros, checkpoint, tmp_path):
    """model.backend:=onnxruntime with model.checkpoint an exported .onnx file publishes the fused image."""
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from moe_fusion_core.checkpoint import load_model
    from moe_fusion_core.onnx_export import export_onnx
    from moe_fusion_ros.node import FusionNode

    model, cfg = load_model(checkpoint)
    graph = export_onnx(model, cfg, tmp_path / "model.onnx", fused_only=True, size=(64, 48), dynamic=True)
    node = FusionNode(parameter_overrides=[
        Parameter("model.checkpoint", value=str(graph)), Parameter("model.device", value="cpu"),
        Parameter("model.backend", value="onnxruntime"), Parameter("model.detections", value=False),
        Parameter("model.warmup_iters", value=0), Parameter("qos.input_reliability", value="reliable"),
        Parameter("processing.mode", value="all")])
    helper = rclpy.create_node("moe_fusion_test_helper_ort")
    got: list = []
    helper.create_subscription(Image, "fused/image", got.append, 10)
    pub_t = helper.create_publisher(Image, "thermal/image_raw", 10)
    pub_r = helper.create_publisher(Image, "rgb/image_raw", 10)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    ex.add_node(helper)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.engine.path == "onnxruntime"
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and 0 in (pub_t.get_subscription_count(), pub_r.get_subscription_count()):
            ex.spin_once(timeout_sec=0.05)
        rng = np.random.default_rng(1)
        for k in range(3):
            pub_t.publish(image(T0 + k * 40 * MS, "thermal", rng.integers(0, 255, (48, 64)).astype(np.uint8), "mono8"))
            pub_r.publish(image(T0 + k * 40 * MS, "camera_optical", rng.integers(0, 255, (48, 64, 3)).astype(np.uint8),
                                "rgb8"))
            ex.spin_once(timeout_sec=0.05)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(got) < 2:
            ex.spin_once(timeout_sec=0.1)
        assert len(got) >= 2 and (got[0].width, got[0].height, got[0].encoding) == (64, 48, "mono8")
    finally:
        node.trigger_deactivate()
        node.trigger_cleanup()
        ex.shutdown()
        node.destroy_node()
        helper.destroy_node()
