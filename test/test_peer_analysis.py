"""training/peer_analysis.py: scene measures mean what they say, and a small view is analysed end to end (the peer's
metrics file must match its images)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from peer_analysis import correlations, main, noise_sigma, scene_measures

from moe_fusion_core.metrics.fusion import score_all


def _scene(seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A visible image with texture on its left half and an infrared image with one hot square."""
    rng = np.random.default_rng(seed)
    vis = np.full((size, size), 90.0)
    vis[:, : size // 2] += rng.normal(0, 40, (size, size // 2))
    ir = np.full((size, size), 60.0) + rng.normal(0, 2, (size, size))
    ir[40:50, 40:50] = 230
    return np.clip(vis, 0, 255).astype(np.uint8), np.clip(ir, 0, 255).astype(np.uint8)


def test_scene_measures_see_kept_detail_and_hot_targets():
    vis, ir = _scene(0)
    flat = np.full_like(vis, 90)
    ours = vis.copy()
    ours[40:50, 40:50] = 230
    m = scene_measures(ours, flat, ir, vis)
    assert m["vdetail_ours"] == pytest.approx(1.0) and m["vdetail_peer"] == pytest.approx(0.0, abs=1e-6)
    assert m["hot_ours"] == pytest.approx(230 / 255) and m["hot_peer"] == pytest.approx(90 / 255)
    assert m["ir_hot_share"] == pytest.approx(100 / 64**2) and m["vdetail_diff"] == pytest.approx(1.0)
    noisy = np.clip(128 + np.random.default_rng(1).normal(0, 5, (200, 200)), 0, 255).astype(np.uint8)
    assert noise_sigma(noisy) == pytest.approx(5.0, rel=0.15) and noise_sigma(np.full((50, 50), 7)) == 0.0
    x = np.arange(10.0)
    assert correlations(x, x**3) == pytest.approx((np.corrcoef(x, x**3)[0, 1], 1.0))  # Spearman: rank order only
    assert correlations(np.array([1.0, 1.0, 2.0, np.nan]), np.array([1.0, 2.0, 3.0, 4.0]))[1] == pytest.approx(
        np.corrcoef([0.5, 0.5, 2.0], [0.0, 1.0, 2.0])[0, 1])  # tied ranks averaged, NaN pairs dropped


def _view(tmp_path: Path) -> tuple[Path, Path, Path]:
    view, fused, peer = tmp_path / "view", tmp_path / "fused", tmp_path / "peer"
    rows = []
    for i, (ds, light) in enumerate([("a", "day"), ("a", "night"), ("b", "night")]):
        vis, ir = _scene(i)
        stem = f"p{i}"
        for folder, img in ((view / "vis", np.repeat(vis[:, :, None], 3, 2)), (view / "ir", ir),
                            (fused, np.maximum(vis, ir)), (peer, ((vis.astype(int) + ir) // 2).astype(np.uint8))):
            (folder / ds).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / ds / f"{stem}.png"), img)
        rows.append({"stem": stem, "light": light, "dataset": ds})
    with open(view / "meta.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["stem", "light", "dataset"])
        w.writeheader()
        w.writerows(rows)
    return view, fused, peer


def test_a_small_view_is_analysed_and_a_wrong_peer_file_refused(tmp_path, capsys):
    view, fused, peer = _view(tmp_path)
    out, sheet = tmp_path / "out", tmp_path / "sheet.jpg"
    args = ["--fused", str(fused), "--view", str(view), "--peer", str(peer), "--out", str(out)]
    assert main([*args, "--sheet", str(sheet), "--worst", "2", "--tile", "64"]) == 0
    with open(out / "per_pair.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["key"] for r in rows] == ["a/p0", "a/p1", "b/p2"]
    vis, ir = _scene(0)
    ours, theirs = score_all(np.maximum(vis, ir), ir, vis), score_all(((vis.astype(int) + ir) // 2), ir, vis)
    assert float(rows[0]["d_VIF"]) == pytest.approx(ours["VIF"] - theirs["VIF"], rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert [g["group"] for g in summary["groups"]["light"]] == ["day", "night"] and len(summary["worst_by_vif"]) == 2
    assert sheet.stat().st_size > 0 and "## correlations" in (out / "report.md").read_text()
    per_image = {r["key"]: {k[5:]: float(v) for k, v in r.items() if k.startswith("peer_")} for r in rows}
    metrics = tmp_path / "peer.json"
    per_image["a/p0"]["VIF"] += 0.01
    metrics.write_text(json.dumps({"methods": {"SeAFusion": {"paper": {"per_image": per_image}}}}))
    capsys.readouterr()
    assert main([*args, "--peer-metrics", str(metrics)]) == 1
    assert "a/p0: the peer's images do not score as its metrics file says" in capsys.readouterr().err
