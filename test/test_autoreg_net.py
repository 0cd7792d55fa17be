"""The learned structure maps of automatic registration (``autoreg_net``) and their training recipe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from moe_fusion_core import autoreg, autoreg_net
from moe_fusion_core.image_io import read_ir, read_vis

REPO = Path(__file__).resolve().parents[1]


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def _maps(data_dir: Path, ds: str, stem: str, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    ir, vis = read_ir(data_dir / ds / "ir" / f"{stem}.png"), read_vis(data_dir / ds / "vis" / f"{stem}.png")
    grey = [cv2.resize(autoreg._gray(i), size, interpolation=cv2.INTER_AREA) for i in (ir, vis)]
    return autoreg_net.learned_map(grey[0], "thermal"), autoreg_net.learned_map(grey[1], "rgb")


@pytest.mark.parametrize("ds,stem", [("m3svd", "0111_1716_v0029"), ("llvip_more", "010013")])
def test_learned_maps_of_a_registered_pair_correlate_best_where_it_is_aligned(data_dir, ds, stem):
    """Day (M3SVD) and night (LLVIP) pairs the maps were not trained on: shifting the thermal map by 3 or 6 px in
    any direction lowers the correlation with the RGB map."""
    th, rgb = _maps(data_dir, ds, stem, (320, 240) if ds == "m3svd" else (320, 256))
    m = 8
    inner = rgb[m:-m, m:-m]
    aligned = _ncc(th[m:-m, m:-m], inner)
    assert aligned > 0.2
    for r in (3, 6):
        for dx, dy in ((r, 0), (-r, 0), (0, r), (0, -r), (r, r), (-r, -r)):
            shifted = th[m + dy:th.shape[0] - m + dy, m + dx:th.shape[1] - m + dx]
            assert _ncc(shifted, inner) < aligned - 0.02, (r, dx, dy)


@pytest.mark.parametrize("maps", ["gradient", "learned"])
def test_the_other_matching_maps_also_register_a_pair(data_dir, monkeypatch, maps):
    """``MAPS`` = ``"gradient"`` (the method before the learned maps) or ``"learned"`` (learned maps at every
    level) are working alternatives to the default ``"hybrid"``."""
    assert autoreg.MAPS == "hybrid"
    monkeypatch.setattr(autoreg, "MAPS", maps)
    ir, vis = read_ir(data_dir / "m3svd" / "ir" / "0111_1716_v0029.png"), read_vis(
        data_dir / "m3svd" / "vis" / "0111_1716_v0029.png")
    th, rgb, h_true = autoreg.simulate_rig(ir, vis, np.random.default_rng(3), 0.625)
    est = autoreg.estimate_pair(th, rgb)
    assert est.ok and autoreg.corner_error(est.h, h_true, th.shape[::-1]) < 4.0, est.summary()


def test_missing_weights_are_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"registration feature weights not found: .*nope\.safetensors"):
        autoreg_net.load_nets(str(tmp_path / "nope.safetensors"))


def test_a_map_is_the_size_of_its_input_for_either_modality():
    nets = autoreg_net.load_nets()
    g = cv2.GaussianBlur(np.random.default_rng(0).uniform(0, 255, (61, 83)).astype(np.float32), (0, 0), 2)
    for modality in autoreg_net.MODALITIES:
        assert autoreg_net.learned_map(g, modality, nets).shape == (61, 83)
    with pytest.raises(ValueError, match="unknown modality 'depth'"):
        autoreg_net.learned_map(g, "depth", nets)


def test_feature_training_resumes_from_its_checkpoint_and_writes_loadable_weights(data_dir, tmp_path):
    def train(*extra: str, rc: int = 0) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(REPO / "training" / "autoreg_features.py"), "--data", str(data_dir),
               "--out", str(tmp_path), "--max-pairs", "2", "--batch", "2", "--crop", "64", "--width", "4",
               "--checkpoint-every", "2", *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1",
                              "PATH": "/usr/bin:/bin"})
        assert done.returncode == rc, done.stderr[-2000:]
        return done

    train("--steps", "2")
    first = (tmp_path / "model.safetensors").read_bytes()
    refused = train("--steps", "4", "--resume", "--radii", "1,2", rc=2)  # not the run the checkpoint holds
    assert "--radii 2,3,5,8,12 (now 1,2)" in refused.stderr
    assert (tmp_path / "model.safetensors").read_bytes() == first
    out = train("--steps", "4", "--resume").stdout
    assert "resumed at step 2" in out
    assert (tmp_path / "model.safetensors").read_bytes() != first
    nets = autoreg_net.load_nets(str(tmp_path / "model.safetensors"))
    assert nets.thermal.body[0].out_channels == 4


def test_feature_training_refuses_shifts_outside_its_crop_margin_before_loading_data(tmp_path):
    cmd = [sys.executable, str(REPO / "training" / "autoreg_features.py"), "--data", str(tmp_path / "none"),
           "--out", str(tmp_path / "out"), "--radii", "1,13"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1",
                          "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "--radii 1,13: shift radii must lie in 1..12" in done.stderr
    assert not (tmp_path / "out").exists()
