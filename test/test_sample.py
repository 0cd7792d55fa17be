"""The sample shipped in ``sample/``: within its size budget, every file documented, and its bag replays to its
ground truth (with contact sheets and an HTML report). Needs nothing outside the clone."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np

from moe_fusion_ros.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "sample"

TH, CAM, CAM_INFO = "/thermal/image_raw", "/camera/image_raw", "/camera/camera_info"


def test_sample_fits_the_size_budget_and_every_file_is_documented_with_its_size():
    sizes = {p.relative_to(SAMPLE).as_posix(): p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file()}
    assert sum(sizes.values()) <= 5_000_000
    assert max(sizes.values()) <= 2_000_000, max(sizes, key=sizes.get)
    readme = (SAMPLE / "README.md").read_text()
    for name, size in sizes.items():
        if name != "README.md":
            assert f"| `{name}` | {size:,} |" in readme, f"{name} ({size} bytes) not in sample/README.md's table"
    for heading in ("## Source dataset", "## Licence and terms", "## Citation", "## How the files were made"):
        assert heading in readme
    assert not list(SAMPLE.rglob("__init__.py"))  # never a Python package: the wheel does not carry it


def test_sample_pairs_are_registered_day_and_night_pairs_of_one_size():
    pairs = SAMPLE / "pairs"
    stems = sorted(p.stem for p in (pairs / "ir").glob("*.png"))
    assert stems == sorted(p.stem for p in (pairs / "vis").glob("*.png")) and len(stems) >= 4
    rows = {r["stem"]: r for r in csv.DictReader((pairs / "meta.csv").read_text().splitlines())}
    assert set(rows) == set(stems)
    assert {r["light"] for r in rows.values()} == {"day", "night"}
    for s in stems:
        ir = cv2.imread(str(pairs / "ir" / f"{s}.png"), cv2.IMREAD_UNCHANGED)
        vis = cv2.imread(str(pairs / "vis" / f"{s}.png"), cv2.IMREAD_UNCHANGED)
        assert ir.ndim == 2 and ir.dtype == np.uint8 and vis.shape == (*ir.shape, 3)
        assert (int(rows[s]["width"]), int(rows[s]["height"])) == (ir.shape[1], ir.shape[0])


def test_sample_bag_replays_to_its_ground_truth_with_a_contact_sheet_per_pair(tmp_path, untrained_model):
    gt = json.loads((SAMPLE / "bag.groundtruth.json").read_text())
    exp = gt["expected"]
    out, report, pages = tmp_path / "fused", tmp_path / "report.json", tmp_path / "html"
    code = main(["replay", str(SAMPLE / "bag"), "--out", str(out), "--report", str(report), "--checkpoint",
                 str(untrained_model), "--device", "cpu", "--no-progress", "--html-report", str(pages)])
    rep = json.loads(report.read_text())
    assert code == 0
    want = sorted((p["thermal_stamp_ns"], p["rgb_stamp_ns"]) for p in gt["pairs"])
    assert sorted((p["thermal_stamp_ns"], p["rgb_stamp_ns"]) for p in rep["pair_list"]) == want
    assert rep["messages_read"] == {TH: exp["thermal_messages"], CAM: exp["rgb_messages"],
                                    CAM_INFO: exp["rgb_messages"]}
    assert rep["fused"] == exp["pairs"] and rep["failed"] == []
    assert rep["unpaired"]["count"] == exp["unpaired_thermal"] + exp["unpaired_rgb"]
    # one contact sheet per fused pair, named by the pair's RGB stamp, all shown on the page
    assert rep["html_report"] == str(pages / "index.html")
    page = (pages / "index.html").read_text()
    sheets = sorted((pages / "sheets").glob("*.jpg"))
    assert len(sheets) == exp["pairs"]
    stamps = sorted(int(re.search(r"_rgb_(\d+)\.(\d{9})", p.name).expand(r"\1\2")) for p in sheets)
    assert stamps == sorted(r for _, r in want)
    for p in sheets:
        assert f"src='sheets/{p.name}'" in page
        h, w = cv2.imread(str(p)).shape[:2]
        assert h > 240 and w > 4 * 320  # four 320-px panels (4:3 frames at 240 px) side by side, chart below
    for stage in ("decode", "inference", "total"):
        assert f"<td>{stage}</td>" in page
    assert all(f"<th>{m}</th>" in page for m in rep["metrics"]["mean"])
