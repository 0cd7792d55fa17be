"""Thermal → RGB registration: homography estimation from point pairs, warping, the aspect check, the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from moe_fusion_core.image_io import read_ir, read_vis
from moe_fusion_core.registration import (
    RegistrationError,
    check_resizable,
    estimate_homography,
    warp_to_rgb,
)
from moe_fusion_ros.cli import main as cli
from moe_fusion_ros.params import load_params_file, validate

# a side-by-side rig: the thermal camera sees a wider field at lower resolution, slightly rotated and offset
H_TRUE = np.array([[1.21, 0.04, -30.0], [-0.03, 1.19, -12.0], [0.00002, 0.00001, 1.0]])


def clicked_points(w: int, h: int, noise_px: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.linspace(40, w - 40, 4), np.linspace(40, h - 40, 3))
    th = np.stack([xs.ravel(), ys.ravel()], 1)
    hom = np.c_[th, np.ones(len(th))] @ H_TRUE.T
    rgb = hom[:, :2] / hom[:, 2:]
    return th, rgb + np.random.default_rng(0).normal(0, noise_px, rgb.shape)


def test_homography_from_clicked_points_recovers_the_rig(data_dir):
    ir = read_ir(sorted((data_dir / "msrs" / "ir").iterdir())[0])
    h, w = ir.shape
    th, rgb = clicked_points(w, h, noise_px=0.5)  # half-pixel clicking error
    est, err = estimate_homography(th, rgb)
    assert err.max() < 2.0
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], float)
    a, b = corners @ H_TRUE.T, corners @ est.T
    assert np.abs(a[:, :2] / a[:, 2:] - b[:, :2] / b[:, 2:]).max() < 3.0  # within 3 px over the whole frame
    warped = warp_to_rgb(ir, est, (w, h))
    exact = warp_to_rgb(ir, H_TRUE, (w, h))
    inside = exact > 0
    assert np.abs(warped[inside].astype(int) - exact[inside]).mean() < 4.0


def test_bad_point_sets_are_refused_by_name():
    th, rgb = clicked_points(640, 480)
    with pytest.raises(RegistrationError, match="at least 4"):
        estimate_homography(th[:3], rgb[:3])
    with pytest.raises(RegistrationError, match="12 thermal points but 11"):
        estimate_homography(th, rgb[:11])


def test_resizing_refuses_different_aspect_ratios():
    check_resizable((512, 640), (1024, 1280))  # same aspect: a resize is a registration
    with pytest.raises(RegistrationError, match=r"registration\.homography"):
        check_resizable((512, 640), (1080, 1920))


def test_register_cli_writes_a_parameter_file_the_node_accepts(data_dir, tmp_path, capsys):
    stem = sorted((data_dir / "msrs" / "ir").iterdir())[0].name
    th, rgb = clicked_points(640, 480)
    pts = tmp_path / "points.csv"
    pts.write_text("thermal_x,thermal_y,rgb_x,rgb_y\n" + "\n".join(",".join(f"{v:.3f}" for v in (*a, *b))
                                                                     for a, b in zip(th, rgb)) + "\n")
    out, prev = tmp_path / "registration.yaml", tmp_path / "check.png"
    assert cli(["register", "--points", str(pts), "--out", str(out), "--thermal",
                str(data_dir / "msrs" / "ir" / stem), "--rgb", str(data_dir / "msrs" / "vis" / stem),
                "--preview", str(prev)]) == 0
    values = load_params_file(out)
    p = validate(values)
    assert np.allclose(np.reshape(p.homography(), (3, 3)), H_TRUE / H_TRUE[2, 2], rtol=1e-3, atol=1e-3)
    assert read_vis(prev).shape == (480, 640, 3)
    assert "reprojection error" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("1 2 3\n")
    assert cli(["register", "--points", str(bad)]) == 2
    assert "expected 4 numbers" in capsys.readouterr().err
