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

``moe-fusion register --auto --thermal TH --rgb RGB --out YAML [--preview PNG]`` estimates ``H`` from the images
(one pair, or folders of frames of one rig paired by stem; see :mod:`moe_fusion_core.autoreg`); it prints a
confidence figure, and when the estimate cannot be trusted it writes nothing, says why and exits 3.
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


def homography_yaml(h: np.ndarray) -> str:
    """The value of ``registration.homography`` as a YAML flow list (row-major, 9 significant digits)."""
    return "[" + ", ".join(f"{v:.9g}" for v in as_matrix(h).reshape(-1)) + "]"


def params_yaml(h: np.ndarray, comment: str = "") -> str:
    """A ROS 2 parameter file setting ``registration.homography`` (load it after config/fusion.yaml)."""
    head = "".join(f"# {c}\n" for c in comment.splitlines())
    return (f"{head}/**:\n  ros__parameters:\n    registration:\n"
            f"      homography: {homography_yaml(h)}  # thermal -> RGB pixels, row-major\n")


# ---------------------------------------------------------------------- CLI
MAX_AUTO_FRAMES = 20
EXIT_REFUSED = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--points", type=Path, default=None,
                     help="text file, one pair per line: thermal_x thermal_y rgb_x rgb_y (pixels)")
    how.add_argument("--auto", action="store_true",
                     help="estimate from the images themselves (--thermal, --rgb: one pair or folders paired by "
                          "stem, frames of one rig); exit 3 and write nothing when the estimate is not confident")
    p.add_argument("--out", type=Path, default=None, help="write the parameter YAML here (default: print it)")
    p.add_argument("--thermal", type=Path, default=None, help="a thermal frame (--auto: or a folder of frames)")
    p.add_argument("--rgb", type=Path, default=None, help="the RGB frame taken with it (--auto: or a folder)")
    p.add_argument("--preview", type=Path, default=None,
                   help="write a checkerboard of the warped thermal frame over the RGB frame")


def auto_pairs(thermal: Path, rgb: Path) -> list[tuple[str, Path, Path]]:
    """(name, thermal file, RGB file) of one pair of files or of two folders paired by stem (at most 20, spread)."""
    from .image_io import pair_by_stem

    if thermal.is_dir() != rgb.is_dir():
        raise RegistrationError(f"--thermal {thermal} and --rgb {rgb}: give two files or two folders")
    if not thermal.is_dir():
        for f in (thermal, rgb):
            if not f.is_file():
                raise RegistrationError(f"{f}: no such file")
        return [(thermal.stem, thermal, rgb)]
    listing = pair_by_stem([thermal, rgb])
    if not listing.pairs:
        raise RegistrationError(f"no file stem appears in both {thermal} and {rgb}")
    pairs = listing.pairs
    if len(pairs) > MAX_AUTO_FRAMES:  # spread over the recording
        pairs = [pairs[round(i)] for i in np.linspace(0, len(pairs) - 1, MAX_AUTO_FRAMES)]
    return [(k, f[0], f[1]) for k, f in pairs]


def checkerboard(thermal: np.ndarray, rgb: np.ndarray, h: np.ndarray, tiles: int = 8) -> np.ndarray:
    """RGB image with every other tile replaced by the warped thermal image: edges must continue across tiles."""
    from .image_io import to_8bit

    ir = thermal if thermal.ndim == 2 else cv2.cvtColor(thermal, cv2.COLOR_RGB2GRAY)
    warped = warp_to_rgb(to_8bit(ir), h, (rgb.shape[1], rgb.shape[0]))
    out = rgb.copy() if rgb.ndim == 3 else cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
    rh, rw = out.shape[:2]
    side = max(8, max(rh, rw) // tiles)
    yy, xx = np.mgrid[0:rh, 0:rw]
    mask = ((yy // side + xx // side) % 2).astype(bool)
    out[mask] = warped[mask][:, None]
    return out


def _emit(text: str, out: Path | None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def _error(msg: str) -> int:
    print(f"moe-fusion register: error: {msg}", file=sys.stderr)
    return 2


JOINT_MAX_FRAMES = 10  # frame pairs of a folder that the joint estimate averages (memory and time)


def run_auto(args: argparse.Namespace) -> int:
    """``register --auto``: 0 with a confident homography written, 3 (nothing written) when refused."""
    from .autoreg import combine, estimate_joint, estimate_pair
    from .image_io import read_ir, read_vis, write_image

    if args.thermal is None or args.rgb is None:
        return _error("--auto needs --thermal and --rgb (files or folders)")
    try:
        files = auto_pairs(args.thermal, args.rgb)
    except (RegistrationError, FileNotFoundError) as e:
        return _error(str(e))
    frames, sizes = [], set()
    for name, tf, rf in files:
        th, rgb = read_ir(tf), read_vis(rf)
        sizes.add((th.shape[:2], rgb.shape[:2]))
        if len(sizes) > 1:
            return _error(f"{name}: image sizes differ from the first pair's: frames of one rig expected")
        frames.append((name, th, rgb))
    (th_shape, rgb_shape), = sizes
    first = frames[0][1:]
    est = None
    if len(frames) > 1:  # all frames' evidence for one warp first (the first JOINT_MAX_FRAMES)
        est = estimate_joint([(th, rgb) for _, th, rgb in frames[:JOINT_MAX_FRAMES]])
        print(f"joint estimate of {min(len(frames), JOINT_MAX_FRAMES)} frame pairs: {est.summary()}", file=sys.stderr)
    if est is None or not est.ok:  # else each frame alone, combined by consensus
        each = []
        for name, th, rgb in frames:
            e = estimate_pair(th, rgb)
            print(f"{name}: {e.summary()}", file=sys.stderr)
            each.append(e)
        joint, est = est, combine(each, (th_shape[1], th_shape[0]), (rgb_shape[1], rgb_shape[0]))
        if joint is not None and not est.ok:
            est.reason = f"joint estimate: {joint.reason}; per frame: {est.reason}"
    src = f"{args.thermal} + {args.rgb}"
    if not est.ok or est.h is None:
        print(f"moe-fusion register: refused, nothing written: {est.reason}", file=sys.stderr)
        return EXIT_REFUSED
    note = f"moe-fusion register --auto from {len(frames)} frame pair(s) of {src}: {est.summary()}"
    _emit(params_yaml(est.h, note), args.out)
    print(note, file=sys.stderr)
    if args.preview is not None:
        write_image(args.preview, checkerboard(*first, est.h))
        print(f"wrote {args.preview}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    from .image_io import read_ir, read_vis, write_image

    if args.auto:
        return run_auto(args)
    try:
        src, dst = read_points(args.points)
        h, err = estimate_homography(src, dst)
    except RegistrationError as e:
        return _error(str(e))
    note = (f"moe-fusion register --points {args.points}: {len(src)} point pairs, reprojection error "
            f"mean {err.mean():.2f} px, max {err.max():.2f} px")
    _emit(params_yaml(h, note), args.out)
    print(note, file=sys.stderr)
    worst = int(np.argmax(err))
    if err.max() > 3.0:
        print(f"warning: pair {worst + 1} is {err[worst]:.1f} px off; check it was clicked on the same point",
              file=sys.stderr)
    if args.preview is not None:
        if args.thermal is None or args.rgb is None:
            return _error("--preview needs --thermal and --rgb")
        write_image(args.preview, checkerboard(read_ir(args.thermal), read_vis(args.rgb), h))
        print(f"wrote {args.preview}", file=sys.stderr)
    return 0
