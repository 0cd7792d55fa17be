"""The eight fusion metrics: the test vectors of design/fusion_metrics.md, literal re-implementations of the
toolbox code on small crops, and analytic cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import convolve2d, correlate2d

from moe_fusion_core.image_io import read_image, read_ir
from moe_fusion_core.metrics import (
    METRIC_NAMES,
    aggregate,
    average_gradient,
    entropy,
    mutual_information,
    nanmean_count,
    qabf,
    scd,
    score_all,
    spatial_frequency,
    standard_deviation,
    to_grey_u8,
    visual_information_fidelity,
)

# design/fusion_metrics.md, "Test vectors": means over all 16 msrs pairs (EN SF SD MI VIF AG SCD Qabf)
VECTORS = {
    ("average", "paper"): (5.8562, 0.0226, 7.4783, 2.7986, 0.6607, 1.9309, 1.2224, 0.3595),
    ("average", "standard"): (5.8562, 5.7543, 24.8373, 2.7894, 0.6868, 1.9309, 1.2224, 0.3620),
    ("max", "paper"): (6.5457, 0.0411, 8.1893, 6.5240, 0.9481, 3.2513, 1.6836, 0.3558),
    ("max", "standard"): (6.5457, 10.4930, 45.2630, 6.5019, 1.0471, 3.2513, 1.6836, 0.6993),
}


def _pairs(msrs: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for p in sorted((msrs / "ir").glob("*.png")):
        vis_file = next((msrs / "vis").glob(p.stem + ".*"))
        out.append((read_ir(p), to_grey_u8(read_image(vis_file))))
    return out


@pytest.fixture(scope="module")
def msrs_pairs(data_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = _pairs(data_dir / "msrs")
    assert len(pairs) == 16
    return pairs


@pytest.fixture(scope="module")
def vector_means(msrs_pairs) -> dict[tuple[str, str], dict[str, float]]:
    rows: dict[tuple[str, str], dict[str, dict[str, float]]] = {k: {} for k in VECTORS}
    for i, (ir, vis) in enumerate(msrs_pairs):
        fusions = {"average": np.floor((ir.astype(np.float64) + vis) / 2 + 0.5).astype(np.uint8),
                   "max": np.maximum(ir, vis)}
        for (fusion, mode), per in rows.items():
            per[str(i)] = score_all(fusions[fusion], ir, vis, mode)
    return {k: aggregate(v)[0] for k, v in rows.items()}


@pytest.mark.parametrize("key", list(VECTORS), ids=lambda k: "-".join(k))
def test_reproduces_design_test_vectors(vector_means, key):
    got = vector_means[key]
    for name, want in zip(METRIC_NAMES, VECTORS[key]):
        if name == "Qabf":  # toolbox's exact-equality quirks depend on the order of additions: 0.5 %
            assert got[name] == pytest.approx(want, rel=5e-3), name
        else:  # the vectors are printed to 4 decimals: agreement to the last printed digit
            assert abs(got[name] - want) <= 0.5e-4 + 1e-6 * abs(want), (name, got[name], want)


# ----------------------------------------------------------------- literal transliterations of the toolbox code


@pytest.fixture(scope="module")
def crop(msrs_pairs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ir, vis = msrs_pairs[3]
    ir, vis = ir[200:264, 300:372], vis[200:264, 300:372]
    rng = np.random.default_rng(0)
    fused = np.clip(0.6 * ir + 0.5 * vis + rng.normal(0, 4, ir.shape), 0, 255).round().astype(np.uint8)
    fused[0, :5] = 255  # exercise the saturating levels
    fused[1, :5] = 254
    return fused, ir, vis


def _round(x: float) -> float:  # MATLAB round: half away from zero
    return math.copysign(math.floor(abs(x) + 0.5), x)


def _h(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def test_sd_paper_is_the_toolbox_uint8_arithmetic(crop):
    f = crop[0]
    mu = f.astype(np.float64).mean()
    total = 0.0
    for v in f.ravel().tolist():
        d = min(max(_round(v - mu), 0), 255)
        total += min(d * d, 255)
    assert standard_deviation(f, "paper") == pytest.approx(math.sqrt(total / f.size), rel=1e-12)
    assert standard_deviation(f, "standard") == pytest.approx(float(np.std(f.astype(np.float64))), rel=1e-12)


def test_mi_paper_merges_levels_254_255_in_the_joint_histogram_only(crop):
    f, ir, vis = crop

    def mi(x, y, saturate):
        joint = np.zeros((256, 256))
        for a, b in zip(x.ravel().tolist(), y.ravel().tolist()):
            if saturate:
                a, b = min(a + 1, 255) - 1, min(b + 1, 255) - 1
            joint[a, b] += 1
        return _h(np.bincount(x.ravel(), minlength=256)) + _h(np.bincount(y.ravel(), minlength=256)) - _h(joint)

    assert mutual_information(f, ir, vis, "paper") == pytest.approx(mi(ir, f, True) + mi(vis, f, True), rel=1e-12)
    assert mutual_information(f, ir, vis, "standard") == pytest.approx(mi(ir, f, False) + mi(vis, f, False),
                                                                       rel=1e-12)
    assert mutual_information(f, ir, vis, "paper") != mutual_information(f, ir, vis, "standard")


def test_ag_and_sf_match_loops(crop):
    x = crop[0].astype(np.float64)
    m, n = x.shape
    total = 0.0
    for i in range(m):
        for j in range(n):
            gx = (x[i, 1] - x[i, 0]) if j == 0 else (x[i, -1] - x[i, -2]) if j == n - 1 else \
                (x[i, j + 1] - x[i, j - 1]) / 2
            gy = (x[1, j] - x[0, j]) if i == 0 else (x[-1, j] - x[-2, j]) if i == m - 1 else \
                (x[i + 1, j] - x[i - 1, j]) / 2
            total += math.sqrt((gx * gx + gy * gy) / 2)
    assert average_gradient(crop[0]) == pytest.approx(total / ((m - 1) * (n - 1)), rel=1e-12)
    rf = sum((x[i + 1, j] - x[i, j]) ** 2 for i in range(m - 1) for j in range(n)) / ((m - 1) * n)
    cf = sum((x[i, j + 1] - x[i, j]) ** 2 for i in range(m) for j in range(n - 1)) / (m * (n - 1))
    assert spatial_frequency(crop[0], "standard") == pytest.approx(math.sqrt(rf + cf), rel=1e-12)
    assert spatial_frequency(crop[0], "paper") == pytest.approx(math.sqrt(rf + cf) / 255, rel=1e-12)


def _vifp_toolbox(ref: np.ndarray, dist: np.ndarray, saturate: bool) -> float:
    """vifp_mscale.m, line by line (fspecial with its eps cut, filter2 'valid')."""
    num = den = 0.0
    r, d = ref, dist
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        s = n / 5
        ax = np.arange(n) - (n - 1) / 2
        win = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * s * s))
        win[win < np.finfo(float).eps * win.max()] = 0
        win /= win.sum()
        if scale > 1:
            r = correlate2d(r, win, "valid")[::2, ::2]
            d = correlate2d(d, win, "valid")[::2, ::2]
        r64, d64 = r.astype(np.float64), d.astype(np.float64)
        if saturate and scale == 1:
            rr, dd, rd = (np.minimum(a, 255) for a in (r64 * r64, d64 * d64, r64 * d64))
        else:
            rr, dd, rd = r64 * r64, d64 * d64, r64 * d64
        mu1, mu2 = correlate2d(r64, win, "valid"), correlate2d(d64, win, "valid")
        s1 = correlate2d(rr, win, "valid") - mu1 * mu1
        s2 = correlate2d(dd, win, "valid") - mu2 * mu2
        s12 = correlate2d(rd, win, "valid") - mu1 * mu2
        s1[s1 < 0] = 0
        s2[s2 < 0] = 0
        g = s12 / (s1 + 1e-10)
        sv = s2 - g * s12
        g[s1 < 1e-10] = 0
        sv[s1 < 1e-10] = s2[s1 < 1e-10]
        s1[s1 < 1e-10] = 0
        g[s2 < 1e-10] = 0
        sv[s2 < 1e-10] = 0
        sv[g < 0] = s2[g < 0]
        g[g < 0] = 0
        sv[sv <= 1e-10] = 1e-10
        num += np.log10(1 + g * g * s1 / (sv + 2)).sum()
        den += np.log10(1 + s1 / 2).sum()
    return num / den


@pytest.mark.parametrize("mode", ["paper", "standard"])
def test_vif_matches_vifp_mscale(crop, mode):
    f, ir, vis = crop
    want = _vifp_toolbox(ir, f, mode == "paper") + _vifp_toolbox(vis, f, mode == "paper")
    assert visual_information_fidelity(f, ir, vis, mode) == pytest.approx(want, rel=1e-9)


def _qabf_toolbox(a: np.ndarray, b: np.ndarray, f: np.ndarray, scale: float) -> float:
    h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=float)
    h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=float)

    def so(x):
        x = x.astype(np.float64) / scale
        sx, sy = convolve2d(x, h3, "same"), convolve2d(x, h1, "same")
        ang = np.empty_like(sx)
        for idx in np.ndindex(sx.shape):
            ang[idx] = math.pi / 2 if sx[idx] == 0 else math.atan(sy[idx] / sx[idx])
        return np.sqrt(sx ** 2 + sy ** 2), ang

    gf, af = so(f)
    nume = deno = 0.0
    for src in (a, b):
        g, ang = so(src)
        q = np.empty_like(g)
        for idx in np.ndindex(g.shape):
            if g[idx] > gf[idx]:
                ratio = gf[idx] / g[idx]
            elif g[idx] == gf[idx]:
                ratio = gf[idx]
            else:
                ratio = g[idx] / gf[idx]
            aa = 1 - abs(ang[idx] - af[idx]) / (math.pi / 2)
            q[idx] = 0.9994 / (1 + math.exp(-15 * (ratio - 0.5))) * 0.9879 / (1 + math.exp(-22 * (aa - 0.8)))
        nume += (q * g).sum()
        deno += g.sum()
    return nume / deno


def test_qabf_matches_the_toolbox_loops(crop):
    f, ir, vis = crop
    f = f.copy()
    f[30:40, 30:40] = ir[30:40, 30:40]  # a patch where g_A == g_F exactly: the quirk must fire
    # integer data: every Sobel response is exact, so the exact-equality quirks agree bit for bit
    assert qabf(f, ir, vis, "standard") == pytest.approx(_qabf_toolbox(ir, vis, f, 1.0), rel=1e-12)
    assert qabf(f, ir, vis, "paper") == pytest.approx(_qabf_toolbox(ir, vis, f, 255.0), rel=5e-3)


# ------------------------------------------------------------------------------------------------ analytic cases


@pytest.mark.parametrize("mode", ["paper", "standard"])
def test_constant_image_has_no_information(mode):
    f = np.full((48, 64), 117, np.uint8)
    assert entropy(f) == 0.0
    assert standard_deviation(f, mode) == 0.0
    assert spatial_frequency(f, mode) == 0.0
    assert average_gradient(f) == 0.0


def test_entropy_of_two_equiprobable_levels_is_one_bit():
    f = np.zeros((10, 10), np.uint8)
    f[:5] = 200
    assert entropy(f) == pytest.approx(1.0, abs=1e-15)


def test_sd_paper_is_bounded_by_the_uint8_square():
    f = np.zeros((10, 10), np.uint8)
    f[:, :5] = 255  # deviations ±127.5: standard SD 127.5, paper clips squares at 255 and negatives at 0
    assert standard_deviation(f, "standard") == pytest.approx(127.5)
    assert standard_deviation(f, "paper") == pytest.approx(math.sqrt(255 / 2))


def test_fused_identical_to_a_source(msrs_pairs):
    ir, vis = msrs_pairs[0]
    ir, vis = ir[::4, ::4], vis[::4, ::4]
    assert math.isnan(scd(ir, ir, vis))
    assert math.isnan(scd(vis, ir, vis))
    # MI(F=IR) = H(IR) + MI(IR;VIS) and MI(F=VIS) = H(VIS) + MI(VIS;IR): the same cross term
    cross_ir = mutual_information(ir, ir, vis, "standard") - entropy(ir)
    cross_vis = mutual_information(vis, ir, vis, "standard") - entropy(vis)
    assert cross_ir == pytest.approx(cross_vis, rel=1e-12)
    assert 0 < cross_ir < min(entropy(ir), entropy(vis))
    # vifp(X, X) = 1: copying a source gets at least 1
    assert visual_information_fidelity(ir, ir, vis, "standard") > 1.0
    s = score_all(ir, ir, vis, "standard")
    assert math.isnan(s["SCD"]) and all(math.isfinite(v) for k, v in s.items() if k != "SCD")


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (2, 2), (17, 17), (33, 18)])
def test_tiny_and_odd_sizes(shape):
    rng = np.random.default_rng(1)
    ir, vis = (rng.integers(0, 256, shape).astype(np.uint8) for _ in range(2))
    f = ((ir.astype(int) + vis) // 2).astype(np.uint8)
    for mode in ("paper", "standard"):
        s = score_all(f, ir, vis, mode)
        assert set(s) == set(METRIC_NAMES)
        for k in ("EN", "SF", "SD", "MI", "AG", "SCD", "Qabf"):
            assert math.isfinite(s[k]), (shape, k)
        if mode == "standard":  # VIF needs ≥ 17 rows and columns for its first scale
            assert math.isfinite(s["VIF"]) == (min(shape) >= 17)
        elif min(shape) < 17:  # (paper: saturated squares can also zero every variance of noise -> 0/0)
            assert math.isnan(s["VIF"])


def test_input_conversions():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    rgb[1, :] = (10, 20, 30)
    grey = to_grey_u8(rgb)  # MATLAB rgb2gray: 0.298936 R + 0.587043 G + 0.114021 B, rounded
    assert grey[0].tolist() == [76, 150, 29]
    assert grey[1, 0] == round(0.298936 * 10 + 0.587043 * 20 + 0.114021 * 30)
    rng = np.random.default_rng(2)
    ir, vis = (rng.integers(0, 256, (40, 30)).astype(np.uint8) for _ in range(2))
    f = np.maximum(ir, vis)
    ref = score_all(f, ir, vis)
    assert score_all(f.astype(np.float32), ir.astype(np.float64), vis) == ref  # floats on the 8-bit scale
    assert score_all(f + 0.3, ir, vis) == ref  # quantised to uint8 as a saved image would be
    assert score_all(np.repeat(f[:, :, None], 3, 2), ir, np.repeat(vis[:, :, None], 3, 2)) == ref
    assert score_all(f.astype(np.uint16) * 257, ir, vis) == ref


def test_clear_errors():
    a = np.zeros((10, 12), np.uint8)
    with pytest.raises(ValueError, match="size mismatch"):
        score_all(a, a, np.zeros((12, 10), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        score_all(np.zeros((0, 12), np.uint8), a, a)
    with pytest.raises(ValueError, match="mode"):
        score_all(a, a, a, mode="matlab")
    with pytest.raises(ValueError, match="shape"):
        score_all(np.zeros((2, 10, 12, 3)), a, a)
    with pytest.raises(ValueError, match="NaN"):
        score_all(np.full((10, 12), np.nan), a, a)


def test_nan_aware_aggregation():
    assert nanmean_count([1.0, float("nan"), 3.0]) == (2.0, 1)
    mean, count = nanmean_count([float("nan")])
    assert math.isnan(mean) and count == 1
    rows = {"a": dict.fromkeys(METRIC_NAMES, 1.0), "b": {**dict.fromkeys(METRIC_NAMES, 3.0), "SCD": float("nan")}}
    means, nan = aggregate(rows)
    assert means["EN"] == 2.0 and means["SCD"] == 1.0
    assert nan["SCD"] == 1 and nan["EN"] == 0
