"""``FusionEngine``: the numpy-in / numpy-out inference API and its input policy (engine module docstring)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from moe_fusion_core.checkpoint import save_model
from moe_fusion_core.config import named_config
from moe_fusion_core.engine import Detection, FusionEngine, color_fusion
from moe_fusion_core.image_io import read_ir, read_vis
from moe_fusion_core.model import build_model
from moe_fusion_core.preprocess import ThermalNormalization, ThermalNormalizer

ROAD = ("FLIR_00006", "FLIR_00018", "FLIR_00060")


def untrained_checkpoint(folder: Path, calibration: tuple[np.ndarray, np.ndarray], detector: bool = True) -> Path:
    """An untrained embedded model whose output layer is rescaled so the fused image spans many grey levels.

    A freshly initialised model outputs ≈ −0.01 everywhere (every pixel saves as 0), which would make most
    comparisons vacuous. Rescaling the global experts' last conv so that the ``calibration`` pair (IR, visible
    RGB, uint8) fuses to mean 0.5 / std 0.15 keeps the output a function of the input.
    """
    cfg = named_config("embedded")
    if not detector:
        cfg.model.detector = None
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    g = torch.Generator().manual_seed(1)
    ir = torch.from_numpy(calibration[0]).float().div(255)[None, None]
    vis = torch.from_numpy(cv2.cvtColor(calibration[1], cv2.COLOR_RGB2GRAY)).float().div(255)[None, None]
    with torch.no_grad():
        for name, p in model.fusion.named_parameters():
            if "gate" in name:  # per-image routing instead of tied logits
                p.copy_(torch.randn(p.shape, generator=g) * 1e-3)
        for _ in range(2):  # logsumexp is not affine in the experts' outputs: refine once
            raw = model(ir, vis).fused
            scale = 0.15 / raw.std().item()
            shift = 0.5 - raw.mean().item() * scale
            for expert in model.fusion.moge.experts:
                expert.body[-1].weight.mul_(scale)
                expert.body[-1].bias.mul_(scale).add_(shift)
    return save_model(model, cfg, folder)


@pytest.fixture(scope="module")
def road(data_dir) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Real RoadScene pairs shrunk to about a third (odd sizes kept odd), as read by the CLI."""
    out = {}
    for stem in ROAD:
        ir = read_ir(data_dir / "roadscene" / "ir" / f"{stem}.png")
        vis = read_vis(next((data_dir / "roadscene" / "vis").glob(f"{stem}.*")))
        h, w = vis.shape[:2]
        size = (w // 3 | 1, h // 3 | 1)
        out[stem] = (cv2.resize(ir, size, interpolation=cv2.INTER_AREA),
                     cv2.resize(vis, size, interpolation=cv2.INTER_AREA))
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, road) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("engine") / "embedded", road["FLIR_00006"])


@pytest.fixture(scope="module")
def engine(checkpoint) -> FusionEngine:
    return FusionEngine(checkpoint, device="cpu", detections=False)


def test_fused_image_is_uint8_at_the_visible_size_and_depends_on_the_input(engine, road):
    ir, vis = road["FLIR_00006"]
    res = engine.fuse(ir, vis)
    assert res.fused.dtype == np.uint8 and res.fused.shape == vis.shape[:2]
    assert res.fused.std() > 5  # a real image, not a constant
    other = engine.fuse(*road["FLIR_00018"][:1], road["FLIR_00018"][1])
    assert not np.array_equal(cv2.resize(other.fused, res.fused.shape[::-1]), res.fused)
    assert res.color is None and res.detections == []
    assert set(res.timings_ms) == {"preprocess", "inference", "postprocess", "total"}


def test_gate_weights_are_reported_per_mixture(engine, road):
    res = engine.fuse(*road["FLIR_00060"])
    assert set(res.gates) == {"mole_fg", "mole_bg", "moge"}
    for g in res.gates.values():
        assert g.shape == (4,) and (g > 0).sum() == 2 and g.sum() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(("h", "w"), [(97, 131), (61, 45), (33, 200)])
def test_odd_sizes_come_back_at_the_input_size(engine, road, h, w):
    ir, vis = road["FLIR_00006"]
    res = engine.fuse(ir[:h, :w], vis[:h, :w], color=True)
    assert res.fused.shape == (min(h, ir.shape[0]), min(w, ir.shape[1]))
    assert res.color.shape == (*res.fused.shape, 3)


def test_sixteen_bit_infrared_is_normalised_like_its_eight_bit_source(checkpoint, road):
    ir8, vis = road["FLIR_00018"]
    ir16 = ir8.astype(np.uint16) * 257  # the same frame stored with 16 bits
    fixed = FusionEngine(checkpoint, device="cpu", detections=False,
                         thermal_normalizer=ThermalNormalizer(ThermalNormalization(mode="none")))
    np.testing.assert_array_equal(fixed.fuse(ir16, vis).fused, fixed.fuse(ir8, vis).fused)


def test_raw_sixteen_bit_counts_use_the_default_percentile_window(engine, road):
    ir8, vis = road["FLIR_00018"]
    raw_a = 7_000 + 10 * ir8.astype(np.uint16)  # radiometric counts: offset and gain unknown to the user
    raw_b = 20_000 + 37 * ir8.astype(np.uint16)
    a, b = engine.fuse(raw_a, vis).fused, engine.fuse(raw_b, vis).fused
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # the window removes offset and gain
    # the engine fed the network exactly what the documented normaliser produces
    norm = ThermalNormalizer(ThermalNormalization(mode="percentile", ema=0.0))
    np.testing.assert_array_equal(engine.fuse(norm(raw_a), vis).fused, a)
    # float radiometric frames (e.g. Kelvin) with a few dead NaN pixels work too
    kelvin = 290.0 + ir8.astype(np.float32) / 10
    kelvin[0, :5] = np.nan
    assert engine.fuse(kelvin, vis).fused.shape == vis.shape[:2]


def test_infrared_of_another_size_is_resized_to_the_visible_size(engine, road):
    ir, vis = road["FLIR_00060"]
    big_ir = cv2.resize(ir, (ir.shape[1] * 2 + 1, ir.shape[0] * 2 + 1), interpolation=cv2.INTER_LINEAR)
    res = engine.fuse(big_ir, vis)
    assert res.fused.shape == vis.shape[:2]
    expected_ir = cv2.resize(big_ir, (vis.shape[1], vis.shape[0]), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(res.fused, engine.fuse(expected_ir, vis).fused)


def test_mismatch_error_policy_rejects_pairs_of_different_sizes(checkpoint, road):
    ir, vis = road["FLIR_00060"]
    strict = FusionEngine(checkpoint, device="cpu", detections=False, mismatch="error")
    h, w = vis.shape[:2]
    with pytest.raises(ValueError, match=rf"size mismatch: infrared {w - 2}×{h} vs visible {w}×{h}"):
        strict.fuse(ir[:, :-2], vis)
    assert strict.fuse(ir, vis).fused.shape == (h, w)
    with pytest.raises(ValueError, match="mismatch must be"):
        FusionEngine(checkpoint, device="cpu", mismatch="crop")


def test_grey_and_bgr_visible_inputs_match_their_rgb_equivalent(engine, road):
    ir, vis = road["FLIR_00006"]
    rgb = engine.fuse(ir, vis, color=True)
    bgr = engine.fuse(ir, np.ascontiguousarray(vis[:, :, ::-1]), color=True, vis_order="bgr")
    np.testing.assert_array_equal(bgr.fused, rgb.fused)
    np.testing.assert_array_equal(bgr.color, rgb.color)  # colour output is RGB either way
    grey = cv2.cvtColor(vis, cv2.COLOR_RGB2GRAY)
    g2 = engine.fuse(ir, grey, color=True)
    g3 = engine.fuse(ir, np.repeat(grey[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(g2.fused, g3.fused)
    np.testing.assert_array_equal(g2.fused, engine.fuse(ir, grey[:, :, None].repeat(3, 2)).fused)
    # a grey visible image has no chroma: the colour result is grey too
    assert np.abs(g2.color.astype(int) - g2.fused[:, :, None].astype(int)).max() <= 1
    # the network sees luminance only, so a BGR image mistaken for RGB changes the result
    assert not np.array_equal(engine.fuse(ir, np.ascontiguousarray(vis[:, :, ::-1])).fused, rgb.fused)


def test_colour_output_keeps_the_visible_chroma_and_uses_the_fused_luma(engine, road):
    ir, vis = road["FLIR_00018"]
    res = engine.fuse(ir, vis, color=True)
    assert res.color.dtype == np.uint8 and res.color.shape == vis.shape
    got = cv2.cvtColor(res.color, cv2.COLOR_RGB2YCrCb).astype(int)
    src = cv2.cvtColor(vis, cv2.COLOR_RGB2YCrCb).astype(int)
    # away from gamut clipping (very dark or bright fused pixels) the conversion is exact up to rounding
    ok = (res.fused > 40) & (res.fused < 215)
    assert ok.mean() > 0.3
    assert np.abs(got[..., 0] - res.fused.astype(int))[ok].max() <= 2
    assert np.abs(got[..., 1:] - src[..., 1:])[ok].mean() < 1.0
    np.testing.assert_array_equal(res.color, color_fusion(res.fused, vis))


def test_batched_results_equal_single_pair_results(engine, road):
    ir, vis = road["FLIR_00006"]
    pairs = [(ir, vis), (np.ascontiguousarray(ir[::-1]), np.ascontiguousarray(vis[::-1])),
             (np.ascontiguousarray(ir[:, ::-1]), np.ascontiguousarray(vis[:, ::-1]))]
    batch = engine.fuse_batch(pairs, color=True)
    for (i, v), b in zip(pairs, batch):
        single = engine.fuse(i, v, color=True)
        diff = np.abs(single.fused.astype(int) - b.fused.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # fp rounding only
        for k in single.gates:
            np.testing.assert_allclose(single.gates[k], b.gates[k], atol=1e-5)
    assert engine.fuse_batch([]) == []
    with pytest.raises(ValueError, match="one visible size"):
        engine.fuse_batch([(ir, vis), (ir[:-2], vis[:-2])])


def test_bf16_on_cpu_is_close_to_fp32(checkpoint, engine, road):
    ir, vis = road["FLIR_00060"]
    ref = engine.fuse(ir, vis).fused.astype(int)
    bf = FusionEngine(checkpoint, device="cpu", precision="bf16", detections=False).fuse(ir, vis).fused.astype(int)
    assert bf.shape == ref.shape
    # the test model's output layer is scaled up ~100× (see untrained_checkpoint), which amplifies bf16's
    # ~3-digit rounding as well; a trained model agrees more closely
    assert np.abs(bf - ref).mean() < 8.0
    assert np.corrcoef(bf.ravel(), ref.ravel())[0, 1] > 0.99
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        FusionEngine(checkpoint, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        FusionEngine(checkpoint, device="cpu", precision="int8")


@pytest.mark.parametrize(
    ("ir", "vis", "message"),
    [
        (np.zeros((0, 10), np.uint8), np.zeros((0, 10, 3), np.uint8), "empty image"),
        (np.zeros((8, 8), np.uint8), np.zeros((8, 0, 3), np.uint8), "empty image"),
        (np.array([], np.uint8), np.zeros((8, 8, 3), np.uint8), "empty image"),
        (np.full((8, 8), np.nan, np.float32), np.zeros((8, 8, 3), np.uint8), "no finite pixel"),
        (np.zeros((8, 8), np.uint8), np.full((8, 8, 3), np.nan, np.float32), "visible image contains NaN"),
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 2), np.uint8), "visible image must be H×W×3"),
        (np.zeros((2, 8, 8), np.uint8), np.zeros((8, 8, 3), np.uint8), "infrared image must be H×W"),
    ],
)
def test_invalid_inputs_are_rejected_with_clear_errors(engine, ir, vis, message):
    with pytest.raises(ValueError, match=message):
        engine.fuse(ir, vis)


def test_unknown_vis_order_is_rejected(engine, road):
    with pytest.raises(ValueError, match="vis_order"):
        engine.fuse(*road["FLIR_00006"], vis_order="rgba")


def test_max_side_runs_smaller_but_answers_at_the_visible_size(checkpoint, road):
    ir, vis = road["FLIR_00006"]
    h, w = vis.shape[:2]
    small = FusionEngine(checkpoint, device="cpu", detections=False, max_side=64)
    seen = []
    network = small.deploy if small.deploy is not None else small.model  # the module that serves requests
    network.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    res = small.fuse(ir, vis)
    assert seen == [(1, 1, round(h * 64 / w), 64)]  # long side 64, aspect ratio kept
    assert res.fused.shape == (h, w)
    assert res.fused.std() > 3


def test_detections_are_in_visible_pixels_with_class_names(checkpoint, road):
    det_engine = FusionEngine(checkpoint, device="cpu", detections=True, score_threshold=0.0)
    ir, vis = road["FLIR_00006"]
    h, w = vis.shape[:2]
    res = det_engine.fuse(ir, vis)
    assert res.detections, "an untrained detector still proposes boxes at score threshold 0"
    for d in res.detections:
        assert isinstance(d, Detection)
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
        assert d.class_name == det_engine.class_names[d.class_id] and 0 <= d.score <= 1
    assert det_engine.fuse(ir, vis, detections=False).detections == []
    strict = FusionEngine(checkpoint, device="cpu", detections=True, score_threshold=1.01)
    assert strict.fuse(ir, vis).detections == []


def test_fusion_only_checkpoint_runs_without_detectors(tmp_path, road):
    eng = FusionEngine(untrained_checkpoint(tmp_path / "nodet", road["FLIR_00060"], detector=False),
                       device="cpu")
    assert eng.detections is False
    res = eng.fuse(*road["FLIR_00060"], detections=True)
    assert res.detections == [] and res.fused.shape == road["FLIR_00060"][1].shape[:2]


def test_missing_checkpoint_and_unavailable_cuda_are_clear_errors(tmp_path, checkpoint):
    with pytest.raises(ValueError, match="no checkpoint here"):
        FusionEngine(tmp_path / "nothing", device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            FusionEngine(checkpoint, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none; run on a GPU machine)")
def test_cuda_fp32_fp16_bf16_match_the_cpu_fp32_reference(data_dir):
    """The shipped model on a real MSRS pair: CUDA output at each precision against CPU fp32, gates summing to 1,
    and batched CUDA calls equal to single ones."""
    ir = read_ir(data_dir / "msrs" / "ir" / "00004N.png")
    vis = read_vis(data_dir / "msrs" / "vis" / "00004N.png")
    ref = FusionEngine(device="cpu").fuse(ir, vis)
    for precision, mean_tol, max_tol in (("fp32", 0.05, 2), ("fp16", 0.5, 8), ("bf16", 1.5, 16)):
        eng = FusionEngine(device="cuda", precision=precision)
        out = eng.fuse(ir, vis)
        diff = np.abs(out.fused.astype(int) - ref.fused.astype(int))
        assert diff.mean() < mean_tol and diff.max() <= max_tol, (precision, diff.mean(), diff.max())
        for name, w in out.gates.items():
            assert w.dtype == np.float32 and abs(float(w.sum()) - 1.0) < 1e-4, (precision, name)
            np.testing.assert_allclose(w, ref.gates[name], atol=5e-3 if precision != "fp32" else 1e-4)
        if precision == "fp32":  # half precision may move a box across the score threshold
            assert len(out.detections) == len(ref.detections)
            for a, b in zip(out.detections, ref.detections):
                assert a.class_name == b.class_name and np.allclose(a.box, b.box, atol=1.0)
        batch = eng.fuse_batch([(ir, vis), (ir, vis)])
        for b in batch:
            assert np.abs(b.fused.astype(int) - out.fused.astype(int)).max() <= 1, precision
