"""Outgoing plain-data messages and their rosbags serialisation (vision_msgs registered from msg_defs)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from moe_fusion_ros import messages as M
from moe_fusion_ros.msg_defs import VISION_MSGS, build, register_vision_msgs, typestore_for

STAMP = 1_700_000_000_123_456_789


def det(box, cid=0, name="person", score=0.9):
    return SimpleNamespace(box=box, class_id=cid, class_name=name, score=score)


def test_header_and_image_messages():
    h = M.header(STAMP, "camera")
    assert h == {"stamp": {"sec": 1_700_000_000, "nanosec": 123_456_789}, "frame_id": "camera"}
    assert M.header_stamp_ns(h) == STAMP
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    im = M.image_message(grey, h)
    assert (im["encoding"], im["height"], im["width"], im["step"]) == ("mono8", 3, 4, 4)
    assert np.array_equal(im["data"], grey.reshape(-1))
    rgb = M.image_message(np.zeros((3, 4, 3), np.uint8), h)
    assert (rgb["encoding"], rgb["step"]) == ("rgb8", 12)
    with pytest.raises(ValueError, match="uint8"):
        M.image_message(grey.astype(np.float32), h)
    with pytest.raises(ValueError, match="shape"):
        M.image_message(np.zeros((3, 4, 2), np.uint8), h)
    with pytest.raises(ValueError, match="negative"):
        M.header(-1, "x")


def test_detection_layouts_scaling_and_clipping():
    h = M.header(STAMP, "camera")
    dets = [det((10, 20, 30, 60)), det((-5, 0, 50, 500), cid=2, name="car", score=0.4)]
    arr = M.detection_array(dets, h, image_size=(40, 100))
    d0, d1 = arr["detections"]
    assert arr["header"] == h and d0["header"] == h
    assert d0["bbox"]["center"]["position"] == {"x": 20.0, "y": 40.0}
    assert (d0["bbox"]["size_x"], d0["bbox"]["size_y"]) == (20.0, 40.0)
    assert d0["results"][0]["hypothesis"] == {"class_id": "person", "score": 0.9}
    assert M.box_of(d1) == (0.0, 0.0, 40.0, 100.0)  # clipped to the published image
    scaled = M.detection_array(dets[:1], h, scale=(2.0, 0.5), layout="galactic", class_id="index")
    c = scaled["detections"][0]["bbox"]["center"]
    assert c == {"x": 40.0, "y": 20.0, "theta": 0.0}
    assert scaled["detections"][0]["results"][0]["hypothesis"]["class_id"] == "0"
    assert M.box_of(scaled["detections"][0]) == (20.0, 10.0, 60.0, 30.0)
    assert M.detection_array([], h)["detections"] == []
    with pytest.raises(ValueError, match="layout"):
        M.detection_array(dets, h, layout="foxy")


def test_gates_layout_is_documented_order():
    g = M.gates_message({"moge": np.array([0.5, 0.5]), "mole_fg": np.array([0.1, 0.2, 0.7]),
                         "mole_bg": np.array([1.0, 0.0, 0.0])})
    assert [d["label"] for d in g["layout"]["dim"]] == ["mole_fg", "mole_bg", "moge"]
    assert [d["size"] for d in g["layout"]["dim"]] == [3, 3, 2]
    assert g["data"].dtype == np.float32 and g["data"].tolist() == pytest.approx([0.1, 0.2, 0.7, 1, 0, 0, 0.5, 0.5])


def test_debug_image_draws_boxes():
    rgb = np.zeros((60, 80, 3), np.uint8)
    out = M.debug_image(rgb, [det((10, 10, 50, 40))])
    assert out.shape == rgb.shape and out.any() and not rgb.any()


@pytest.mark.parametrize("distro", ["humble", "jazzy"])
def test_rosbags_roundtrip_of_all_outgoing_messages(distro):
    ts = typestore_for(distro)
    assert all(name in ts.types for name in VISION_MSGS)
    assert register_vision_msgs(ts) is ts  # idempotent
    h = M.header(STAMP, "camera")
    det_arr = M.detection_array([det((1, 2, 11, 22))], h)
    t = "vision_msgs/msg/Detection2DArray"
    back = ts.deserialize_cdr(ts.serialize_cdr(build(ts, t, det_arr), t), t)
    d = back.detections[0]
    assert (back.header.stamp.sec, back.header.stamp.nanosec, back.header.frame_id) == (1_700_000_000, 123_456_789,
                                                                                        "camera")
    assert (d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.size_x, d.bbox.size_y) == (6, 12, 10, 20)
    assert (d.results[0].hypothesis.class_id, d.results[0].hypothesis.score) == ("person", 0.9)
    assert len(d.results[0].pose.covariance) == 36
    img = M.image_message(np.arange(6, dtype=np.uint8).reshape(2, 3), h)
    bi = ts.deserialize_cdr(ts.serialize_cdr(build(ts, "sensor_msgs/msg/Image", img), "sensor_msgs/msg/Image"),
                            "sensor_msgs/msg/Image")
    assert (bi.encoding, bi.width, bi.height, bi.data.tolist()) == ("mono8", 3, 2, list(range(6)))
    g = M.gates_message({"moge": np.array([0.25, 0.75])})
    t = "std_msgs/msg/Float32MultiArray"
    bg = ts.deserialize_cdr(ts.serialize_cdr(build(ts, t, g), t), t)
    assert bg.layout.dim[0].label == "moge" and bg.data.tolist() == [0.25, 0.75]
    with pytest.raises(ValueError, match="no field"):
        build(ts, "sensor_msgs/msg/Image", {"pixels": 1})


def camera_info(width=64, height=48, k0=500.0, binning=0, roi=(0, 0, 0, 0)):
    """A CameraInfo-shaped object (rclpy and rosbags messages have these fields)."""
    k = np.array([k0, 0, 32, 0, k0, 24, 0, 0, 1], float)
    p = np.array([k0, 0, 32, 0, 0, k0, 24, 0, 0, 0, 1, 0], float)
    return SimpleNamespace(
        header=SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=2), frame_id="cam_old"),
        width=width, height=height, distortion_model="plumb_bob", d=np.array([0.1, -0.2, 0, 0, 0.03]), k=k,
        r=np.eye(3).reshape(-1), p=p, binning_x=binning, binning_y=binning,
        roi=SimpleNamespace(x_offset=roi[0], y_offset=roi[1], width=roi[2], height=roi[3], do_rectify=False))


def test_camera_info_is_the_rgb_calibration_with_the_fused_header():
    h = M.header(STAMP, "camera")
    info = camera_info()
    out = M.camera_info_message(info, h, (64, 48))
    assert out["header"] == h and (out["width"], out["height"]) == (64, 48)
    assert out["distortion_model"] == "plumb_bob"
    for name in ("d", "k", "r", "p"):
        assert np.array_equal(out[name], getattr(info, name))
    out["k"][0] = 1.0  # a copy: the held message is not changed
    assert info.k[0] == 500.0
    uncalibrated = camera_info(width=0, height=0, k0=0.0)  # REP-104 uncalibrated camera: passed on as is
    assert M.camera_info_message(uncalibrated, h, (64, 48))["width"] == 0
    binned = camera_info(width=128, height=96, binning=2)  # a 2x2-binned 64x48 image of a 128x96 calibration
    assert M.camera_info_message(binned, h, (64, 48))["binning_x"] == 2


def test_camera_info_for_another_resolution_is_refused():
    h = M.header(STAMP, "camera")
    with pytest.raises(M.CameraInfoMismatch, match="640x480 but the image is 64x48"):
        M.camera_info_message(camera_info(width=640, height=480), h, (64, 48))
    bad = camera_info()
    bad.k = bad.k[:6]
    with pytest.raises(M.CameraInfoMismatch, match=r"camera_info.k has 6 values, expected 9"):
        M.camera_info_message(bad, h, (64, 48))


@pytest.mark.parametrize("distro", ["humble", "jazzy"])
def test_camera_info_roundtrips_through_rosbags(distro):
    ts = typestore_for(distro)
    t = "sensor_msgs/msg/CameraInfo"
    out = M.camera_info_message(camera_info(), M.header(STAMP, "camera"), (64, 48))
    back = ts.deserialize_cdr(ts.serialize_cdr(build(ts, t, out), t), t)
    assert (back.header.frame_id, back.width, back.height, back.distortion_model) == ("camera", 64, 48, "plumb_bob")
    assert back.k.tolist() == camera_info().k.tolist() and back.d.tolist() == [0.1, -0.2, 0, 0, 0.03]
    assert back.p.tolist() == camera_info().p.tolist()
