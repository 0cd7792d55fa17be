"""Published detections: per-class thresholds, the class filter, track IDs (core, pipeline) and the ID-switch counts."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from moe_fusion_core.config import Config, named_config
from moe_fusion_core.engine import Detection
from moe_fusion_core.metrics.detection import read_class_names, read_yolo_labels
from moe_fusion_core.metrics.tracking import Obj, link_ground_truth, mot_counts
from moe_fusion_core.tracking import DetectionTracker, check_classes, select_classes

NS = 1_000_000_000
MS = 1_000_000


def det(box: tuple[float, float, float, float], name: str = "person", score: float = 0.9) -> Detection:
    return Detection(box, 0 if name == "person" else 1, name, score)


# ---------------------------------------------------------------------- per-class thresholds
def _with_thresholds(thresholds: dict) -> Config:
    data = named_config("embedded").to_dict()
    data["model"]["class_names"] = ["person", "car"]
    data["model"]["detector"]["score_thresholds"] = thresholds
    return Config.from_dict(data)


def test_score_thresholds_load_round_trip_and_old_configs_have_none():
    cfg = _with_thresholds({"car": 0.4})
    assert Config.from_dict(yaml.safe_load(cfg.to_yaml())).model.detector.score_thresholds == {"car": 0.4}
    old = named_config("embedded").to_dict()
    del old["model"]["detector"]["score_thresholds"]  # a config written before the field existed
    assert Config.from_dict(old).model.detector.score_thresholds == {}


@pytest.mark.parametrize("thresholds,match", [
    ({"bicycle": 0.5, "truck": 0.2}, "unknown class.*bicycle, truck.*classes are person, car"),
    ({"car": 1.5}, r"score_thresholds.car must be a number in \[0, 1\]"),
    ({"person": "high"}, r"score_thresholds.person must be a number"),
])
def test_bad_score_thresholds_are_refused_naming_the_problem(thresholds, match):
    with pytest.raises(ValueError, match=match):
        _with_thresholds(thresholds)


@pytest.fixture(scope="module")
def per_class_engine(tmp_path_factory):
    """The embedded model with per-class thresholds in its config (person 0.6, car 0.05)."""
    from moe_fusion_core.engine import FusionEngine, default_checkpoint

    folder = tmp_path_factory.mktemp("per_class")
    (folder / "model.safetensors").symlink_to(default_checkpoint() / "model.safetensors")
    data = yaml.safe_load((default_checkpoint() / "config.yaml").read_text())
    data["model"]["detector"]["score_thresholds"] = PER_CLASS
    (folder / "config.yaml").write_text(yaml.safe_dump(data))
    return FusionEngine(folder, device="cpu")


PER_CLASS = {"person": 0.6, "bicycle": 0.3, "car": 0.05}  # the default model's classes


def test_the_engine_publishes_each_class_at_its_own_threshold_unless_one_is_set(per_class_engine, sample_dir):
    from moe_fusion_core.image_io import read_ir, read_vis

    ir = read_ir(sample_dir / "pairs" / "ir" / "0111_1803_0000.png")  # night street: people and faint cars
    vis = read_vis(sample_dir / "pairs" / "vis" / "0111_1803_0000.png")
    engine = per_class_engine
    assert engine.threshold_for("person") == 0.6 and engine.threshold_for("car") == 0.05
    engine.score_threshold = 0.05  # a caller's single threshold: every class
    try:
        everything = engine.fuse(ir, vis).detections
    finally:
        engine.score_threshold = None
    per_class = engine.fuse(ir, vis).detections
    want = [d for d in everything if d.score >= PER_CLASS[d.class_name]]
    assert [(d.class_name, d.score) for d in per_class] == [(d.class_name, d.score) for d in want]
    assert any(d.class_name == "car" and d.score < 0.6 for d in per_class)  # a car kept below the person bar
    assert any(d.class_name == "person" and d.score < 0.6 for d in everything)  # and people dropped by it


# ---------------------------------------------------------------------- class filter
def test_the_class_filter_keeps_the_chosen_classes_and_refuses_unknown_names():
    dets = [det((0, 0, 5, 5)), det((10, 0, 15, 5), "car")]
    assert check_classes(["car", "", "car"], ["person", "car"]) == ("car",)
    assert check_classes([""], ["person", "car"]) == ()  # the ros2 CLI's empty list: all classes
    assert select_classes(dets, ("car",)) == [dets[1]]
    assert select_classes(dets, ()) == dets
    with pytest.raises(ValueError, match=r"unknown class.*bicycle.*model.s classes are person, car"):
        check_classes(["person", "bicycle"], ["person", "car"])


# ---------------------------------------------------------------------- the tracker
def test_an_object_keeps_its_id_a_new_one_gets_a_new_id_and_classes_never_share_one():
    tr = DetectionTracker()
    a, b = tr.update([det((100, 100, 140, 200)), det((300, 120, 400, 180), "car")], 1 * NS)
    assert a != b
    # the person moved a little, the car is gone, a car appears exactly where the person is
    ids = tr.update([det((104, 101, 144, 201)), det((104, 101, 144, 201), "car")], 1 * NS + 100 * MS)
    assert ids[0] == a and ids[1] not in (a, b)
    # a person far from every track is a new object
    ids = tr.update([det((106, 102, 146, 202)), det((500, 10, 530, 80))], 1 * NS + 200 * MS)
    assert ids[0] == a and ids[1] not in (a, b)


def test_a_missed_frame_keeps_the_id_and_a_time_jump_starts_new_tracks():
    tr = DetectionTracker()
    (a,) = tr.update([det((100, 100, 140, 200))], 10 * NS)
    for k in range(1, 4):
        assert tr.update([det((100 + k, 100, 140 + k, 200))], 10 * NS + k * 100 * MS) == [a]
    assert tr.update([], 10 * NS + 400 * MS) == []  # missed once
    assert tr.update([det((105, 100, 145, 200))], 10 * NS + 500 * MS) == [a]
    assert tr.update([det((105, 100, 145, 200))], 10 * NS + 400 * MS) == [a]  # a small step back: same timeline
    (c,) = tr.update([det((105, 100, 145, 200))], 9 * NS)  # back by more than time_jump: a bag replayed
    assert c > a and tr.resets == 1
    tr.reset()  # lifecycle: IDs go on above the ones given
    assert tr.update([det((105, 100, 145, 200))], 9 * NS)[0] > c


# ---------------------------------------------------------------------- the pipeline (node and replay)
class MovingBoxes:
    """Stand-in engine for the pipeline's plumbing: a person walking right and a parked car, one step per frame."""

    class_names = ("person", "car")

    def __init__(self) -> None:
        self.frame = 0

    def fuse(self, ir: np.ndarray, vis: np.ndarray, *, color: bool = False, detections: bool = True):
        x = 10 + 2 * self.frame
        self.frame += 1
        dets = [det((x, 10, x + 20, 50)), det((60, 20, 100, 40), "car")]
        gates = {g: np.full(4, 0.25, np.float32) for g in ("mole_fg", "mole_bg", "moge")}
        return SimpleNamespace(fused=ir, color=None, detections=dets, gates=gates, timings_ms={})


def test_the_pipeline_publishes_track_ids_filters_classes_and_resets_on_a_time_jump():
    from moe_fusion_ros.pipeline import FusionPipeline
    from moe_fusion_ros.sync import RGB, THERMAL
    from moe_fusion_ros.thermal import image_from_array

    pipe = FusionPipeline(MovingBoxes(), slop=0.02)
    ir, vis = np.full((64, 128), 100, np.uint8), np.full((64, 128, 3), 50, np.uint8)

    def run(stamps: list[int]) -> list[tuple[int, list[tuple[str, str]]]]:
        """(RGB stamp, [(class, id)]) of every pair these messages made final."""
        out = []
        for s in stamps:
            pairs = pipe.add(THERMAL, image_from_array(ir, s + 2 * MS, "t")) + \
                pipe.add(RGB, image_from_array(vis, s, "c", "rgb8"))
            for p in pairs:
                o = pipe.process(p.thermal, p.rgb)
                out.append((p.rgb_stamp_ns, [(d["results"][0]["hypothesis"]["class_id"], d["id"])
                                             for d in o.detections["detections"]]))
        return out

    t0 = 1_700_000_000 * NS
    first = run([t0 + k * 100 * MS for k in range(4)])
    assert len(first) == 3  # the last pair waits for a later message
    ids = {cls: {i for _, f in first for c, i in f if c == cls} for cls in ("person", "car")}
    assert all(len(v) == 1 for v in ids.values()) and ids["person"] != ids["car"]  # one ID per object
    pipe.set_classes(["car"])
    after = run([t0 + k * 100 * MS for k in range(4, 6)])
    assert after and all(f == [("car", *ids["car"])] for _, f in after)
    with pytest.raises(ValueError, match=r"unknown class.*bicycle"):
        pipe.set_classes(["bicycle"])
    replayed = run([t0, t0 + 100 * MS, t0 + 200 * MS])  # the bag again from its start: pairing and tracks reset
    assert pipe.sync.stats.time_jumps == 1 and pipe.tracker.resets == 1
    new = [f for s, f in replayed if s < t0 + 300 * MS]  # (the old timeline's last pair comes out first)
    assert new and all(len(f) == 1 and f[0][1] not in ids["car"] for f in new)
    assert len({f[0][1] for f in new}) == 1  # the car of the new timeline keeps its new ID
    pipe.set_tracking(False)
    assert all(i == "" for _, f in run([t0 + 300 * MS, t0 + 400 * MS]) for _, i in f)


# ---------------------------------------------------------------------- ID-switch counts
def test_mot_counts_count_switches_fragmentations_misses_and_false_positives():
    box, far = (0, 0, 10, 10), (50, 50, 60, 60)
    gt = [[Obj(1, 0, box)], [Obj(1, 0, box)], [Obj(1, 0, box)], [Obj(1, 0, box)], [Obj(1, 0, box)]]
    pred = [[Obj(7, 0, box)], [Obj(7, 0, box), Obj(8, 0, far)], [], [Obj(9, 0, box)], [Obj(9, 0, box)]]
    n = mot_counts(gt, pred)
    assert (n["gt"], n["matched"], n["misses"], n["false_positives"]) == (5, 4, 1, 1)
    assert (n["id_switches"], n["fragmentations"]) == (1, 1)  # 7 -> 9 after the gap
    assert n["mota"] == pytest.approx(1 - 3 / 5)
    other_class = [[Obj(7, 1, box)] for _ in gt]  # a car box on a person is no match
    assert mot_counts(gt, other_class)["matched"] == 0


def test_real_crowded_label_sets_panned_across_frames_keep_every_identity(data_dir):
    """Real box layouts (the three MSRS frames with the most labelled objects: crowds, riders = person + bicycle
    boxes, overlapping cars, people 7 px wide) moved as by a slow camera pan (3 px a frame), fed to the tracker as
    detections: every object keeps one ID; the ground-truth linking recovers the same identities."""
    root = data_dir / "msrs_det_more"
    names = read_class_names(root / "classes.txt")
    labels = {p.stem: read_yolo_labels(p, 640, 480) for p in sorted((root / "labels").glob("*.txt"))}
    crowded = sorted(labels, key=lambda s: -len(labels[s]))[:3]
    assert all(len(labels[s]) >= 12 for s in crowded)
    for stem in crowded:
        frames = [[(b.class_id, (b.box[0] + 3 * k, b.box[1] + k, b.box[2] + 3 * k, b.box[3] + k))
                   for b in labels[stem]] for k in range(6)]
        gt = link_ground_truth(frames)
        assert [sorted(o.id for o in f) for f in gt] == [sorted(o.id for o in gt[0])] * 6, stem
        tracker = DetectionTracker()
        pred = []
        for f in frames:
            dets = [det(box, names[c]) for c, box in f]
            tracker.update(dets)
            pred.append([Obj(d.track_id, c, d.box) for d, (c, _) in zip(dets, f)])
        n = mot_counts(gt, pred)
        assert (n["matched"], n["false_positives"], n["id_switches"]) == (n["gt"], 0, 0), (stem, n)
        assert len({o.id for f in pred for o in f}) == len(labels[stem])  # one ID per object, all distinct


def test_the_benchmark_cuts_stem_ranges_into_sequences():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from track_id_switches import select_sequences

    stems = ["00798N", "00802N", "00806N", "00830N", "00834N", "00806D", "01000N"]
    assert select_sequences(stems, "00800N-00899N,01000N-01000N", 10) == [
        ["00802N", "00806N"], ["00830N", "00834N"], ["01000N"]]
    with pytest.raises(ValueError, match="bad stem range"):
        select_sequences(stems, "00899N-00800N", 10)
