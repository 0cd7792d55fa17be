"""Thermal → RGB registration for rigs whose cameras are not pixel-aligned, and ``moe-fusion register``.

MoE-Fusion expects registered pairs: pixel (x, y) of the infrared image shows the same scene point as pixel
(x, y) of the visible image. Real rigs put two lenses side by side, with different fields of view and
resolutions. For a scene far away compared with the baseline (vehicles, drones) one 3×3 homography ``H`` maps
thermal pixels to RGB pixels well enough; :func:`warp_to_rgb` applies it before fusion so that the fused image
and the detections are in the RGB camera's pixels.

Without a homography the thermal image is only resized to the RGB size (:func:`check_resizable` refuses that
when the aspect ratios differ, since a plain resize would then distort the scene).

``moe-fusion register`` estimates ``H`` from point pairs clicked in any image viewer (at least 4, better 8–12
spread over the frame, on distant objects) and writes the ROS parameter YAML::

    moe-fusion register --points points.csv --out config/registration.yaml \\
        [--thermal th.png --rgb rgb.png --preview check.png]

``points.csv``: one pair per line, ``thermal_x, thermal_y, rgb_x, rgb_y`` (a header line is allowed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

ASPECT_TOLERANCE = 0.02


class RegistrationError(ValueError):
    """A thermal image cannot be brought into the RGB image's pixels as configured."""


def as_matrix(h: Sequence[float] | np.ndarray) -> np.ndarray:
    """A 3×3 float64 matrix from 9 numbers (row-major) or a 3×3 array; checks it is an invertible homography."""
    m = np.asarray(h, np.float64).reshape(-1)
    if m.size != 9 or not np.isfinite(m).all():
        raise RegistrationError(f"a homography needs 9 finite numbers, got {m.tolist()}")
    m = m.reshape(3, 3)
    if m[2, 2] == 0 or abs(np.linalg.det(m)) < 1e-12:
        raise RegistrationError(f"not an invertible homography with H[2][2] != 0: {m.tolist()}")
    return m / m[2, 2]


def check_resizable(ir_shape: tuple[int, ...], rgb_shape: tuple[int, ...],
                    tolerance: float = ASPECT_TOLERANCE) -> None:
    """Refuse a thermal/RGB size pair whose aspect ratios differ by more than ``tolerance`` (relative)."""
    (ih, iw), (rh, rw) = ir_shape[:2], rgb_shape[:2]
    a_ir, a_rgb = iw / ih, rw / rh
    if abs(a_ir / a_rgb - 1.0) > tolerance:
        raise RegistrationError(
            f"thermal {iw}x{ih} (aspect {a_ir:.3f}) and RGB {rw}x{rh} (aspect {a_rgb:.3f}) differ by more than "
            f"{tolerance:.0%}: resizing would distort the scene; set registration.homography "
            "(estimate it with 'moe-fusion register')")


def warp_to_rgb(ir: np.ndarray, h: np.ndarray | Sequence[float], rgb_size: tuple[int, int]) -> np.ndarray:
    """The thermal image in the RGB image's pixels: ``ir`` warped by ``h`` (thermal → RGB) to ``rgb_size`` (w, h).

    RGB pixels that no thermal pixel maps to are 0 (cold/black), bilinear interpolation elsewhere."""
    w, hh = rgb_size
    return cv2.warpPerspective(np.ascontiguousarray(ir), as_matrix(h), (int(w), int(hh)), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def estimate_homography(thermal_pts: np.ndarray, rgb_pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares homography thermal → RGB from N ≥ 4 point pairs; returns ``(H, per-point error in px)``."""
    src = np.asarray(thermal_pts, np.float64).reshape(-1, 2)
    dst = np.asarray(rgb_pts, np.float64).reshape(-1, 2)
    if src.shape != dst.shape:
        raise RegistrationError(f"{len(src)} thermal points but {len(dst)} RGB points")
    if len(src) < 4:
        raise RegistrationError(f"a homography needs at least 4 point pairs, got {len(src)}")
    h, _ = cv2.findHomography(src, dst, 0)
    if h is None:
        raise RegistrationError("no homography fits these points (are 3 or more of them on one line?)")
    h = as_matrix(h)
    proj = cv2.perspectiveTransform(src.reshape(-1, 1, 2), h).reshape(-1, 2)
    return h, np.linalg.norm(proj - dst, axis=1)


def read_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``thermal_x, thermal_y, rgb_x, rgb_y`` per line (commas or spaces; ``#`` comments and a header allowed)."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            if not rows and n == 1:  # a header line
                continue
            raise RegistrationError(f"{path}:{n}: expected 4 numbers, got {line!r}") from None
        if len(vals) != 4:
            raise RegistrationError(f"{path}:{n}: expected 4 numbers (thermal_x thermal_y rgb_x rgb_y), "
                                    f"got {len(vals)}")
        rows.append(vals)
    a = np.asarray(rows, np.float64).reshape(-1, 4)
    return a[:, :2], a[:, 2:]


def params_yaml(h: np.ndarray, comment: str = "") -> str:
    """A ROS 2 parameter file setting ``registration.homography`` (load it after config/fusion.yaml)."""
    vals = ", ".join(f"{v:.9g}" for v in as_matrix(h).reshape(-1))
    head = "".join(f"# {c}\n" for c in comment.splitlines())
    return (f"{head}/**:\n  ros__parameters:\n    registration:\n"
            f"      homography: [{vals}]  # thermal -> RGB pixels, row-major\n")


def preview(thermal: np.ndarray, rgb: np.ndarray, h: np.ndarray) -> np.ndarray:
    """RGB image with the warped thermal image's edges drawn in red: a quick visual check of the fit."""
    ir = thermal if thermal.ndim == 2 else cv2.cvtColor(thermal, cv2.COLOR_RGB2GRAY)
    warped = warp_to_rgb(ir, h, (rgb.shape[1], rgb.shape[0]))
    edges = cv2.Canny(warped, 50, 150) > 0
    out = rgb.copy() if rgb.ndim == 3 else cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
    out[edges] = (255, 0, 0)
    return out


# ---------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--points", type=Path, required=True,
                   help="text file, one pair per line: thermal_x thermal_y rgb_x rgb_y (pixels)")
    p.add_argument("--out", type=Path, default=None, help="write the parameter YAML here (default: print it)")
    p.add_argument("--thermal", type=Path, default=None, help="a thermal frame, for --preview")
    p.add_argument("--rgb", type=Path, default=None, help="the RGB frame taken with it, for --preview")
    p.add_argument("--preview", type=Path, default=None, help="write the RGB frame with warped thermal edges")


def run(args: argparse.Namespace) -> int:
    from .image_io import read_ir, read_vis, write_image

    try:
        src, dst = read_points(args.points)
        h, err = estimate_homography(src, dst)
    except RegistrationError as e:
        print(f"moe-fusion register: error: {e}", file=sys.stderr)
        return 2
    note = (f"moe-fusion register --points {args.points}: {len(src)} point pairs, reprojection error "
            f"mean {err.mean():.2f} px, max {err.max():.2f} px")
    text = params_yaml(h, note)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    print(note, file=sys.stderr)
    worst = int(np.argmax(err))
    if err.max() > 3.0:
        print(f"warning: pair {worst + 1} is {err[worst]:.1f} px off; check it was clicked on the same point",
              file=sys.stderr)
    if args.preview is not None:
        if args.thermal is None or args.rgb is None:
            print("moe-fusion register: error: --preview needs --thermal and --rgb", file=sys.stderr)
            return 2
        write_image(args.preview, preview(read_ir(args.thermal), read_vis(args.rgb), h))
        print(f"wrote {args.preview}", file=sys.stderr)
    return 0
