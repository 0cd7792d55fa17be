"""``moe-fusion evaluate`` and ``moe-fusion detection-protocol`` end to end on real pairs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from moe_fusion_core.image_io import read_image, read_ir, write_image
from moe_fusion_core.metrics import METRIC_NAMES, to_grey_u8
from moe_fusion_ros.cli import main

STEMS = {"set_a": ["00004N", "00055D"], "set_b": ["00881N"]}  # nested dataset folders
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _average(ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
    return np.floor((ir.astype(np.float64) + vis) / 2 + 0.5).astype(np.uint8)


@pytest.fixture
def dataset(tmp_path: Path, data_dir: Path) -> Path:
    """ir/, vis/ and fused/ (= average fusion) for three msrs pairs in two sub-folders."""
    msrs = data_dir / "msrs"
    for sub, stems in STEMS.items():
        for s in stems:
            for side in ("ir", "vis"):
                (tmp_path / side / sub).mkdir(parents=True, exist_ok=True)
                shutil.copy(msrs / side / f"{s}.png", tmp_path / side / sub / f"{s}.png")
            ir = read_ir(msrs / "ir" / f"{s}.png")
            vis = to_grey_u8(read_image(msrs / "vis" / f"{s}.png"))
            write_image(tmp_path / "fused" / sub / f"{s}.png", _average(ir, vis))
    # what 'moe-fusion fuse' writes beside the fused images must not count as unpaired
    write_image(tmp_path / "fused" / "color" / "set_a" / "00004N.png", np.zeros((4, 4, 3), np.uint8))
    write_image(tmp_path / "fused" / "detections" / "set_a" / "00004N.jpg", np.zeros((4, 4, 3), np.uint8))
    return tmp_path


def _args(d: Path, *extra: str) -> list[str]:
    return ["evaluate", "--fused", str(d / "fused"), "--ir", str(d / "ir"), "--vis", str(d / "vis"),
            "--no-progress", *extra]


def test_evaluate_json_baselines_and_report(dataset: Path, capsys):
    gates = dataset / "gates.jsonl"
    gates.write_text("\n".join(json.dumps(r) for r in [
        {"stem": "set_a/00055D", "daynight": "day", "mole_fg": [0.5, 0, 0.5, 0], "mole_bg": [1, 0, 0, 0],
         "moge": [0, 1, 0, 0]},
        {"stem": "set_a/00004N", "daynight": "night", "mole_fg": [0, 0.5, 0, 0.5], "mole_bg": [1, 0, 0, 0],
         "moge": [0, 1, 0, 0]},
        {"stem": "set_b/00881N", "daynight": "night", "mole_fg": [0, 0.5, 0.5, 0], "mole_bg": [0.5, 0.5, 0, 0],
         "moge": [0, 1, 0, 0]}]) + "\n")
    out, rep = dataset / "out.json", dataset / "report"
    rc = main(_args(dataset, "--baselines", "--json", str(out), "--report", str(rep), "--gate-log", str(gates)))
    assert rc == 0
    res = json.loads(out.read_text())
    stems = {f"{sub}/{s}" for sub, ss in STEMS.items() for s in ss}
    for mode in ("paper", "standard"):
        block = res[mode]
        assert list(block["mean"]) == list(METRIC_NAMES)
        assert set(block["per_image"]) == stems
        assert all(list(row) == list(METRIC_NAMES) for row in block["per_image"].values())
        assert block["nan_count"] == dict.fromkeys(METRIC_NAMES, 0)
        assert block["mean"]["EN"] == pytest.approx(np.mean([r["EN"] for r in block["per_image"].values()]))
        assert set(block["per_folder"]) == set(STEMS)
        assert block["per_folder"]["set_a"]["count"] == 2
        # the fused folder holds the average fusion: the method and the average baseline must agree exactly
        assert res["baselines"]["average"][mode]["mean"] == block["mean"]
        # single-source baselines: SCD undefined for every image, reported as null with a count
        for src in ("ir", "visible"):
            b = res["baselines"][src][mode]
            assert b["mean"]["SCD"] is None and b["nan_count"]["SCD"] == 3
        assert res["baselines"]["max"][mode]["mean"]["SF"] > block["mean"]["SF"]
    assert res["paper"]["mean"]["SD"] < 16 < res["standard"]["mean"]["SD"]  # the two modes' scales
    assert set(res["baselines"]) == {"average", "max", "ir", "visible"}
    assert res["skipped"] == [] and "detection" not in res
    assert res["summary"] == {"pairs": 3, "scored": 3, "skipped": 0, "modes": ["paper", "standard"]}
    assert res["gates"]["count"] == {"day": 1, "night": 2}
    assert res["gates"]["fired_fraction"]["night"]["mole_fg"] == [0.0, 1.0, 0.5, 0.5]
    # share of the gate mass: the mean gate vector per tag and over all pairs; day vs night total variation
    assert res["gates"]["share"]["night"]["mole_fg"] == pytest.approx([0.0, 0.5, 0.25, 0.25])
    assert res["gates"]["share"]["all"]["mole_bg"] == pytest.approx([5 / 6, 1 / 6, 0.0, 0.0])
    assert res["gates"]["tv_day_night"]["mole_fg"] == pytest.approx(0.75)
    assert res["gates"]["tv_day_night"]["moge"] == 0.0  # every pair routed to expert 1
    md = (rep / "report.md").read_text()
    assert "## paper mode" in md and "## standard mode" in md and "| best |" in md
    assert "| SCD |" in md and "expert" in md
    assert "| mole_fg | night (2) | 0.0% | 50.0% | 25.0% | 25.0% |" in md and "mole_fg 0.750" in md
    for name in ("metrics_paper.png", "metrics_standard.png", "per_image_paper.png", "per_image_standard.png",
                 "gates.png"):
        assert (rep / name).read_bytes()[:8] == PNG_MAGIC, name
    printed = capsys.readouterr().out
    assert "scored 3/3 pairs" in printed and "[paper mode]" in printed


def test_evaluate_skips_and_counts_bad_pairs(dataset: Path, data_dir: Path, capsys):
    msrs = data_dir / "msrs"
    # a pair with no fused image
    for side in ("ir", "vis"):
        shutil.copy(msrs / side / "00095D.png", dataset / side / "set_b" / "00095D.png")
    # a fused image at the wrong size
    for side in ("ir", "vis"):
        shutil.copy(msrs / side / "00012N.png", dataset / side / "set_b" / "00012N.png")
    write_image(dataset / "fused" / "set_b" / "00012N.png", np.zeros((240, 320), np.uint8))
    # a corrupt fused PNG
    for side in ("ir", "vis"):
        shutil.copy(msrs / side / "00016N.png", dataset / side / "set_b" / "00016N.png")
    (dataset / "fused" / "set_b" / "00016N.png").write_bytes(PNG_MAGIC + b"garbage" * 10)
    out, rep = dataset / "out.json", dataset / "report"
    rc = main(_args(dataset, "--mode", "paper", "--json", str(out), "--report", str(rep)))
    assert rc == 1
    res = json.loads(out.read_text())
    assert "standard" not in res and "baselines" not in res
    assert res["summary"] == {"pairs": 5, "scored": 3, "skipped": 3, "modes": ["paper"]}
    reasons = {s["stem"]: s["reason"] for s in res["skipped"]}
    assert set(reasons) == {"set_b/00095D", "set_b/00012N", "set_b/00016N"}
    assert "missing in fused" in reasons["set_b/00095D"]
    assert "320×240" in reasons["set_b/00012N"] and "640×480" in reasons["set_b/00012N"]
    assert "decodable" in reasons["set_b/00016N"]
    assert len(res["paper"]["per_image"]) == 3
    err = capsys.readouterr().err
    assert "set_b/00016N" in err and "set_b/00012N" in err
    md = (rep / "report.md").read_text()  # without baselines: the method alone, skipped pairs listed
    assert "## paper mode" in md and "standard mode" not in md and "`set_b/00012N`" in md
    assert (rep / "per_image_paper.png").read_bytes()[:8] == PNG_MAGIC


def test_evaluate_nothing_scorable_or_missing_folder(dataset: Path, tmp_path: Path):
    shutil.rmtree(dataset / "fused")
    (dataset / "fused").mkdir()
    assert main(_args(dataset, "--mode", "paper")) == 2
    assert main(["evaluate", "--fused", str(tmp_path / "nope"), "--ir", str(dataset / "ir"),
                 "--vis", str(dataset / "vis"), "--no-progress"]) == 2
    assert main(_args(dataset, "--detections", str(dataset))) == 2  # detections without ground truth


def test_evaluate_with_labels_and_detections(dataset: Path):
    labels, dets = dataset / "labels", dataset / "fused" / "detections"
    (labels / "set_a").mkdir(parents=True)
    (dataset / "classes.txt").write_text("person\ncar\n")  # beside the label folder, as in the shared layout
    (labels / "set_a" / "00004N.txt").write_text("0 0.5 0.5 0.25 0.5\n1 0.1 0.1 0.1 0.1\n")
    (dets / "set_a" / "00004N.json").write_text(json.dumps({"width": 640, "height": 480, "detections": [
        {"box": [240, 120, 400, 360], "class_id": 0, "class_name": "person", "score": 0.9},
        {"box": [240, 120, 400, 360], "class_id": 0, "class_name": "person", "score": 0.5}]}))
    out = dataset / "out.json"
    assert main(_args(dataset, "--mode", "standard", "--labels", str(labels), "--json", str(out))) == 0
    det = json.loads(out.read_text())["detection"]
    assert det["images"] == 1 and det["problems"] == []
    assert det["per_class"]["person"] == {"AP": 1.0, "num_gt": 1, "num_det": 2}  # duplicate after the hit
    assert det["per_class"]["car"]["AP"] == 0.0
    assert det["mAP50"] == pytest.approx(0.5)
    # the duplicate is a false positive, the car a miss: best F1 keeps only the 0.9 box (P 1, R 0.5)
    assert det["best_f1"] == {"threshold": 0.9, "tp": 1, "fp": 0, "fn": 1, "precision": 1.0, "recall": 0.5,
                              "f1": pytest.approx(2 / 3)}
    assert main(_args(dataset, "--mode", "standard", "--labels", str(labels), "--json", str(out),
                      "--score-threshold", "0.4")) == 0
    at = json.loads(out.read_text())["detection"]["at_threshold"]
    assert (at["threshold"], at["tp"], at["fp"], at["fn"]) == (0.4, 1, 1, 1) and at["precision"] == 0.5


def test_detection_protocol_smoke(tmp_path: Path, data_dir: Path):
    src = data_dir / "llvip_det"
    stems = sorted(p.stem for p in (src / "labels").glob("*.txt"))[:3]
    for side in ("ir", "vis"):
        (tmp_path / "data" / side).mkdir(parents=True)
    (tmp_path / "data" / "labels").mkdir()
    shutil.copy(src / "classes.txt", tmp_path / "data" / "classes.txt")
    for s in stems:
        shutil.copy(src / "ir" / f"{s}.png", tmp_path / "data" / "ir" / f"{s}.png")
        vis = next((src / "vis").glob(f"{s}.*"))
        shutil.copy(vis, tmp_path / "data" / "vis" / vis.name)
        shutil.copy(src / "labels" / f"{s}.txt", tmp_path / "data" / "labels" / f"{s}.txt")
        ir = read_ir(src / "ir" / f"{s}.png")
        write_image(tmp_path / "fused" / f"{s}.png", np.maximum(ir, to_grey_u8(read_image(vis))))
    out = tmp_path / "det.json"
    rc = main(["detection-protocol", "--data", str(tmp_path / "data"), "--fused", str(tmp_path / "fused"),
               "--steps", "2", "--size", "96", "--device", "cpu", "--json", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    n_boxes = sum(len((src / "labels" / f"{s}.txt").read_text().split()) // 5 for s in stems)
    assert set(res["results"]) == {"ir", "vis", "fused"}
    for r in res["results"].values():
        assert r["per_class"]["person"]["num_gt"] == n_boxes
        assert 0.0 <= r["mAP50"] <= 1.0
    assert res["test_frames"] == stems and math.isfinite(res["final_loss"])
    # a fused folder missing a frame: that frame is skipped, the others evaluated, exit code 1
    (tmp_path / "fused" / f"{stems[0]}.png").unlink()
    rc = main(["detection-protocol", "--data", str(tmp_path / "data"), "--fused", str(tmp_path / "fused"),
               "--steps", "1", "--size", "64", "--device", "cpu", "--json", str(out), "--no-progress"])
    assert rc == 1
    res = json.loads(out.read_text())
    assert res["test_frames"] == stems[1:] and len(res["skipped"]) == 1
