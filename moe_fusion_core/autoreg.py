"""Automatic thermal → RGB registration from image content (``moe-fusion register --auto``, ``registration.auto``).

Thermal and visible images of one scene share little intensity but much *structure*: object outlines, road
edges, poles. Both images become single-channel matching maps: learned ones (:mod:`moe_fusion_core.autoreg_net`,
one small network per modality trained so that the two maps correlate where the images are aligned) and
gradient ones (:func:`structure_map`: gradient magnitude normalised by its local mean, so that a faint edge in a
dark region counts as much as a bright one). ``MAPS`` chooses; by default ("hybrid") the learned maps find the
basin and the gradient maps, sharper, give the last level's precision and the confidence. Then

1. **coarse search** over the similarity group at a small working size: for each rotation and scale on a grid,
   the warped thermal map's centre is matched against the RGB map over all shifts (``cv2.matchTemplate``,
   normalised cross-correlation); the best few well-separated peaks are kept;
2. **refinement** of each peak with ``cv2.findTransformECC`` on the maps, coarse to fine: affine
   (``MOTION_AFFINE``) at every level, then a homography from it at the finest level;
3. **confidence**: the final ECC correlation, and whether another start converged elsewhere with nearly the
   same correlation (ambiguous). The estimate is refused with a reason when the RGB image is too dark or too
   flat, the correlation is low, the solution is ambiguous, or the homography is implausible for a rig.

Several frames of one rig (:func:`estimate_multi`): first one joint estimate (:func:`estimate_joint`: the
usable frames' structure maps averaged, one warp fitted to all frames' evidence, the single-frame thresholds);
when that is refused, the frames are estimated one by one and combined by consensus (:func:`combine`); the CLI
and the node (over the pairs collected so far) decide the same way. Consensus: the largest group of estimates
whose frame corners agree within ``AGREE_PX``; its members' corners are averaged. Agreement of independent
frames is strong evidence, so a group of ≥ 2 agreeing frames is accepted even where each frame on its own was
below the single-frame thresholds (never when its frames are dark or flat).

All homographies map thermal pixels to RGB pixels (full resolution), as ``registration.homography``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from moe_fusion_core import autoreg_net

COARSE_SIDE = 160  # px, longer side of the coarse search
FINE_SIDES = (160, 320, 640)  # ECC refinement levels (capped at the RGB size)
ROTATIONS_DEG = np.arange(-7.0, 7.01, 1.0)
SCALES = np.exp(np.linspace(np.log(0.8), np.log(1.22), 11))  # relative to the plain resize
MAX_SHIFT = 0.12  # of the RGB size, searched
TEMPLATE_MARGIN = 0.2  # of the RGB size, each side: the template is the warped thermal map's centre
STARTS = 3  # separated coarse peaks refined by ECC
SEPARATED = 0.06  # of the diagonal: peaks / solutions closer than this are the same one
ECC_ITERS = (60, 30)  # ECC iterations at the first level, at the others
ECC_GAUSS = 1  # ECC's own Gaussian pre-filter (1: none)
STRUCTURE_SIGMA = 0.7  # px, smoothing before the gradient (1.0 until 2026-12-05; see docs/registration.md)
REFINE_MOTION = cv2.MOTION_AFFINE  # ECC motion of the levels before the last one's homography
# what is matched: "hybrid" (learned maps, autoreg_net, for the coarse search and every ECC level but the last,
# gradient maps at the last level; since 2026-12-05 late), "learned" (learned maps throughout) or "gradient"
# (structure_map throughout, the method before); see docs/registration.md
MAPS = "hybrid"
AGREE_PX = 0.01  # of the RGB diagonal: estimates whose corners agree this well are one solution (≈ 8 px at 640)

# refusal thresholds (tuned on the tuning split, see docs/registration.md)
MIN_RGB_MEAN = 12.0  # mean luma of the RGB frame (0..255) below which it is "dark"
MIN_STRUCTURE = 0.04  # share of RGB pixels with a clear edge
MIN_RHO = 0.2  # final ECC correlation of the structure maps
MIN_RHO_AGREE = 0.15  # the same, for frames that count towards a multi-frame consensus
AMBIGUITY = 0.08  # another solution within this much correlation: ambiguous (0.05 until 2026-12-05)
MIN_OVERLAP = 0.35  # share of the RGB frame the thermal image must cover


@dataclass
class Estimate:
    """A thermal → RGB homography with its evidence. ``ok``: confident enough to apply; else ``reason``."""

    h: np.ndarray | None
    confidence: float  # final ECC correlation of the structure maps (0..1); agreement for several frames
    ok: bool
    reason: str = ""
    details: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        d = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.details.items())
        state = "confident" if self.ok else f"refused: {self.reason}"
        return f"confidence {self.confidence:.2f} ({d}); {state}; {self.seconds:.1f} s"


# ------------------------------------------------------------------ structure maps
def _luma(img: np.ndarray) -> np.ndarray:
    """One channel: the image itself when grey, else the RGB image's grey conversion (dtype kept)."""
    return img if img.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY)


def _gray(img: np.ndarray) -> np.ndarray:
    g = np.nan_to_num(_luma(img).astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = np.percentile(g, (0.5, 99.5))
    return (np.clip((g - lo) / max(float(hi - lo), 1e-6), 0, 1) * 255.0).astype(np.float32)


def _frames(img: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    return [img] if isinstance(img, np.ndarray) else list(img)


def matching_map(img: np.ndarray, size: tuple[int, int], modality: str, final: bool = False) -> np.ndarray:
    """The map that the search and ECC match: the learned structure map of ``modality`` (``MAPS == "learned"``,
    :mod:`moe_fusion_core.autoreg_net`; ``"hybrid"``: except at the final level) or the gradient one
    (:func:`structure_map`)."""
    if not _gradient_level(final):
        g = cv2.resize(_gray(img), size, interpolation=cv2.INTER_AREA)
        return autoreg_net.learned_map(g, modality)
    return structure_map(img, size)


def _gradient_level(final: bool) -> bool:
    """Whether a level matches the gradient structure maps (else the learned ones), by ``MAPS``."""
    return MAPS == "gradient" or (MAPS == "hybrid" and final)


def mean_matching_map(imgs: Sequence[np.ndarray], size: tuple[int, int], modality: str,
                      final: bool = False) -> np.ndarray:
    """The mean of several frames' matching maps (frames of one rig share one warp)."""
    return np.mean([matching_map(i, size, modality, final) for i in imgs], axis=0).astype(np.float32)


def structure_map(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Gradient magnitude of ``img`` resized to ``size`` (w, h), divided by its local mean (float32, ~0..4)."""
    g = cv2.resize(_gray(img), size, interpolation=cv2.INTER_AREA)
    g = cv2.GaussianBlur(g, (0, 0), STRUCTURE_SIGMA)
    mag = cv2.magnitude(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3))
    k = max(3, (min(size) // 8) | 1)
    local = cv2.blur(mag, (k, k)) + 0.25 * float(mag.mean()) + 1e-3
    return np.minimum(mag / local, 4.0).astype(np.float32)


# ------------------------------------------------------------------ geometry helpers
def scale_h(sx: float, sy: float) -> np.ndarray:
    return np.diag([sx, sy, 1.0])


def corners(w: int, h: int) -> np.ndarray:
    return np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)


def project(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return cv2.perspectiveTransform(np.asarray(pts, np.float64).reshape(-1, 1, 2), h).reshape(-1, 2)


def corner_error(h_a: np.ndarray, h_b: np.ndarray, thermal_size: tuple[int, int]) -> float:
    """Mean distance (RGB px) between the thermal frame's corners mapped by ``h_a`` and by ``h_b``."""
    c = corners(*thermal_size)
    return float(np.linalg.norm(project(h_a, c) - project(h_b, c), axis=1).mean())


def _similarity(angle_deg: float, scale: float, c_th: tuple[float, float], c_rgb: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    r = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m = np.eye(3)
    m[:2, :2] = r
    m[:2, 2] = np.asarray(c_rgb) - r @ np.asarray(c_th)
    return m


# ------------------------------------------------------------------ one pair
def check_rgb(rgb: np.ndarray) -> str:
    """Why the RGB frame cannot be registered (too dark, too flat), or ``""``."""
    g = _luma(rgb)
    g8 = g if g.dtype == np.uint8 else (g.astype(np.float32) / 257).astype(np.uint8)
    mean = float(g8.mean())
    if mean < MIN_RGB_MEAN:
        return f"the RGB image is too dark to register (mean brightness {mean:.1f}/255 < {MIN_RGB_MEAN:g})"
    small = cv2.resize(g8, (320, max(1, round(320 * g8.shape[0] / g8.shape[1]))), interpolation=cv2.INTER_AREA)
    edges = float((cv2.Canny(cv2.GaussianBlur(small, (0, 0), 1.0), 20, 60) > 0).mean())
    if edges < MIN_STRUCTURE / 4:
        return f"the RGB image has too little structure to register ({edges:.1%} edge pixels)"
    return ""


def _coarse_candidates(th_map: np.ndarray, rgb_map: np.ndarray, base: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """(score, H thermal-map px → RGB-map px) of the best separated similarity peaks, best first."""
    rh, rw = rgb_map.shape
    th_h, th_w = th_map.shape
    pad = round(MAX_SHIFT * max(rw, rh))
    m = round(TEMPLATE_MARGIN * min(rw, rh))
    padded = cv2.copyMakeBorder(rgb_map, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    c_th, c_rgb = ((th_w - 1) / 2, (th_h - 1) / 2), ((rw - 1) / 2, (rh - 1) / 2)
    s0 = float(np.sqrt(abs(np.linalg.det(base[:2, :2]))))
    found: list[tuple[float, np.ndarray]] = []
    for ang in ROTATIONS_DEG:
        for sc in SCALES:
            sim = _similarity(float(ang), s0 * float(sc), c_th, c_rgb)
            warped = cv2.warpPerspective(th_map, sim, (rw, rh), flags=cv2.INTER_LINEAR)
            tpl = warped[m:rh - m, m:rw - m]
            if float(tpl.std()) < 1e-6:
                continue
            res = cv2.matchTemplate(padded, tpl, cv2.TM_CCOEFF_NORMED)
            for _ in range(2):  # the peak and the best one away from it
                _, score, _, (x, y) = cv2.minMaxLoc(res)
                shift = np.array([[1, 0, x - pad - m], [0, 1, y - pad - m], [0, 0, 1.0]])
                found.append((float(score), shift @ sim))
                r = max(2, round(SEPARATED * np.hypot(rw, rh)))
                res[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] = -1
    found.sort(key=lambda t: -t[0])
    out: list[tuple[float, np.ndarray]] = []
    sep = SEPARATED * np.hypot(rw, rh)
    for score, h in found:
        if all(corner_error(h, o, (th_w, th_h)) > sep for _, o in out):
            out.append((score, h))
        if len(out) >= STARTS:
            break
    return out


def _ecc(th_map: np.ndarray, rgb_map: np.ndarray, h: np.ndarray, iters: int,
         motion: int = cv2.MOTION_HOMOGRAPHY) -> tuple[float, np.ndarray] | None:
    """ECC-refined (correlation, H thermal → RGB) at one level, or None when ECC diverges.

    ``motion``: ``cv2.MOTION_AFFINE`` keeps the warp affine (``h``'s perspective row is dropped)."""
    warp = np.linalg.inv(h)  # ECC's warp maps template (RGB) px to input (thermal) px
    warp /= warp[2, 2]
    warp = (warp[:2] if motion == cv2.MOTION_AFFINE else warp).astype(np.float32)
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iters, 1e-5)
    try:
        rho, warp = cv2.findTransformECC(rgb_map, th_map, warp, motion, crit, None, ECC_GAUSS)
    except cv2.error:
        return None
    if warp.shape[0] == 2:
        warp = np.vstack([warp, [0, 0, 1]])
    if not np.isfinite(warp).all() or abs(np.linalg.det(warp)) < 1e-9:
        return None
    h2 = np.linalg.inv(warp.astype(np.float64))
    return float(rho), h2 / h2[2, 2]


def _level_size(rgb_shape: tuple[int, int], side: int) -> tuple[float, tuple[int, int]]:
    rh, rw = rgb_shape
    f = min(1.0, side / max(rh, rw))
    return f, (max(8, round(rw * f)), max(8, round(rh * f)))


def _thermal_size(thermal_shape: tuple[int, int], rgb_width: int) -> tuple[int, int]:
    """The thermal map's size at a level: its width matches the RGB map's, its aspect kept."""
    th_h, th_w = thermal_shape
    g = rgb_width / th_w
    return max(8, round(th_w * g)), max(8, round(th_h * g))


class _LevelMaps:
    """The thermal and RGB matching maps of one rig at each refinement level, computed once for all starts."""

    def __init__(self, thermal: Sequence[np.ndarray], rgb: Sequence[np.ndarray]) -> None:
        self.thermal, self.rgb = list(thermal), list(rgb)
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._rgb_structure: dict[tuple[int, int], list[np.ndarray]] = {}

    def rgb_structure(self, size: tuple[int, int]) -> list[np.ndarray]:
        """Each RGB frame's gradient structure map at ``size`` (shared by the structure check and gradient levels)."""
        if size not in self._rgb_structure:
            self._rgb_structure[size] = [structure_map(r, size) for r in self.rgb]
        return self._rgb_structure[size]

    def get(self, th_size: tuple[int, int], size: tuple[int, int],
            final: bool = False) -> tuple[np.ndarray, np.ndarray]:
        key = (th_size, size, final)
        if key not in self._cache:
            rgb = (np.mean(self.rgb_structure(size), axis=0).astype(np.float32) if _gradient_level(final)
                   else mean_matching_map(self.rgb, size, "rgb", final))
            self._cache[key] = (mean_matching_map(self.thermal, th_size, "thermal", final), rgb)
        return self._cache[key]


def _refine(thermal: np.ndarray | Sequence[np.ndarray], rgb: np.ndarray | Sequence[np.ndarray],
            h_full: np.ndarray, maps: _LevelMaps | None = None) -> tuple[float, np.ndarray, dict] | None:
    """ECC coarse to fine from ``h_full`` (thermal → RGB, full resolution): (correlation, H, details) of the last
    level, or None when the first level diverges.

    Affine at every level (the rigs' warps are similarities with a mild perspective; a free homography on the
    coarse, noisy cross-modal maps drifts), then at the last level a homography from the affine result (the affine
    one is kept when it diverges). Several frames of one rig share one warp: their structure maps are averaged."""
    ths, rgbs = _frames(thermal), _frames(rgb)
    maps = maps if maps is not None else _LevelMaps(ths, rgbs)
    th_h, th_w = ths[0].shape[:2]
    rh, rw = rgbs[0].shape[:2]
    out = None
    sides = sorted({min(s, max(rh, rw)) for s in FINE_SIDES})
    for i, side in enumerate(sides):
        _, size = _level_size((rh, rw), side)
        th_size = _thermal_size((th_h, th_w), size[0])
        to_level = scale_h(size[0] / rw, size[1] / rh)
        from_th = scale_h(th_w / th_size[0], th_h / th_size[1])
        h_level = to_level @ h_full @ from_th
        th_map, rgb_map = maps.get(th_size, size, final=i == len(sides) - 1)
        iters = ECC_ITERS[0] if i == 0 else ECC_ITERS[1]
        r = _ecc(th_map, rgb_map, h_level, iters, REFINE_MOTION)
        if r is None:
            return out
        details: dict = {}
        if i == len(sides) - 1 and REFINE_MOTION != cv2.MOTION_HOMOGRAPHY:
            details["ecc_affine"] = r[0]
            r_h = _ecc(th_map, rgb_map, r[1], iters, cv2.MOTION_HOMOGRAPHY)
            if r_h is not None:
                r = r_h
            details["perspective"] = r_h is not None
        rho, h_level = r
        h_full = np.linalg.inv(to_level) @ h_level @ np.linalg.inv(from_th)
        h_full /= h_full[2, 2]
        out = (rho, h_full, details)
    return out


def plausible(h: np.ndarray, thermal_size: tuple[int, int], rgb_size: tuple[int, int]) -> str:
    """Why ``h`` is not a plausible side-by-side rig (folded, far too skewed, barely overlapping), or ``""``."""
    tw, th = thermal_size
    rw, rh = rgb_size
    q = project(h, corners(tw, th)).astype(np.float32)
    if not cv2.isContourConvex(q.reshape(-1, 1, 2)):
        return "the estimate folds the image (not a camera pair)"
    area = abs(cv2.contourArea(q)) / (rw * rh)
    if not 0.3 < area < 4.0:
        return f"the estimate scales the thermal image implausibly (area {area:.2f}× the RGB frame)"
    clipped = np.clip(q, [0, 0], [rw, rh]).astype(np.float32)
    overlap = abs(cv2.contourArea(clipped)) / (rw * rh) if cv2.isContourConvex(clipped.reshape(-1, 1, 2)) else area
    if overlap < MIN_OVERLAP:
        return f"the images barely overlap under the estimate ({overlap:.0%} of the RGB frame)"
    return ""


def estimate_pair(thermal: np.ndarray, rgb: np.ndarray) -> Estimate:
    """The thermal → RGB homography of one frame pair, with its confidence (see the module docstring)."""
    return estimate_joint([(thermal, rgb)])


def estimate_joint(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> Estimate:
    """One homography from all frame pairs of one rig at once: the usable frames' structure maps are averaged
    for the coarse search and the ECC refinement (all frames' evidence, one warp). One pair: as a single frame."""
    t0 = time.perf_counter()
    th_h, th_w = pairs[0][0].shape[:2]
    rh, rw = pairs[0][1].shape[:2]
    whys = [check_rgb(r) for _, r in pairs]
    use = [p for p, why in zip(pairs, whys) if not why]
    if not use:
        return Estimate(None, 0.0, False, "; ".join(sorted(set(whys))), {"usable": False}, time.perf_counter() - t0)
    ths, rgbs = [t for t, _ in use], [r for _, r in use]
    _, size = _level_size((rh, rw), COARSE_SIDE)
    th_size = _thermal_size((th_h, th_w), size[0])
    base = scale_h(size[0] / th_size[0], size[1] / th_size[1])  # plain resize, map px
    maps = _LevelMaps(ths, rgbs)
    structure = float(np.mean([(m > 1.5).mean() for m in maps.rgb_structure(size)]))
    if structure < MIN_STRUCTURE:
        return Estimate(None, 0.0, False, f"the RGB image has too little structure ({structure:.1%} edge pixels)",
                        {"usable": False}, time.perf_counter() - t0)
    to_full = scale_h(rw / size[0], rh / size[1])
    from_th = scale_h(th_size[0] / th_w, th_size[1] / th_h)
    th_map, rgb_map = maps.get(th_size, size)
    sols: list[tuple[float, np.ndarray, float, dict]] = []
    for score, h_map in _coarse_candidates(th_map, rgb_map, base):
        h0 = to_full @ h_map @ from_th
        r = _refine(ths, rgbs, h0 / h0[2, 2], maps)
        if r is not None:
            sols.append((r[0], r[1], score, r[2]))
    if not sols:
        return Estimate(None, 0.0, False, "no start converged (ECC diverged)", {"usable": True},
                        time.perf_counter() - t0)
    sols.sort(key=lambda t: -t[0])
    rho, h, peak, more = sols[0]
    diag = float(np.hypot(rw, rh))
    rivals = [s[0] for s in sols[1:] if corner_error(s[1], h, (th_w, th_h)) > AGREE_PX * diag]
    margin = rho - max(rivals) if rivals else rho
    details = {"ecc": rho, "peak": peak, "margin": margin, "structure": structure, "usable": True, **more}
    if len(pairs) > 1:
        details["frames"] = len(use)
    reason = plausible(h, (th_w, th_h), (rw, rh))
    if not reason and rho < MIN_RHO:
        reason = f"the structure maps correlate too weakly under the best estimate ({rho:.2f} < {MIN_RHO:g})"
    if not reason and margin < AMBIGUITY:
        reason = f"ambiguous: another solution correlates almost as well ({rho:.3f} vs {max(rivals):.3f})"
    return Estimate(h, rho, not reason, reason, details, time.perf_counter() - t0)


# ------------------------------------------------------------------ several frames
def estimate_multi(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[Estimate, list[Estimate]]:
    """Several frame pairs of one rig: the joint estimate (:func:`estimate_joint`) when it is confident, else the
    consensus of per-frame estimates (:func:`combine`); returns (result, per-frame estimates; empty when the
    joint estimate decided)."""
    if not pairs:
        raise ValueError("no frame pairs to register")
    t0 = time.perf_counter()
    joint = estimate_joint(pairs)
    if joint.ok or len(pairs) == 1:
        return joint, []
    each = [estimate_pair(t, r) for t, r in pairs]
    (th_h, th_w), (rh, rw) = pairs[0][0].shape[:2], pairs[0][1].shape[:2]
    est = combine(each, (th_w, th_h), (rw, rh))
    if not est.ok:
        est.reason = f"joint estimate: {joint.reason}; per frame: {est.reason}"
    est.seconds = time.perf_counter() - t0
    return est, each


def combine(each: Sequence[Estimate], thermal_size: tuple[int, int], rgb_size: tuple[int, int]) -> Estimate:
    """One estimate from per-frame ones of one rig: the largest group agreeing within ``AGREE_PX``.

    Accepted when ≥ 2 frames agree and outnumber the rest (and twice the confident frames outside the group),
    or with a single frame that is confident on its own while no other frame is."""
    if len(each) == 1:
        return each[0]
    (th_w, th_h), (rw, rh) = thermal_size, rgb_size
    tol = AGREE_PX * float(np.hypot(rw, rh))
    cands = [(i, e) for i, e in enumerate(each) if e.h is not None and e.confidence >= MIN_RHO_AGREE
             and not plausible(e.h, (th_w, th_h), (rw, rh))]
    best: list[int] = []
    for _, e in cands:
        group = [j for j, o in cands if corner_error(e.h, o.h, (th_w, th_h)) <= tol]
        if (len(group), sum(each[j].confidence for j in group)) > (len(best), sum(each[j].confidence for j in best)):
            best = group
    seconds = float(sum(e.seconds for e in each))
    details = {"frames": len(each), "usable": sum(bool(e.details.get("usable")) for e in each),
               "agreeing": len(best), "confident": sum(e.ok for e in each)}
    reasons = "; ".join(sorted({e.reason for e in each if e.reason}))
    if not best:
        return Estimate(None, 0.0, False, f"no frame gave a usable estimate ({reasons})", details, seconds)
    c = corners(th_w, th_h)
    mean_q = np.mean([project(each[j].h, c) for j in best], axis=0)
    h = cv2.getPerspectiveTransform(c.astype(np.float32), mean_q.astype(np.float32)).astype(np.float64)
    h /= h[2, 2]
    conf = float(np.mean([each[j].confidence for j in best]))
    details["ecc"] = conf
    others = [j for j, _ in cands if j not in best]
    ok_others = [j for j in others if each[j].ok]
    if len(best) >= 2 and len(best) > len(others) and len(best) > 2 * len(ok_others):
        return Estimate(h, conf, True, "", details, seconds)
    if len(best) == 1 and each[best[0]].ok and not ok_others:
        return Estimate(h, conf, True, "", details, seconds)
    if len(best) >= 2:
        why = f"the frames disagree: {len(best)} of {len(cands)} usable estimates agree within {tol:.0f} px"
    else:
        why = f"no two frames agree and none is confident on its own ({reasons})"
    return Estimate(None, conf, False, why, details, seconds)


# ------------------------------------------------------------------ simulated rigs (evaluation and tests)
def simulate_rig(ir: np.ndarray, vis: np.ndarray, rng: np.random.Generator, thermal_scale: float = 1.0, *,
                 max_rot_deg: float = 6.0, scale_range: tuple[float, float] = (0.85, 1.15),
                 max_shift: float = 0.08, perspective: float = 0.015,
                 margin: float = 0.08) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An unregistered rig made from a registered pair: ``(thermal, rgb, H thermal → RGB)``.

    The RGB image is the visible image's centre (``margin`` cropped each side); the thermal camera is rotated by
    up to ``max_rot_deg``, zoomed by ``scale_range``, shifted by up to ``max_shift`` of the size, its corners
    moved by up to ``perspective`` of the size (a mild perspective), and has ``thermal_scale`` × the RGB
    resolution. Thermal pixels falling outside the source image repeat its border."""
    h0, w0 = ir.shape[:2]
    ox, oy = round(margin * w0), round(margin * h0)
    rgb = np.ascontiguousarray(vis[oy:h0 - oy, ox:w0 - ox])
    rh, rw = rgb.shape[:2]
    tw, th = round(rw * thermal_scale), round(rh * thermal_scale)
    sim = _similarity(rng.uniform(-max_rot_deg, max_rot_deg), rng.uniform(*scale_range),
                      ((rw - 1) / 2, (rh - 1) / 2), ((rw - 1) / 2, (rh - 1) / 2))
    sim[:2, 2] += rng.uniform(-max_shift, max_shift, 2) * (rw, rh)
    c = corners(rw, rh)
    moved = project(sim, c) + rng.uniform(-perspective, perspective, (4, 2)) * (rw, rh)
    h_rgb = cv2.getPerspectiveTransform(c.astype(np.float32), moved.astype(np.float32)).astype(np.float64)
    h_gt = h_rgb @ scale_h(rw / tw, rh / th)
    h_gt /= h_gt[2, 2]
    to_src = np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1.0]]) @ h_gt
    thermal = cv2.warpPerspective(ir, to_src, (tw, th), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REPLICATE)
    return thermal, rgb, h_gt
