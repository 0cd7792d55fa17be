"""Contact sheets and the HTML report (``moe_fusion_core.report``), and ``moe-fusion fuse --html-report``."""

from __future__ import annotations

import csv
import html
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from content import assert_real_picture

from moe_fusion_core.engine import DEFAULT_MODEL_DIR
from moe_fusion_core.image_io import read_ir, read_vis, rgb_to_luma
from moe_fusion_core.metrics.fusion import score_all
from moe_fusion_core.report import CHART_HEIGHT, PANEL_HEIGHT, contact_sheet, draw_detections, place_labels
from moe_fusion_ros.cli import main

BOX = (255, 64, 0)


@pytest.fixture(scope="module")
def pair(sample_dir):
    """A real night pair of the sample (640×480), thermal and visible RGB."""
    stem = "0111_1803_0000"
    return read_ir(sample_dir / "pairs" / "ir" / f"{stem}.png"), read_vis(sample_dir / "pairs" / "vis" / f"{stem}.png")


def _bar_height(chart: np.ndarray, x: int, colour: tuple[int, int, int]) -> int:
    return int(np.all(chart[:, x] == colour, axis=1).sum())


def test_contact_sheet_shows_thermal_visible_fused_boxes_and_gate_bars(pair):
    ir, vis = pair
    fused = np.maximum(ir, rgb_to_luma(vis))
    person = SimpleNamespace(box=(100.0, 120.0, 300.0, 400.0), class_name="person", score=0.9)
    gates = {"mole_fg": np.array([0.75, 0.25, 0, 0]), "mole_bg": np.array([0, 0, 0.5, 0.5]),
             "moge": np.array([0, 0, 0, 1.0])}
    sheet = contact_sheet(ir, vis, fused, [person], gates, title="night pair")
    top, w = 24 + 20, 320  # title line, caption bar; 640×480 panels scaled to 320×240
    assert sheet.dtype == np.uint8 and sheet.shape == (top + PANEL_HEIGHT + CHART_HEIGHT, 4 * w + 3 * 4, 3)
    panels = [sheet[top:top + PANEL_HEIGHT, k * (w + 4):k * (w + 4) + w] for k in range(4)]
    small = {name: cv2.resize(a, (w, PANEL_HEIGHT), interpolation=cv2.INTER_AREA) for name, a in
             (("ir", ir), ("vis", vis), ("fused", fused))}
    np.testing.assert_array_equal(panels[0], np.repeat(small["ir"][:, :, None], 3, axis=2))
    np.testing.assert_array_equal(panels[1], small["vis"])
    np.testing.assert_array_equal(panels[2], np.repeat(small["fused"][:, :, None], 3, axis=2))
    # the box, at half scale, in the fourth panel only
    assert np.all(panels[3][60, 60:140] == BOX) and np.all(panels[3][80:180, 50] == BOX)
    assert not np.any(np.all(panels[2][60, 60:140] == BOX, axis=1))
    assert np.array_equal(panels[3][150:230, 200:300], panels[2][150:230, 200:300])  # away from the box: same
    # gate bars: heights in proportion to the weights, zero weights draw nothing
    chart = sheet[-CHART_HEIGHT:]
    group = chart.shape[1] / 3
    slot = (round(group) - 20) / 4
    fg = [_bar_height(chart, round(10 + e * slot + slot / 2), (230, 120, 40)) for e in range(4)]
    assert fg[0] == pytest.approx(3 * fg[1], abs=3) and fg[2] == fg[3] == 0 and fg[0] > 50
    moge = [_bar_height(chart, round(2 * group) + 10 + round(e * slot + slot / 2), (120, 190, 80)) for e in range(4)]
    assert moge[:3] == [0, 0, 0] and moge[3] == pytest.approx(fg[0] / 0.75, abs=2)


def test_labels_of_a_crowd_never_cover_each_other_and_stay_in_the_image():
    """Four people side by side with tops at one height (the README picture's crowd): every label readable."""
    boxes = [(300 + 25 * k, 100 + 3 * k, 340 + 25 * k, 300) for k in range(4)] + [(600, 0, 640, 50)]
    sizes = [(120, 18)] * 5
    rects = place_labels(boxes, sizes, (480, 640))
    for i, (x, y, w, h) in enumerate(rects):
        assert x >= 0 and x + w <= 640 and y >= 0 and y + h <= 480, rects[i]
        for o in rects[:i]:
            assert not (x < o[0] + o[2] and o[0] < x + w and y < o[1] + o[3] and o[1] < y + h), (rects[i], o)
    assert rects[0][1] + rects[0][3] <= boxes[0][1]  # the first (most confident) label sits above its box


def test_drawn_labels_sit_on_dark_plates_and_the_most_confident_box_keeps_the_place_above_it():
    img = np.full((240, 320, 3), 200, np.uint8)
    dets = [SimpleNamespace(box=(100.0, 80.0, 140.0, 200.0), class_name="person", score=0.6, track_id=3),
            SimpleNamespace(box=(110.0, 82.0, 150.0, 200.0), class_name="person", score=0.9, track_id=4)]
    out = draw_detections(img, dets)
    assert np.array_equal(img, np.full_like(img, 200))  # the input is not drawn on
    strip = out[62:78, 112:150]  # just above the 0.9 box: its label plate (dark) with text
    assert (strip.max(axis=2) < 30).mean() > 0.4 and (strip[..., 0] > 200).any()


@pytest.fixture(scope="module")
def small_pairs(sample_dir, tmp_path_factory) -> Path:
    """Three sample pairs (day and night) at a quarter of their size, with the sample's meta.csv beside them."""
    root = tmp_path_factory.mktemp("pairs")
    for stem in ("0111_1753_0000", "0111_1803_0000", "0117_1620_v0287"):
        for side in ("ir", "vis"):
            img = cv2.imread(str(sample_dir / "pairs" / side / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
            (root / side).mkdir(exist_ok=True)
            cv2.imwrite(str(root / side / f"{stem}.png"), cv2.resize(img, (160, 120), interpolation=cv2.INTER_AREA))
    shutil.copy(sample_dir / "pairs" / "meta.csv", root / "meta.csv")
    return root


def fuse_with_report(small_pairs: Path, out: Path, pages: Path) -> int:
    """``moe-fusion fuse --html-report`` of the three small pairs with the shipped model."""
    return main(["fuse", "--ir", str(small_pairs / "ir"), "--vis", str(small_pairs / "vis"), "--out", str(out),
                 "--checkpoint", str(DEFAULT_MODEL_DIR), "--device", "cpu", "--no-progress", "--html-report",
                 str(pages)])


def test_fuse_html_report_shows_every_pair_with_latency_and_its_metrics(small_pairs, tmp_path, capsys):
    """The shipped model (real fused images): each pair's metric row is the metric module's score of the written
    fused image, and the page's mean row is the mean of those rows."""
    out, pages = tmp_path / "fused", tmp_path / "html"
    rc = fuse_with_report(small_pairs, out, pages)
    assert rc == 0
    assert f"report: {pages / 'index.html'}" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["html_report"] == str(pages / "index.html")
    assert {"read", "inference", "fuse", "write", "total"} <= set(summary["latency_ms"])
    assert all(v["count"] == 3 and v["p95_ms"] >= v["p50_ms"] > 0 for v in summary["latency_ms"].values())
    page = (pages / "index.html").read_text()
    tags = {r["stem"]: r["light"] for r in csv.DictReader((small_pairs / "meta.csv").read_text().splitlines())}
    rows = []
    for stem in ("0111_1753_0000", "0111_1803_0000", "0117_1620_v0287"):
        sheet = cv2.imread(str(pages / "sheets" / f"{stem}.jpg"))
        assert sheet.shape == (24 + 20 + PANEL_HEIGHT + CHART_HEIGHT, 4 * 320 + 3 * 4, 3)
        assert f"src='sheets/{stem}.jpg'" in page
        assert f"{stem} · {tags[stem]} · " in page  # the caption carries the day/night tag of meta.csv
        # the metric row is the score of the written fused image against the sources
        fused = cv2.imread(str(out / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        ir, vis = read_ir(small_pairs / "ir" / f"{stem}.png"), read_vis(small_pairs / "vis" / f"{stem}.png")
        assert_real_picture(fused, ir, vis)
        s = score_all(fused, ir, rgb_to_luma(vis), "paper")
        rows.append(s)
        assert f"<tr><td>{html.escape(stem)}</td><td>{s['EN']:.3g}</td><td>{s['SF']:.3g}</td>" in page
    mean = {k: np.mean([r[k] for r in rows]) for k in ("EN", "SF")}
    assert f"<tr><td>mean</td><td>{mean['EN']:.3g}</td><td>{mean['SF']:.3g}</td>" in page
    for stage in ("read", "inference", "total"):
        assert f"<td>{stage}</td>" in page


def test_a_pair_whose_metrics_cannot_be_scored_makes_fuse_exit_1_and_is_named(small_pairs, tmp_path, capsys,
                                                                              monkeypatch):
    import re

    import moe_fusion_core.metrics.fusion as fm

    calls = []

    def second_pair_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise FloatingPointError("a metric bug")
        return score_all(*args, **kwargs)

    monkeypatch.setattr(fm, "score_all", second_pair_fails)
    out = tmp_path / "fused"
    assert fuse_with_report(small_pairs, out, tmp_path / "html") == 1
    m = re.search(r"error: fusion metrics: scoring pair (\S+) failed: FloatingPointError: a metric bug",
                  capsys.readouterr().err)
    assert m and (small_pairs / "ir" / f"{m.group(1)}.png").is_file()  # a real pair's name
    assert len(list(out.glob("*.png"))) == 3  # the outputs are still written


def test_html_report_onto_an_existing_file_is_refused_and_the_file_kept(small_pairs, untrained_model, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    rc = main(["fuse", "--ir", str(small_pairs / "ir"), "--vis", str(small_pairs / "vis"), "--out",
               str(tmp_path / "fused"), "--checkpoint", str(untrained_model), "--device", "cpu", "--no-progress",
               "--html-report", str(target)])
    assert rc == 2 and "exists and is not a folder" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_replay_html_report_onto_a_file_is_refused_before_the_output_bag_is_replaced(sample_dir, untrained_model,
                                                                                    tmp_path, capsys):
    out = tmp_path / "fused"
    out.mkdir()
    (out / "metadata.yaml").write_text("an earlier output bag, which --overwrite would replace")
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    rc = main(["replay", str(sample_dir / "bag"), "--out", str(out), "--overwrite", "--checkpoint",
               str(untrained_model), "--device", "cpu", "--no-progress", "--html-report", str(target)])
    assert rc == 2 and "exists and is not a folder" in capsys.readouterr().err
    assert target.read_text() == "keep me" and (out / "metadata.yaml").is_file()
