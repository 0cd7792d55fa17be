"""The shared fusion pipeline (with an untrained model on small images), the latest-only slot, the node-path bench."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from moe_fusion_ros.latest import BufferClosed, FifoBuffer, LatestSlot, make_buffer
from moe_fusion_ros.pipeline import FusionPipeline
from moe_fusion_ros.sync import RGB, THERMAL
from moe_fusion_ros.thermal import image_from_array, stamp_ns

T0 = 1_700_000_000 * 1_000_000_000
MS = 1_000_000


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    import torch

    from moe_fusion_core.checkpoint import save_model
    from moe_fusion_core.config import named_config
    from moe_fusion_core.engine import FusionEngine
    from moe_fusion_core.model.moe_fusion import build_model

    torch.manual_seed(0)
    cfg = named_config("embedded")
    ckpt = save_model(build_model(cfg.model).eval(), cfg, tmp_path_factory.mktemp("ckpt") / "model")
    return FusionEngine(ckpt, device="cpu", score_threshold=0.0)


def scene(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ir = (29000 + rng.integers(0, 2000, (h, w))).astype(np.uint16)
    vis = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
    return ir, vis


def test_pipeline_pairs_decodes_fuses_and_builds_messages(engine):
    pipe = FusionPipeline(engine, slop=0.02)
    outs = []
    for k in range(3):
        ir, vis = scene(48, 64, k)
        th = image_from_array(ir, T0 + k * 40 * MS + 4 * MS, "thermal")  # mono16
        rgb = image_from_array(np.ascontiguousarray(vis[..., ::-1]), T0 + k * 40 * MS, "cam_optical", "bgr8")
        for stream, m in ((THERMAL, th), (RGB, rgb)):
            for p in pipe.add(stream, m):
                outs.append(pipe.process(p.thermal, p.rgb, debug=True))
    for p in pipe.flush():
        outs.append(pipe.process(p.thermal, p.rgb))
    assert len(outs) == 3 and all(o is not None for o in outs)
    for k, o in enumerate(outs):
        stamp = T0 + k * 40 * MS
        assert o.header == {"stamp": {"sec": stamp // 10**9, "nanosec": stamp % 10**9}, "frame_id": "cam_optical"}
        assert (o.image["encoding"], o.image["height"], o.image["width"]) == ("mono8", 48, 64)
        assert o.image["data"].size == 48 * 64
        assert o.detections["header"] == o.header
        assert all(d["header"] == o.header for d in o.detections["detections"])
        for d in o.detections["detections"]:  # boxes inside the published image
            c, sx, sy = d["bbox"]["center"]["position"], d["bbox"]["size_x"], d["bbox"]["size_y"]
            assert c["x"] - sx / 2 >= 0 and c["x"] + sx / 2 <= 64 and c["y"] - sy / 2 >= 0 and c["y"] + sy / 2 <= 48
        assert [d["label"] for d in o.gates["layout"]["dim"]] == ["mole_fg", "mole_bg", "moge"]
        assert np.allclose([o.gates["data"][:o.gates["layout"]["dim"][0]["size"]].sum()], [1.0], atol=1e-3)
    assert outs[0].debug_image is not None and outs[2].debug_image is None
    assert pipe.fused == 3 and not pipe.failures
    lat = pipe.latency_summary()
    assert {"sync", "decode", "inference", "messages", "total"} <= set(lat)
    assert lat["total"]["p95_ms"] >= lat["total"]["p50_ms"] > 0


def test_the_published_image_is_the_engines_fused_image_of_that_pair(sample_dir):
    """The shipped model on the sample bag's real pairs (each frame a different picture): the outgoing image is
    the engine's fused image of the very pair offered (within 1 grey level), read from its pixels; grey and
    colour output alike."""
    import json

    from content import PairOracle, assert_same_picture, pixels, reference_engine
    from rosbags.rosbag2 import Reader

    from moe_fusion_core.engine import color_fusion
    from moe_fusion_ros.msg_defs import typestore_for

    ts = typestore_for("jazzy")
    gt = json.loads((sample_dir / "bag.groundtruth.json").read_text())
    by_stamp = {}
    with Reader(sample_dir / "bag") as r:
        for c, _, raw in r.messages(connections=[c for c in r.connections if c.msgtype.endswith("/Image")]):
            m = ts.deserialize_cdr(raw, c.msgtype)
            by_stamp[stamp_ns(m)] = m
    pairs = [(p["thermal_stamp_ns"], p["rgb_stamp_ns"]) for p in gt["pairs"][:3]]
    oracle = PairOracle(reference_engine(), {p: (pixels(by_stamp[p[0]]), pixels(by_stamp[p[1]])) for p in pairs})
    pipe = FusionPipeline(reference_engine(), detections=False)
    for t, r in pairs:
        out = pipe.process(by_stamp[t], by_stamp[r])
        assert oracle.identify(pixels(out.image)) == (t, r)
    pipe.color = True
    t, r = pairs[0]
    out = pipe.process(by_stamp[t], by_stamp[r])
    assert out.image["encoding"] == "rgb8"
    assert_same_picture(pixels(out.image), color_fusion(oracle.refs[(t, r)], pixels(by_stamp[r])), "colour image")


def test_bad_frames_are_counted_and_skipped_and_sizes_may_differ(engine):
    pipe = FusionPipeline(engine, color=True, frame_id="fallback_frame")
    ir, vis = scene(24, 32, 0)
    bad = image_from_array(ir, T0, "thermal")
    bad.encoding = "yuv422"
    rgb = image_from_array(vis, T0, "")
    assert pipe.process(bad, rgb) is None
    assert len(pipe.failures) == 1 and "yuv422" in pipe.failures[0].reason
    short = image_from_array(ir, T0, "thermal")
    short.data = short.data[:7]
    assert pipe.process(short, rgb) is None
    assert "too short" in pipe.failures[1].reason
    nan = image_from_array(np.full((24, 32), np.nan, np.float32), T0, "thermal")
    assert pipe.process(nan, rgb) is None and "no finite pixel" in pipe.failures[2].reason
    _, big_vis = scene(48, 64, 1)
    out = pipe.process(image_from_array(ir, T0, "thermal"), image_from_array(big_vis, T0, ""))
    assert out is not None and pipe.resized == 1
    assert (out.image["encoding"], out.image["height"], out.image["width"]) == ("rgb8", 48, 64)
    assert out.header["frame_id"] == "fallback_frame"


def test_latest_slot_keeps_only_the_newest_and_counts_drops():
    slot = LatestSlot()
    assert slot.get(timeout=0.01) is None
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True
    assert slot.dropped == 2 and len(slot) == 1
    assert slot.get(timeout=0) == 3 and len(slot) == 0
    got = []

    def consumer():
        while True:
            try:
                item = slot.get(timeout=2.0)
            except BufferClosed:
                return
            if item is not None:
                got.append(item)

    th = threading.Thread(target=consumer)
    th.start()
    slot.put("a")
    deadline = time.monotonic() + 2
    while not got and time.monotonic() < deadline:
        time.sleep(0.001)
    slot.close()
    th.join(timeout=2)
    assert not th.is_alive() and got == ["a"]
    with pytest.raises(BufferClosed):
        slot.put("late")


def test_fifo_buffer_and_factory():
    f = make_buffer("all")
    assert isinstance(f, FifoBuffer) and isinstance(make_buffer("latest"), LatestSlot)
    for i in range(5):
        assert f.put(i) is False
    assert [f.get(0) for _ in range(5)] == list(range(5)) and f.dropped == 0
    bounded = FifoBuffer(maxsize=2)
    bounded.put(1), bounded.put(2), bounded.put(3)
    assert bounded.dropped == 1 and bounded.get(0) == 2
    bounded.close()
    assert bounded.get(0) == 3
    with pytest.raises(BufferClosed):
        bounded.get(0)
    with pytest.raises(ValueError, match="processing mode"):
        make_buffer("some")


def test_node_path_benchmark_prints_a_row_per_size_and_thermal_type(data_dir):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "benchmarks/bench_node_path.py", "--sizes", "160x120", "--iters", "5",
                           "--pair-dir", str(data_dir / "msrs")], cwd=repo, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in proc.stdout.splitlines()
            if line.startswith("| 160x120")]
    assert [r[1] for r in rows] == ["mono8", "mono16"]
    assert all(float(r[3]) > 0 and r[6] == "0" for r in rows)  # p50 ms, no failed pair
    try:
        import sensor_msgs.msg  # noqa: F401
    except ImportError:
        assert all(r[2] == "no" for r in rows)
    else:  # ROS 2 sourced: the conversion into rclpy messages is part of the timed path
        assert all(r[2] == "yes" for r in rows)


def test_node_path_benchmark_counts_failed_pairs_instead_of_timing_them(sample_dir):
    import importlib.util
    from pathlib import Path

    from moe_fusion_core.image_io import read_ir, read_vis

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_node_path.py"
    spec = importlib.util.spec_from_file_location("bench_node_path", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ir = read_ir(sample_dir / "pairs" / "ir" / "0111_1753_0000.png")
    vis = read_vis(sample_dir / "pairs" / "vis" / "0111_1753_0000.png")
    times, failed = bench.node_path_ms(ir, vis, 3)
    assert len(times) == 3 and failed == 0
    times, failed = bench.node_path_ms(ir[:, :100], vis, 3)  # a thermal aspect the registration refuses
    assert times == [] and failed == 4


def camera_info_msg(stamp: int, width: int, height: int, fx: float) -> SimpleNamespace:
    hdr = SimpleNamespace(stamp=SimpleNamespace(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="camera")
    return SimpleNamespace(header=hdr, width=width, height=height, distortion_model="plumb_bob", d=np.zeros(5),
                           k=np.array([fx, 0, 32, 0, fx, 24, 0, 0, 1.0]), r=np.eye(3).reshape(-1),
                           p=np.array([fx, 0, 32, 0, 0, fx, 24, 0, 0, 0, 1, 0.0]), binning_x=0, binning_y=0,
                           roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0, do_rectify=False))


def test_camera_info_goes_out_with_the_image_of_its_stamp_and_a_wrong_one_is_counted(engine):
    pipe = FusionPipeline(engine, slop=0.02, detections=False)
    ir, vis = scene(48, 64, 0)
    th = [image_from_array(ir, T0 + k * 40 * MS + 4 * MS, "thermal") for k in range(3)]
    rgb = [image_from_array(vis, T0 + k * 40 * MS, "camera") for k in range(3)]
    assert pipe.process(th[0], rgb[0]).camera_info is None  # none received yet: none published
    for k in range(3):
        pipe.set_camera_info(camera_info_msg(T0 + k * 40 * MS, 64, 48, 500.0 + k))
    o = pipe.process(th[1], rgb[1])  # the info of the same stamp, not the latest
    assert o.camera_info["header"] == o.header and o.camera_info["k"][0] == 501.0
    later = image_from_array(vis, T0 + 9 * 40 * MS, "camera")  # no info with this stamp: the latest
    assert pipe.process(th[2], later).camera_info["k"][0] == 502.0
    pipe.set_camera_info(camera_info_msg(T0 + 10 * 40 * MS, 640, 480, 500.0))  # another camera resolution
    o = pipe.process(th[2], image_from_array(vis, T0 + 10 * 40 * MS, "camera"))
    assert o is not None and o.camera_info is None  # the image still goes out
    assert pipe.camera_info_errors == {"RGB camera_info is for 640x480 but the image is 64x48": 1}
    pipe.camera_info = False
    assert pipe.process(th[1], rgb[1]).camera_info is None


def test_single_input_is_fused_with_the_missing_image_blank_in_rgb_pixels(engine):
    from moe_fusion_ros.inputs import Single

    pipe = FusionPipeline(engine, detections=False)
    ir, vis = scene(48, 64, 2)
    small_ir = ir[::2, ::2].copy()  # the thermal camera has half the resolution
    out = pipe.process_single(Single(THERMAL, image_from_array(small_ir, T0, "thermal"), T0, RGB))
    assert out is not None and out.header["frame_id"] == "thermal"  # no RGB seen yet: the thermal frame
    assert (out.image["height"], out.image["width"]) == (24, 32)
    pipe.process(image_from_array(small_ir, T0 + MS, "thermal"), image_from_array(vis, T0, "camera"))
    out = pipe.process_single(Single(THERMAL, image_from_array(small_ir, T0 + 40 * MS, "thermal"), T0 + 40 * MS,
                                     RGB))
    assert (out.image["height"], out.image["width"]) == (48, 64) and out.header["frame_id"] == "camera"
    assert out.header["stamp"] == {"sec": (T0 + 40 * MS) // 10**9, "nanosec": (T0 + 40 * MS) % 10**9}
    st = out.status["status"][0]
    assert st["level"] == 1 and st["message"] == "thermal only (rgb missing)"
    out = pipe.process_single(Single(RGB, image_from_array(vis, T0 + 80 * MS, "camera"), T0 + 80 * MS, THERMAL))
    assert out.status["status"][0]["values"] == [{"key": "thermal", "value": "missing"},
                                                 {"key": "rgb", "value": "ok"}]  # no thermal stamp
    assert pipe.singles == {RGB: 2, THERMAL: 1}
    both = pipe.process(image_from_array(small_ir, T0 + 121 * MS, "thermal"), image_from_array(vis, T0, "camera"))
    assert both.status["status"][0]["level"] == 0 and both.status["status"][0]["message"] == "fused"
    assert both.status["status"][0]["values"][2] == {"key": "thermal_stamp_ns", "value": str(T0 + 121 * MS)}


def test_thermal_is_registered_by_the_homography_and_odd_aspects_are_refused(engine):
    from moe_fusion_core.registration import warp_to_rgb

    ir, vis = scene(48, 64, 4)
    h = [1.0, 0.0, 6.0, 0.0, 1.0, -3.0, 0.0, 0.0, 1.0]  # thermal 6 px left of and 3 px below the RGB view
    pipe = FusionPipeline(engine, homography=h)
    ir8 = pipe.thermal_unit(image_from_array(ir, T0, "thermal"))
    got, _ = pipe.arrays(image_from_array(ir, T0, "thermal"), image_from_array(vis, T0, "camera"))
    assert np.array_equal(got, warp_to_rgb(ir8, h, (64, 48))) and got[:, :6].max() == 0
    plain = FusionPipeline(engine)
    wide = image_from_array(np.zeros((30, 64), np.uint16), T0, "thermal")  # aspect 2.13 vs 1.33
    assert plain.process(wide, image_from_array(vis, T0, "camera")) is None
    assert plain.failure_counts == {"RegistrationError": 1} and "registration.homography" in plain.failures[0].reason


def test_float_thermal_with_a_few_nan_pixels_is_fused_and_with_many_is_skipped(engine):
    pipe = FusionPipeline(engine, detections=False, max_invalid_fraction=0.01)
    rgb = image_from_array(scene(48, 64, 0)[1], T0, "camera")
    temps = np.random.default_rng(0).normal(300.0, 5.0, (48, 64)).astype(np.float32)  # kelvin
    dead = temps.copy()
    dead[0, :10] = np.nan  # 10 dead pixels: 0.3 %
    assert pipe.process(image_from_array(dead, T0, "thermal"), rgb) is not None
    half = temps.copy()
    half[:24] = np.nan
    assert pipe.process(image_from_array(half, T0, "thermal"), rgb) is None
    assert pipe.failure_counts == {"InvalidThermal": 1} and "50.0%" in pipe.failures[-1].reason


def test_node_keeps_bounded_history(engine):
    pipe = FusionPipeline(engine, keep_history=False, detections=False)
    rgb = image_from_array(scene(48, 64, 0)[1], T0, "camera")
    bad = image_from_array(np.zeros((48, 64), np.uint8), T0, "thermal")
    bad.encoding = "yuv422"
    for _ in range(150):
        pipe.process(bad, rgb)
    assert len(pipe.failures) == 100 and pipe.failure_counts["UnsupportedEncoding"] == 150
