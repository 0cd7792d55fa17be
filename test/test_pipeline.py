"""The shared fusion pipeline (with an untrained model on small images), the latest-only slot, the node-path bench."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from moe_fusion_ros.latest import BufferClosed, FifoBuffer, LatestSlot, make_buffer
from moe_fusion_ros.pipeline import FusionPipeline, fake_image_message, node_path_benchmark
from moe_fusion_ros.sync import RGB, THERMAL

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
        th = fake_image_message(ir, T0 + k * 40 * MS + 4 * MS, "thermal")  # mono16
        rgb = fake_image_message(np.ascontiguousarray(vis[..., ::-1]), T0 + k * 40 * MS, "cam_optical", "bgr8")
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


def test_bad_frames_are_counted_and_skipped_and_sizes_may_differ(engine):
    pipe = FusionPipeline(engine, color=True, frame_id="fallback_frame")
    ir, vis = scene(24, 32, 0)
    bad = fake_image_message(ir, T0, "thermal")
    bad.encoding = "yuv422"
    rgb = fake_image_message(vis, T0, "")
    assert pipe.process(bad, rgb) is None
    assert len(pipe.failures) == 1 and "yuv422" in pipe.failures[0].reason
    short = fake_image_message(ir, T0, "thermal")
    short.data = short.data[:7]
    assert pipe.process(short, rgb) is None
    assert "too short" in pipe.failures[1].reason
    nan = fake_image_message(np.full((24, 32), np.nan, np.float32), T0, "thermal")
    assert pipe.process(nan, rgb) is None and "no finite pixel" in pipe.failures[2].reason
    _, big_vis = scene(48, 64, 1)
    out = pipe.process(fake_image_message(ir, T0, "thermal"), fake_image_message(big_vis, T0, ""))
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


def test_node_path_benchmark_times_every_pair():
    ir, vis = scene(120, 160, 3)
    times = node_path_benchmark(ir, vis, 10)
    assert len(times) == 10 and all(t > 0 for t in times)
    with pytest.raises(ValueError):
        node_path_benchmark(ir, vis, 0)


def camera_info_msg(stamp: int, width: int, height: int, fx: float) -> SimpleNamespace:
    hdr = SimpleNamespace(stamp=SimpleNamespace(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="camera")
    return SimpleNamespace(header=hdr, width=width, height=height, distortion_model="plumb_bob", d=np.zeros(5),
                           k=np.array([fx, 0, 32, 0, fx, 24, 0, 0, 1.0]), r=np.eye(3).reshape(-1),
                           p=np.array([fx, 0, 32, 0, 0, fx, 24, 0, 0, 0, 1, 0.0]), binning_x=0, binning_y=0,
                           roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0, do_rectify=False))


def test_camera_info_goes_out_with_the_image_of_its_stamp_and_a_wrong_one_is_counted(engine):
    pipe = FusionPipeline(engine, slop=0.02, detections=False)
    ir, vis = scene(48, 64, 0)
    th = [fake_image_message(ir, T0 + k * 40 * MS + 4 * MS, "thermal") for k in range(3)]
    rgb = [fake_image_message(vis, T0 + k * 40 * MS, "camera") for k in range(3)]
    assert pipe.process(th[0], rgb[0]).camera_info is None  # none received yet: none published
    for k in range(3):
        pipe.set_camera_info(camera_info_msg(T0 + k * 40 * MS, 64, 48, 500.0 + k))
    o = pipe.process(th[1], rgb[1])  # the info of the same stamp, not the latest
    assert o.camera_info["header"] == o.header and o.camera_info["k"][0] == 501.0
    later = fake_image_message(vis, T0 + 9 * 40 * MS, "camera")  # no info with this stamp: the latest
    assert pipe.process(th[2], later).camera_info["k"][0] == 502.0
    pipe.set_camera_info(camera_info_msg(T0 + 10 * 40 * MS, 640, 480, 500.0))  # another camera resolution
    o = pipe.process(th[2], fake_image_message(vis, T0 + 10 * 40 * MS, "camera"))
    assert o is not None and o.camera_info is None  # the image still goes out
    assert pipe.camera_info_errors == {"RGB camera_info is for 640x480 but the image is 64x48": 1}
    pipe.camera_info = False
    assert pipe.process(th[1], rgb[1]).camera_info is None
