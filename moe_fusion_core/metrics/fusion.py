"""The eight fusion metrics of the paper's Table 1 (EN, SF, SD, MI, VIF, AG, SCD, Q_abf), per image.

Exact definitions: ``../shared/design/fusion_metrics.md`` (summary in ``docs/evaluation.md``). Two modes:

- ``paper``: what the MATLAB toolbox Linfeng-Tang/Evaluation-for-Image-Fusion (2022-05-02) returned for
  ``imread`` uint8 images, uint8-arithmetic quirks included; reproduces the published scales.
- ``standard``: the conventional float definitions (SD and SF on [0,255], no MI bin merging, no uint8
  saturation in VIF, Q_abf on [0,255]).

Inputs: 2-D grey images on the 8-bit scale (``uint8``; ``uint16`` is scaled by 1/257; floats are taken on the
[0,255] scale), or H×W×3 RGB images, converted with MATLAB ``rgb2gray`` weights and rounded. Everything is
quantised to ``uint8`` before scoring, as a saved fused image would be. Argument order: (fused, ir, vis).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Literal

import cv2
import numpy as np

Mode = Literal["paper", "standard"]
MODES: tuple[str, ...] = ("paper", "standard")
METRIC_NAMES: tuple[str, ...] = ("EN", "SF", "SD", "MI", "VIF", "AG", "SCD", "Qabf")

# MATLAB rgb2gray: first row of inv(YIQ matrix) -> 0.298936, 0.587043, 0.114021.
RGB2GRAY = np.linalg.inv(np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]]))[0]


def _round_half_up(x: np.ndarray) -> np.ndarray:
    """MATLAB rounding (half away from zero) for non-negative values."""
    return np.floor(x + 0.5)


def to_grey_u8(img: np.ndarray, name: str = "image") -> np.ndarray:
    """An image as the 2-D ``uint8`` grey array the metrics score (see the module docstring)."""
    a = np.asarray(img)
    if a.size == 0:
        raise ValueError(f"{name}: empty image (shape {a.shape})")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name}: unsupported pixel type {a.dtype}")
    if a.dtype == np.uint16:
        a = _round_half_up(a / 257.0)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        a = _round_half_up(np.clip(a[:, :, :3].astype(np.float64), 0, 255) @ RGB2GRAY)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected H×W grey or H×W×3 RGB, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    f = a.astype(np.float64)
    if not np.isfinite(f).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return _round_half_up(np.clip(f, 0, 255)).astype(np.uint8)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown metric mode {mode!r} (paper | standard)")


# ---------------------------------------------------------------------------------------------- single image


def entropy(f: np.ndarray) -> float:
    """EN: Shannon entropy (bits) of the 256-bin histogram (same in both modes)."""
    return _entropy_of_counts(np.bincount(to_grey_u8(f).ravel(), minlength=256))


def _entropy_of_counts(h: np.ndarray) -> float:
    p = h[h > 0] / h.sum()
    return float(-(p * np.log2(p)).sum())


def spatial_frequency(f: np.ndarray, mode: Mode = "paper") -> float:
    """SF: sqrt(mean(Δrow²) + mean(Δcol²)); on F/255 in ``paper`` mode, on [0,255] in ``standard``."""
    _check_mode(mode)
    x = to_grey_u8(f).astype(np.float64)
    if mode == "paper":
        x = x / 255.0
    with np.errstate(invalid="ignore"):
        rf = np.mean(np.diff(x, axis=0) ** 2) if x.shape[0] > 1 else 0.0
        cf = np.mean(np.diff(x, axis=1) ** 2) if x.shape[1] > 1 else 0.0
    return float(math.sqrt(rf + cf))


def standard_deviation(f: np.ndarray, mode: Mode = "paper") -> float:
    """SD: population standard deviation on [0,255]; ``paper`` mode in the toolbox's uint8 arithmetic."""
    _check_mode(mode)
    x = to_grey_u8(f).astype(np.float64)
    mu = x.mean()
    if mode == "standard":
        return float(np.sqrt(np.mean((x - mu) ** 2)))
    d = np.clip(_round_half_up(x - mu), 0, 255)  # uint8(F) - double: rounded, saturated
    return float(np.sqrt(np.minimum(d * d, 255.0).sum() / x.size))  # uint8 square saturates at 255


def average_gradient(f: np.ndarray) -> float:
    """AG: MATLAB ``gradient`` on [0,255]; Σ sqrt((gx²+gy²)/2) / ((M−1)(N−1)) (same in both modes)."""
    x = to_grey_u8(f).astype(np.float64)
    m, n = x.shape
    gy = np.gradient(x, axis=0) if m > 1 else np.zeros_like(x)
    gx = np.gradient(x, axis=1) if n > 1 else np.zeros_like(x)
    denom = (m - 1) * (n - 1)
    if denom == 0:
        return float("nan")
    return float(np.sqrt((gx * gx + gy * gy) / 2.0).sum() / denom)


# ------------------------------------------------------------------------------------------- against sources


def _mi(x: np.ndarray, f: np.ndarray, hx: float, hf: float, paper: bool) -> float:
    if paper:  # toolbox joint histogram index uint8(v)+1 saturates: levels 254 and 255 share a bin
        x, f = np.minimum(x, 254), np.minimum(f, 254)
    joint = np.bincount(x.ravel().astype(np.int64) * 256 + f.ravel(), minlength=65536)
    return hx + hf - _entropy_of_counts(joint)


def mutual_information(f: np.ndarray, ir: np.ndarray, vis: np.ndarray, mode: Mode = "paper") -> float:
    """MI: MI(F,IR) + MI(F,VIS) in bits over 256 levels, MI = H(X) + H(F) − H(X,F)."""
    _check_mode(mode)
    fu, iu, vu = _triple(f, ir, vis)
    return _mi_u8(fu, iu, vu, mode)


def _mi_u8(fu: np.ndarray, iu: np.ndarray, vu: np.ndarray, mode: str) -> float:
    hf = _entropy_of_counts(np.bincount(fu.ravel(), minlength=256))
    paper = mode == "paper"
    total = 0.0
    for src in (iu, vu):
        hs = _entropy_of_counts(np.bincount(src.ravel(), minlength=256))
        total += _mi(src, fu, hs, hf, paper)
    return float(total)


def _gauss1d(n: int) -> np.ndarray:
    """1-D factor of MATLAB ``fspecial('gaussian', n, n/5)`` (separable; the eps cut never fires here)."""
    s = n / 5.0
    r = np.arange(n) - (n - 1) / 2.0
    g = np.exp(-(r * r) / (2 * s * s))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``filter2(g gᵀ, x, 'valid')`` for a symmetric separable kernel; stacks of images along axis 0."""
    n = g.size
    h, w = x.shape[-2] - n + 1, x.shape[-1] - n + 1
    if h <= 0 or w <= 0:
        return np.zeros((*x.shape[:-2], max(h, 0), max(w, 0)))
    c = (n - 1) // 2
    flat = x.reshape(-1, *x.shape[-2:])
    out = np.empty((flat.shape[0], h, w))
    for i, a in enumerate(flat):  # OpenCV's separable filter: ~3× faster than scipy.ndimage here
        out[i] = cv2.sepFilter2D(np.ascontiguousarray(a), cv2.CV_64F, g, g,
                                 borderType=cv2.BORDER_REFLECT)[c:c + h, c:c + w]
    return out.reshape(*x.shape[:-2], h, w)


def _vifp_sum(refs: list[np.ndarray], dist: np.ndarray, paper: bool) -> float:
    """Σ over ``refs`` of the Sheikh–Bovik pixel-domain VIF of ``dist`` against each reference."""
    sigma_nsq = 2.0
    k = len(refs)
    r = np.stack([a.astype(np.float64) for a in refs])
    d = dist.astype(np.float64)
    num = np.zeros(k)
    den = np.zeros(k)
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        g = _gauss1d(n)
        if scale > 1:
            r = _filter_valid(r, g)[..., ::2, ::2]
            d = _filter_valid(d, g)[..., ::2, ::2]
        if paper and scale == 1:  # products of uint8 arrays saturate at 255
            rr, dd, rd = np.minimum(r * r, 255.0), np.minimum(d * d, 255.0), np.minimum(r * d, 255.0)
        else:
            rr, dd, rd = r * r, d * d, r * d
        stack = np.concatenate([r, d[None], rr, dd[None], rd])
        filt = _filter_valid(stack, g)
        if filt.shape[-1] == 0 or filt.shape[-2] == 0:
            continue
        mu1, mu2 = filt[:k], filt[k]
        e11, e22, e12 = filt[k + 1:2 * k + 1], filt[2 * k + 1], filt[2 * k + 2:]
        s1 = np.maximum(e11 - mu1 * mu1, 0.0)
        s2 = np.maximum(e22 - mu2 * mu2, 0.0)[None]
        s12 = e12 - mu1 * mu2
        gain = s12 / (s1 + 1e-10)
        sv = s2 - gain * s12
        low1 = s1 < 1e-10
        gain[low1] = 0.0
        sv = np.where(low1, s2, sv)
        s1 = np.where(low1, 0.0, s1)
        low2 = np.broadcast_to(s2 < 1e-10, gain.shape)
        gain[low2] = 0.0
        sv[low2] = 0.0
        neg = gain < 0
        sv = np.where(neg, s2, sv)
        gain[neg] = 0.0
        sv = np.maximum(sv, 1e-10)
        num += np.log10(1 + gain * gain * s1 / (sv + sigma_nsq)).sum(axis=(-2, -1))
        den += np.log10(1 + s1 / sigma_nsq).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return float((num / den).sum())


def visual_information_fidelity(f: np.ndarray, ir: np.ndarray, vis: np.ndarray, mode: Mode = "paper") -> float:
    """VIF: vifp(IR,F) + vifp(VIS,F), 4 scales (Gaussian N = 17, 9, 5, 3, σ = N/5), σn² = 2.

    NaN when the image is too small for any scale (fewer than 17 rows or columns).
    """
    _check_mode(mode)
    fu, iu, vu = _triple(f, ir, vis)
    return _vifp_sum([iu, vu], fu, mode == "paper")


def _corr2(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def scd(f: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """SCD: corr2(F − VIS, IR) + corr2(F − IR, VIS); NaN when F equals a source exactly (0/0)."""
    fu, iu, vu = _triple(f, ir, vis)
    return _scd_u8(fu, iu, vu)


def _scd_u8(fu: np.ndarray, iu: np.ndarray, vu: np.ndarray) -> float:
    fd, idd, vd = fu.astype(np.float64), iu.astype(np.float64), vu.astype(np.float64)
    return _corr2(fd - vd, idd) + _corr2(fd - idd, vd)


def _sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``conv2(x, h, 'same')`` with zero padding for the horizontal (h3) and vertical (h1) Sobel kernels.

    The terms are added in the order that best reproduces the toolbox's exact-zero tests on [0,1] data (kernel
    columns last to first, rows top to bottom; found by matching the design note's Q_abf test vectors).
    """
    p = np.pad(x, 1)
    tl, tc, tr = p[:-2, :-2], p[:-2, 1:-1], p[:-2, 2:]
    ml, mr = p[1:-1, :-2], p[1:-1, 2:]
    bl, bc, br = p[2:, :-2], p[2:, 1:-1], p[2:, 2:]
    # h3 = [-1 0 1; -2 0 2; -1 0 1] (conv2 flips it): left column minus right column
    sx = bl + 2 * ml + tl - br - 2 * mr - tr
    # h1 = [1 2 1; 0 0 0; -1 -2 -1]: bottom row minus top row
    sy = bl - tl + 2 * bc - 2 * tc + br - tr
    return sx, sy


def _strength_orientation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sx, sy = _sobel(x)
    g = np.sqrt(sx * sx + sy * sy)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(sx == 0, np.pi / 2, np.arctan(sy / sx))
    return g, a


def _qabf_u8(fu: np.ndarray, iu: np.ndarray, vu: np.ndarray, mode: str) -> float:
    tg, kg, dg, ta, ka, da = 0.9994, -15.0, 0.5, 0.9879, -22.0, 0.8
    scale = 255.0 if mode == "paper" else 1.0
    gf, af = _strength_orientation(fu.astype(np.float64) / scale)
    nume = 0.0
    deno = 0.0
    for src in (iu, vu):
        g, a = _strength_orientation(src.astype(np.float64) / scale)
        with np.errstate(divide="ignore", invalid="ignore"):
            # toolbox quirk: where g_A == g_F the strength ratio is g_F instead of 1
            ratio = np.where(g > gf, gf / g, np.where(g == gf, gf, g / gf))
        ang = 1 - np.abs(a - af) / (np.pi / 2)
        q = tg / (1 + np.exp(kg * (ratio - dg))) * (ta / (1 + np.exp(ka * (ang - da))))
        nume += float((q * g).sum())
        deno += float(g.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float64(nume) / np.float64(deno))


def qabf(f: np.ndarray, ir: np.ndarray, vis: np.ndarray, mode: Mode = "paper") -> float:
    """Q_abf (Xydeas–Petrovic edge preservation), Sobel 3×3, on [0,1] (``paper``) or [0,255] (``standard``).

    NaN when neither source has any edge (a constant pair).
    """
    _check_mode(mode)
    return _qabf_u8(*_triple(f, ir, vis), mode)


# --------------------------------------------------------------------------------------------------- all eight


def _triple(f: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fu, iu, vu = to_grey_u8(f, "fused"), to_grey_u8(ir, "ir"), to_grey_u8(vis, "vis")
    if not (fu.shape == iu.shape == vu.shape):
        raise ValueError(f"size mismatch: fused {fu.shape[1]}×{fu.shape[0]}, ir {iu.shape[1]}×{iu.shape[0]}, "
                         f"vis {vu.shape[1]}×{vu.shape[0]} (W×H); all three must be the same size")
    return fu, iu, vu


def score_all(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray, mode: Mode = "paper") -> dict[str, float]:
    """All eight metrics of one image: keys ``EN SF SD MI VIF AG SCD Qabf`` (values may be NaN, see above).

    Raises ``ValueError`` for empty inputs, unsupported layouts, size mismatches or an unknown mode.
    """
    _check_mode(mode)
    fu, iu, vu = _triple(fused, ir, vis)
    return {
        "EN": entropy(fu),
        "SF": spatial_frequency(fu, mode),
        "SD": standard_deviation(fu, mode),
        "MI": _mi_u8(fu, iu, vu, mode),
        "VIF": _vifp_sum([iu, vu], fu, mode == "paper"),
        "AG": average_gradient(fu),
        "SCD": _scd_u8(fu, iu, vu),
        "Qabf": _qabf_u8(fu, iu, vu, mode),
    }


# ------------------------------------------------------------------------------------------------ aggregation


def nanmean_count(values: Iterable[float]) -> tuple[float, int]:
    """Mean of the finite values and how many were NaN (mean is NaN when none is finite)."""
    arr = np.asarray(list(values), dtype=np.float64)
    nan = ~np.isfinite(arr)
    finite = arr[~nan]
    return (float(finite.mean()) if finite.size else float("nan")), int(nan.sum())


def aggregate(per_image: Mapping[str, Mapping[str, float]],
              names: Iterable[str] = METRIC_NAMES) -> tuple[dict[str, float], dict[str, int]]:
    """Per-metric means over images ignoring NaN, and per-metric NaN counts."""
    means: dict[str, float] = {}
    counts: dict[str, int] = {}
    for k in names:
        means[k], counts[k] = nanmean_count(row[k] for row in per_image.values())
    return means, counts
