"""`moe-fusion replay`: the real sample bag end to end, and bags with bad input written with rosbags in tmp_path."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from moe_fusion_ros.cli import main

T0 = 1_700_000_000 * 1_000_000_000
MS = 1_000_000
TH, CAM = "/thermal/image_raw", "/camera/image_raw"
CAM_INFO, INFO_TYPE = "/camera/camera_info", "sensor_msgs/msg/CameraInfo"


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    import torch

    from moe_fusion_core.checkpoint import save_model
    from moe_fusion_core.config import named_config
    from moe_fusion_core.model.moe_fusion import build_model

    torch.manual_seed(0)
    cfg = named_config("embedded")
    return save_model(build_model(cfg.model).eval(), cfg, tmp_path_factory.mktemp("ckpt") / "model")


def read_bag(path):
    from rosbags.rosbag2 import Reader

    from moe_fusion_ros.msg_defs import typestore_for

    ts = typestore_for("jazzy")
    out: dict[str, list] = {}
    with Reader(path) as r:
        for c, t, raw in r.messages():
            out.setdefault(c.topic, []).append((t, ts.deserialize_cdr(raw, c.msgtype)))
    return out


def stamp(m) -> int:
    return m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec


def write_bag(path, events, storage="sqlite3"):
    """events: (topic, stamp_ns, array, encoding, frame_id) in arrival order; bag time = stamp + 5 ms."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from moe_fusion_ros.msg_defs import build

    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as w:
        conns = {}
        for i, (topic, st, arr, enc, frame) in enumerate(events):
            if enc == "camera_info":  # arr = (width, height) of a calibrated camera
                if topic not in conns:
                    conns[topic] = w.add_connection(topic, INFO_TYPE, typestore=ts)
                k = np.array([300.0, 0, arr[0] / 2, 0, 300.0, arr[1] / 2, 0, 0, 1])
                h = {"stamp": {"sec": st // 1_000_000_000, "nanosec": st % 1_000_000_000}, "frame_id": frame}
                msg = build(ts, INFO_TYPE, {"header": h, "width": arr[0], "height": arr[1], "k": k,
                                            "distortion_model": "plumb_bob", "d": np.zeros(5)})
                w.write(conns[topic], T0 + i * 10 * MS, ts.serialize_cdr(msg, INFO_TYPE))
                continue
            if topic not in conns:
                conns[topic] = w.add_connection(topic, "sensor_msgs/msg/Image", typestore=ts)
            a = np.ascontiguousarray(arr)
            h = a.shape[0]
            msg = T["sensor_msgs/msg/Image"](
                header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](
                    sec=st // 1_000_000_000, nanosec=st % 1_000_000_000), frame_id=frame),
                height=h, width=a.shape[1], encoding=enc, is_bigendian=0, step=a.nbytes // h,
                data=a.reshape(-1).view(np.uint8))
            w.write(conns[topic], T0 + i * 10 * MS, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))


def frames(n=4, th_size=(24, 32), rgb_size=(24, 32), th_dtype=np.uint16):
    rng = np.random.default_rng(0)
    ev = []
    for k in range(n):
        rgb = rng.integers(0, 255, (*rgb_size, 3)).astype(np.uint8)
        th = rng.integers(0, 255, th_size).astype(th_dtype) * (100 if th_dtype == np.uint16 else 1)
        ev.append((TH, T0 + k * 40 * MS + 3 * MS, th, "mono16" if th_dtype == np.uint16 else "mono8", "thermal"))
        ev.append((CAM, T0 + k * 40 * MS, rgb, "rgb8", "camera"))
    return ev


def replay(bag, out, checkpoint, *extra):
    report = out.parent / (out.name + ".json")
    code = main(["replay", str(bag), "--out", str(out), "--report", str(report), "--checkpoint", str(checkpoint),
                 "--device", "cpu", "--no-progress", *extra])
    return code, (json.loads(report.read_text()) if report.exists() else None)


def test_sample_bag_end_to_end(data_dir, tmp_path, checkpoint):
    gt = json.loads((data_dir / "bags" / "sample_small.groundtruth.json").read_text())
    out = tmp_path / "fused"
    code, rep = replay(data_dir / "bags" / "sample_small", out, checkpoint, "--gates")
    assert code == 0
    want = sorted((p["thermal_stamp_ns"], p["rgb_stamp_ns"]) for p in gt["pairs"])
    assert sorted((p["thermal_stamp_ns"], p["rgb_stamp_ns"]) for p in rep["pair_list"]) == want
    assert rep["messages_read"] == {TH: 25, CAM: 21, CAM_INFO: 21} and rep["fused"] == 20 and rep["failed"] == []
    assert rep["unpaired"]["count"] == 6
    assert set(rep["unpaired"]["by_reason"]) <= {"no_partner_within_slop", "superseded"}
    for stage in ("decode", "inference", "messages", "total"):
        assert rep["latency_ms"][stage]["p95_ms"] >= rep["latency_ms"][stage]["p50_ms"] > 0
    assert rep["throughput"]["pairs_per_s"] > 0
    try:
        from moe_fusion_core.metrics.fusion import METRIC_NAMES
    except ImportError:  # metrics not in this checkout: the report says why
        assert rep["metrics"] is None and "unavailable" in rep["metrics_reason"]
    else:
        assert rep["metrics_reason"] is None and rep["metrics"]["pairs"] == 20
        assert set(rep["metrics"]["mean"]) == set(METRIC_NAMES)
        assert all(v is None or np.isfinite(v) for v in rep["metrics"]["mean"].values())  # JSON-safe
    assert (out / "metadata.yaml").is_file() and list(out.glob("*.mcap"))  # same storage as the input
    bag = read_bag(out)
    imgs, dets = bag["/fused/image"], bag["/fused/detections"]
    assert len(imgs) == 20 and len(dets) == 20 and len(bag["/fused/gates"]) == 20
    rgb_stamps = sorted(r for _, r in want)
    assert sorted(stamp(m) for _, m in imgs) == rgb_stamps
    assert [stamp(m) for _, m in dets] == [stamp(m) for _, m in imgs]
    for _, m in imgs:
        assert (m.width, m.height, m.encoding, m.step, m.header.frame_id) == (448, 320, "mono8", 448, "camera")
        assert m.data.size == 448 * 320
    for _, d in dets:
        assert d.header.frame_id == "camera"
        for x in d.detections:
            assert stamp(x) == stamp(d)
            assert 0 <= x.bbox.center.position.x <= 448 and 0 <= x.bbox.center.position.y <= 320
    log_times = [t for t, _ in imgs]
    assert log_times == sorted(log_times)
    infos = bag["/fused/camera_info"]  # the RGB camera's (uncalibrated: size only) with each image's header
    assert rep["camera_info"] == {"topic": CAM_INFO, "status": "used", "written": 20, "not_written": {}}
    assert [(stamp(m), m.header.frame_id, m.width, m.height) for _, m in infos] == \
        [(stamp(m), "camera", 448, 320) for _, m in imgs]


def test_sqlite_bag_with_bad_stamps_sizes_and_encoding(tmp_path, checkpoint):
    ev = frames(4, th_size=(12, 16), rgb_size=(24, 32))
    ev.insert(2, (TH, ev[0][1], ev[0][2], "mono16", "thermal"))  # duplicate thermal stamp
    ev.insert(5, (CAM, T0 - 200 * MS, ev[1][2], "rgb8", "camera"))  # out of order
    yuv = list(ev[6])
    yuv[3] = "yuv422"
    ev[6] = tuple(yuv)  # a thermal frame nobody can decode
    bag = tmp_path / "in"
    write_bag(bag, ev, storage="sqlite3")
    out = tmp_path / "out"
    code, rep = replay(bag, out, checkpoint, "--no-metrics")
    assert code == 1
    assert rep["unpaired"]["by_reason"] == {"duplicate_stamp": 1, "out_of_order": 1}
    assert rep["pairs"] == 4 and rep["fused"] == 3
    assert len(rep["failed"]) == 1 and "yuv422" in rep["failed"][0]["reason"]
    assert rep["resized_thermal"] == 3
    assert list(out.glob("*.db3"))
    imgs = read_bag(out)["/fused/image"]
    assert len(imgs) == 3 and all((m.width, m.height) == (32, 24) for _, m in imgs)
    assert rep["metrics"] is None and "disabled" in rep["metrics_reason"]


def test_unusable_input_exits_2(tmp_path, checkpoint, capsys, data_dir):
    bag = tmp_path / "in"
    write_bag(bag, frames(2), storage="mcap")
    code, _ = replay(bag, tmp_path / "o1", checkpoint, "--rgb-topic", "/rgb/image_raw")
    assert code == 2 and "/rgb/image_raw" in capsys.readouterr().err
    code, _ = replay(data_dir / "bags" / "sample_small", tmp_path / "o4", checkpoint,
                     "--thermal-topic", "/thermal/camera_info")
    assert code == 2 and "sensor_msgs/msg/CameraInfo" in capsys.readouterr().err
    code, _ = replay(tmp_path / "nope", tmp_path / "o2", checkpoint)
    assert code == 2 and "no such bag" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(bag, broken)
    f = next(broken.glob("*.mcap"))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    code, _ = replay(broken, tmp_path / "o3", checkpoint)
    assert code == 2 and "cannot read bag" in capsys.readouterr().err
    existing = tmp_path / "exists"
    existing.mkdir()
    (existing / "keep.txt").write_text("not a bag")
    code, _ = replay(bag, existing, checkpoint, "--overwrite")
    assert code == 2 and (existing / "keep.txt").exists()


def test_max_pairs_and_overwrite(tmp_path, checkpoint):
    bag = tmp_path / "in"
    write_bag(bag, frames(5, th_dtype=np.uint8), storage="mcap")
    out = tmp_path / "out"
    code, rep = replay(bag, out, checkpoint, "--max-pairs", "2", "--no-metrics")
    assert code == 0 and rep["fused"] == 2 and rep["stopped_early"]
    code, _ = replay(bag, out, checkpoint, "--no-metrics")
    assert code == 2  # exists
    code, rep = replay(bag, out, checkpoint, "--overwrite", "--no-metrics", "--color")
    assert code == 0 and rep["fused"] == 5
    imgs = read_bag(out)["/fused/image"]
    assert len(imgs) == 5 and all(m.encoding == "rgb8" and m.step == 32 * 3 for _, m in imgs)


def test_corrupt_message_is_counted_and_skipped(tmp_path, checkpoint):
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    bag = tmp_path / "in"
    write_bag(bag, frames(3, th_dtype=np.uint8), storage="sqlite3")
    bad = tmp_path / "bad"  # the same frames plus one undecodable thermal message in the middle
    with Reader(bag) as r, Writer(bad, version=9, storage_plugin=StoragePlugin.SQLITE3) as w:
        conns = {c.topic: w.add_connection(c.topic, c.msgtype, msgdef=c.msgdef.data, rihs01=c.digest)
                 for c in r.connections}
        for i, (c, t, raw) in enumerate(r.messages()):
            w.write(conns[c.topic], t, raw)
            if i == 2:
                w.write(conns[TH], t + 1, b"\x00\x01\x00\x00garbage")
    code, rep = replay(bad, tmp_path / "out", checkpoint, "--no-metrics")
    assert code == 1
    assert len(rep["read_errors"]) == 1 and "undecodable" in rep["read_errors"][0]["reason"]
    assert rep["fused"] == 3 and rep["messages_read"][TH] == 4


def test_camera_info_topic_choice_and_a_wrong_resolution(tmp_path, checkpoint, capsys):
    ev = frames(3)
    ev.insert(2, (CAM_INFO, T0, (32, 24), "camera_info", "camera"))  # fits the 32x24 images
    ev.append((CAM_INFO, T0 + 80 * MS, (640, 480), "camera_info", "camera"))  # another resolution
    write_bag(tmp_path / "in", ev)
    code, rep = replay(tmp_path / "in", tmp_path / "out", checkpoint)
    assert code == 0 and rep["fused"] == 3
    info = read_bag(tmp_path / "out")["/fused/camera_info"]
    assert [(stamp(m), m.width, m.k[0]) for _, m in info] == [(T0, 32, 300.0), (T0 + 40 * MS, 32, 300.0)]
    assert rep["camera_info"]["not_written"] == {"RGB camera_info is for 640x480 but the image is 32x24": 1}
    assert "/fused/camera_info not written for 1 frame(s): RGB camera_info is for 640x480" in capsys.readouterr().err
    code, rep = replay(tmp_path / "in", tmp_path / "off", checkpoint, "--no-camera-info")
    assert code == 0 and "/fused/camera_info" not in read_bag(tmp_path / "off")
    assert rep["camera_info"]["status"] == "disabled (--no-camera-info)"
    write_bag(tmp_path / "noinfo", frames(2))  # no camera_info in the bag: images only, and the report says so
    code, rep = replay(tmp_path / "noinfo", tmp_path / "out2", checkpoint)
    assert code == 0 and rep["camera_info"]["status"] == "not in bag"
    code, _ = replay(tmp_path / "noinfo", tmp_path / "out3", checkpoint, "--rgb-info-topic", "/camera/info")
    assert code == 2 and "--rgb-info-topic '/camera/info' not in bag" in capsys.readouterr().err
    code, _ = replay(tmp_path / "noinfo", tmp_path / "out4", checkpoint, "--rgb-info-topic", TH)  # an image topic
    assert code == 2 and f"topic '{TH}' has type sensor_msgs/msg/Image, expected sensor_msgs/msg/CameraInfo" in \
        capsys.readouterr().err


@pytest.mark.parametrize(("distro", "version", "qos_type"), [("humble", 8, str), ("jazzy", 9, list)])
def test_output_bag_metadata_follows_the_distro(tmp_path, checkpoint, distro, version, qos_type):
    import yaml

    write_bag(tmp_path / "in", frames(2, th_dtype=np.uint8))
    code, rep = replay(tmp_path / "in", tmp_path / "out", checkpoint, "--distro", distro, "--no-metrics")
    assert code == 0 and rep["fused"] == 2
    meta = yaml.safe_load((tmp_path / "out" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == version
    topics = {t["topic_metadata"]["name"]: t for t in meta["topics_with_message_count"]}
    assert topics["/fused/image"]["message_count"] == 2
    # Humble's rosbag2 reads offered_qos_profiles as a string; version 9 writes a list
    assert all(isinstance(t["topic_metadata"]["offered_qos_profiles"], qos_type) for t in topics.values())
    assert len(read_bag(tmp_path / "out")["/fused/detections"]) == 2


@pytest.fixture(scope="module")
def sample_bag(sample_dir):
    """The repository's sample bag: its messages by topic and its intended (thermal stamp, rgb stamp) pairs."""
    gt = json.loads((sample_dir / "bag.groundtruth.json").read_text())
    return {"path": sample_dir / "bag", "msgs": read_bag(sample_dir / "bag"),
            "pairs": {(p["thermal_stamp_ns"], p["rgb_stamp_ns"]) for p in gt["pairs"]}}


def test_replayed_images_are_the_engines_fused_images_of_the_intended_pairs_and_the_metrics_the_modules(
        sample_bag, tmp_path):
    """The shipped model: each image written to the output bag is the engine's fused image of the pair its pixels
    show (within 1 grey level), that pair is one of the ground truth's, each intended pair once; the report's
    metric means are the metric module's scores of those images."""
    from content import PairOracle, pixels, reference_engine

    from moe_fusion_core.engine import DEFAULT_MODEL_DIR
    from moe_fusion_core.image_io import rgb_to_luma
    from moe_fusion_core.metrics.fusion import METRIC_NAMES, score_all

    code, rep = replay(sample_bag["path"], tmp_path / "fused", DEFAULT_MODEL_DIR)
    assert code == 0 and rep["metrics_reason"] is None
    frames = {key: {stamp(m): pixels(m) for _, m in sample_bag["msgs"][topic]} for key, topic in
              (("thermal", TH), ("rgb", CAM))}
    candidates = {(t, r): (frames["thermal"][t], frames["rgb"][r]) for t, r in sample_bag["pairs"]}
    oracle = PairOracle(reference_engine(), candidates)
    shown = []
    for _, m in read_bag(tmp_path / "fused")["/fused/image"]:
        pair = oracle.identify(pixels(m))
        assert stamp(m) == pair[1]
        shown.append(pair)
    assert sorted(shown) == sorted(sample_bag["pairs"])
    scores = [score_all(oracle.refs[p], candidates[p][0], rgb_to_luma(candidates[p][1]), "paper") for p in shown]
    mean = rep["metrics"]["mean"]
    assert rep["metrics"]["pairs"] == len(shown) and set(mean) == set(METRIC_NAMES)
    for k in METRIC_NAMES:
        assert mean[k] is not None and mean[k] == pytest.approx(np.mean([s[k] for s in scores]), rel=1e-3), k


def test_a_pair_whose_metrics_cannot_be_scored_fails_the_replay_and_is_named(sample_bag, tmp_path, monkeypatch,
                                                                           capsys):
    import moe_fusion_core.metrics.fusion as fm
    from moe_fusion_core.engine import DEFAULT_MODEL_DIR

    def broken(*args, **kwargs):
        raise FloatingPointError("a metric bug")

    monkeypatch.setattr(fm, "score_all", broken)
    code, rep = replay(sample_bag["path"], tmp_path / "fused", DEFAULT_MODEL_DIR, "--max-pairs", "1")
    first = min(sample_bag["pairs"], key=lambda p: p[1])
    name = f"rgb {first[1] // 10**9}.{first[1] % 10**9:09d}"
    assert code == 1 and rep["fused"] == 1
    assert rep["metrics"] is None and rep["metrics_reason"].startswith(f"scoring pair {name} + thermal")
    assert "FloatingPointError: a metric bug" in rep["metrics_reason"]
    assert f"fusion metrics: scoring pair {name}" in capsys.readouterr().err
