"""Fusion losses (spec §6): box-guided pixel loss, Sobel gradient loss, and how they add up."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from moe_fusion_core.config import LossConfig, load_config
from moe_fusion_core.image_io import read_ir, read_vis, rgb_to_luma
from moe_fusion_core.losses import (
    boost_detail,
    box_mask,
    contrast_blend,
    fusion_loss,
    gradient_loss,
    pixel_loss,
    pixel_target,
    sobel_gradient,
    ssim,
)


def images(seed: int = 0, b: int = 2, h: int = 24, w: int = 32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(b, 1, h, w, generator=g, dtype=torch.float64) for _ in range(3))


def numpy_sobel(x: np.ndarray) -> np.ndarray:
    """|Sobel_x ⋆ x| + |Sobel_y ⋆ x| with zero padding, written out as shifted sums."""
    p = np.pad(x, 1)
    h, w = x.shape

    def s(dy: int, dx: int) -> np.ndarray:
        return p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    gx = (s(-1, 1) + 2 * s(0, 1) + s(1, 1)) - (s(-1, -1) + 2 * s(0, -1) + s(1, -1))
    gy = (s(1, -1) + 2 * s(1, 0) + s(1, 1)) - (s(-1, -1) + 2 * s(-1, 0) + s(-1, 1))
    return np.abs(gx) + np.abs(gy)


def test_box_mask_truncates_and_clamps_like_the_authors_code():
    boxes = [torch.tensor([[2.7, 1.2, 5.9, 4.99], [-3.0, 8.0, 1.5, 50.0]]), torch.zeros(0, 4)]
    m = box_mask(boxes, (10, 12))
    expect = np.zeros((2, 1, 10, 12), np.float32)
    expect[0, 0, 1:4, 2:5] = 1  # rows y1..y2-1, columns x1..x2-1 after truncation
    expect[0, 0, 8:10, 0:1] = 1  # clamped to the image
    np.testing.assert_array_equal(m.numpy(), expect)


def test_pixel_loss_is_mean_abs_error_to_max_inside_boxes_and_mean_outside():
    f, v, i = images(1)
    boxes = [torch.tensor([[3.0, 2.0, 11.0, 9.0]]), torch.tensor([[20.0, 10.0, 32.0, 24.0], [0.0, 0.0, 4.0, 4.0]])]
    mask = box_mask(boxes, (24, 32))
    fn, vn, inn = f.numpy(), v.numpy(), i.numpy()
    target = (vn + inn) / 2
    target[0, :, 2:9, 3:11] = np.maximum(vn, inn)[0, :, 2:9, 3:11]
    target[1, :, 10:24, 20:32] = np.maximum(vn, inn)[1, :, 10:24, 20:32]
    target[1, :, 0:4, 0:4] = np.maximum(vn, inn)[1, :, 0:4, 0:4]
    expected = np.abs(fn - target).mean()
    assert pixel_loss(f, v, i, mask).item() == pytest.approx(expected, rel=1e-12)


def test_pixel_loss_targets_are_detached_from_the_sources():
    f, v, i = (t.clone().requires_grad_() for t in images(2))
    pixel_loss(f, v, i, box_mask([torch.tensor([[0.0, 0.0, 8.0, 8.0]])] * 2, (24, 32))).backward()
    assert v.grad is None and i.grad is None
    assert f.grad is not None and f.grad.abs().sum() > 0


def test_sobel_gradient_matches_a_direct_numpy_computation():
    x = images(3, b=1)[0]
    np.testing.assert_allclose(sobel_gradient(x)[0, 0].numpy(), numpy_sobel(x[0, 0].numpy()), rtol=1e-12)


def test_gradient_loss_is_zero_when_fused_is_the_source_with_the_larger_gradient():
    v = images(4)[0]
    ir = 0.5 * v  # ∇I = ½∇V ≤ ∇V everywhere (zero padding keeps the ratio at the border too)
    assert gradient_loss(v, v, ir).item() == pytest.approx(0.0, abs=1e-12)
    assert gradient_loss(v, ir, v).item() == pytest.approx(0.0, abs=1e-12)  # symmetric in the sources
    # the weaker source is penalised by exactly the gradient it misses
    missing = (sobel_gradient(v) - sobel_gradient(ir)).mean().item()
    assert gradient_loss(ir, v, ir).item() == pytest.approx(missing, rel=1e-10)
    assert missing > 0


def test_gradient_loss_equals_mean_abs_difference_to_the_max_source_gradient():
    f, v, i = images(5)
    ref = np.abs(numpy_sobel(f[1, 0].numpy()) - np.maximum(numpy_sobel(v[1, 0].numpy()), numpy_sobel(i[1, 0].numpy())))
    ref0 = np.abs(numpy_sobel(f[0, 0].numpy()) - np.maximum(numpy_sobel(v[0, 0].numpy()), numpy_sobel(i[0, 0].numpy())))
    assert gradient_loss(f, v, i).item() == pytest.approx((ref.mean() + ref0.mean()) / 2, rel=1e-10)


def test_fusion_loss_weights_its_parts_as_configured():
    f, v, i = (t.float() for t in images(6))
    boxes = [torch.tensor([[4.0, 4.0, 12.0, 16.0]]), torch.zeros(0, 4)]
    load = torch.tensor(0.37)
    cfg = LossConfig(alpha=7.0, pixel_weight=2.0, load_weight=3.0)
    out = fusion_loss(f, v, i, boxes, load, cfg)
    mask = box_mask(boxes, (24, 32))
    assert out.pixel.item() == pytest.approx(pixel_loss(f, v, i, mask).item(), rel=1e-6)
    assert out.grad.item() == pytest.approx(gradient_loss(f, v, i).item(), rel=1e-6)
    assert out.total.item() == pytest.approx(2.0 * out.pixel.item() + 7.0 * out.grad.item() + 3.0 * 0.37, rel=1e-6)
    # default weights are the paper's: L_pixel + 10·L_grad + L_load
    d = fusion_loss(f, v, i, boxes, load, LossConfig())
    assert d.total.item() == pytest.approx(d.pixel.item() + 10 * d.grad.item() + 0.37, rel=1e-6)


def test_unlabelled_frames_follow_the_configured_pixel_target():
    f, v, i = (t.float() for t in images(7))
    no_boxes = [torch.zeros(0, 4), torch.zeros(0, 4)]
    load = torch.tensor(0.0)
    as_mean = fusion_loss(f, v, i, no_boxes, load, LossConfig(unlabelled_target="mean"), labelled=[False, False])
    as_max = fusion_loss(f, v, i, no_boxes, load, LossConfig(unlabelled_target="max"), labelled=[False, False])
    assert as_mean.pixel.item() == pytest.approx((f - (v + i) / 2).abs().mean().item(), rel=1e-6)
    assert as_max.pixel.item() == pytest.approx((f - torch.maximum(v, i)).abs().mean().item(), rel=1e-6)
    # a labelled frame keeps its boxes (here none: background everywhere) even with "max"
    mixed = fusion_loss(f, v, i, no_boxes, load, LossConfig(unlabelled_target="max"), labelled=[True, False])
    t = torch.cat([(v[:1] + i[:1]) / 2, torch.maximum(v[1:], i[1:])])
    assert mixed.pixel.item() == pytest.approx((f - t).abs().mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="unlabelled_target"):
        fusion_loss(f, v, i, no_boxes, load, LossConfig(unlabelled_target="median"))


def test_background_target_max_uses_max_outside_boxes_too():
    f, v, i = (t.float() for t in images(8))
    boxes = [torch.tensor([[2.0, 3.0, 9.0, 11.0]]), torch.zeros(0, 4)]
    load = torch.tensor(0.0)
    paper = fusion_loss(f, v, i, boxes, load, LossConfig())
    as_max = fusion_loss(f, v, i, boxes, load, LossConfig(background_target="max"))
    mask = box_mask(boxes, tuple(f.shape[-2:]))
    assert paper.pixel.item() == pytest.approx(
        (f - torch.where(mask > 0, torch.maximum(v, i), (v + i) / 2)).abs().mean().item(), rel=1e-6)
    assert as_max.pixel.item() == pytest.approx((f - torch.maximum(v, i)).abs().mean().item(), rel=1e-6)
    assert as_max.pixel.item() != pytest.approx(paper.pixel.item(), rel=1e-3)
    with pytest.raises(ValueError, match="background_target"):
        fusion_loss(f, v, i, boxes, load, LossConfig(background_target="min"))


def test_contrast_target_follows_the_source_with_structure_not_the_brighter_one(sample_dir):
    # Real smoke pair (M3SVD 0117_1620): the visible image is a bright, flat veil where the thermal one shows the
    # building; and the same visible frame against a flat thermal image, where the visible image holds all detail.
    ir = torch.from_numpy(read_ir(sample_dir / "pairs" / "ir" / "0117_1620_v0287.png")).double()[None, None] / 255
    vis = torch.from_numpy(rgb_to_luma(read_vis(sample_dir / "pairs" / "vis" / "0117_1620_v0287.png"))).double()
    vis = vis[None, None] / 255
    t = contrast_blend(vis, ir)
    veil = (slice(None), slice(None), slice(20, 120), slice(380, 620))  # smoke over the building, top right
    assert vis[veil].mean() > ir[veil].mean() + 0.1  # max(V, I) would copy the veil here
    assert (t[veil] - ir[veil]).abs().mean() < 0.35 * (t[veil] - vis[veil]).abs().mean()
    flat_ir = torch.full_like(ir, 0.2)
    t2 = contrast_blend(vis, flat_ir)  # a flat thermal image: the target is the visible image wherever it has detail
    assert (t2 - vis).abs().mean() < (t2 - flat_ir).abs().mean()
    cfg = LossConfig(background_target="contrast")
    assert torch.equal(pixel_target(vis, ir, torch.zeros_like(ir), cfg.background_target), t)


def test_contrast_mix_softens_the_contrast_target_towards_max(sample_dir):
    ir = torch.from_numpy(read_ir(sample_dir / "pairs" / "ir" / "0117_1620_v0287.png")).double()[None, None] / 255
    vis = torch.from_numpy(rgb_to_luma(read_vis(sample_dir / "pairs" / "vis" / "0117_1620_v0287.png"))).double()
    vis = vis[None, None] / 255
    mask = torch.zeros_like(ir)
    mask[..., 200:260, 100:140] = 1  # a box: max(V, I) there whatever the mix
    full, half = (pixel_target(vis, ir, mask, "contrast", m) for m in (1.0, 0.5))
    as_max = pixel_target(vis, ir, mask, "max")
    assert torch.allclose(half, (full + as_max) / 2, atol=1e-12)
    assert torch.equal(pixel_target(vis, ir, mask, "contrast", 0.0), as_max)
    assert torch.equal(half[mask > 0], as_max[mask > 0])
    with pytest.raises(ValueError, match="contrast_mix"):
        pixel_target(vis, ir, mask, "contrast", 1.5)


@pytest.fixture(scope="module")
def msrs_max(sample_dir) -> np.ndarray:
    """max(V, I) of a real night pair (M3SVD, from the repository's sample), a 160×200 crop, in [0, 1]."""
    ir = read_ir(sample_dir / "pairs" / "ir" / "0111_1803_0000.png")
    vis = rgb_to_luma(read_vis(sample_dir / "pairs" / "vis" / "0111_1803_0000.png"))
    return np.maximum(ir, vis)[200:360, 300:500].astype(np.float64) / 255


def test_detail_boost_is_unsharp_masking_with_opencvs_gaussian_blur(msrs_max):
    """The loss's target equals the rule that training/detail_target.py scores (cv2 blur, reflected borders)."""
    t = torch.from_numpy(msrs_max)[None, None]
    for gain, sigma in ((0.3, 9.0), (0.5, 1.0)):
        ref = np.clip(msrs_max + gain * (msrs_max - cv2.GaussianBlur(msrs_max, (0, 0), sigma)), 0, 1)
        np.testing.assert_allclose(boost_detail(t, gain, sigma)[0, 0].numpy(), ref, atol=2e-3)
    boosted = boost_detail(t, 0.3, 9.0)
    assert boosted.std() > t.std() * 1.01  # more local contrast …
    assert abs(boosted.mean() - t.mean()) < 0.01  # … around the same brightness


def test_detail_boost_of_zero_keeps_the_papers_target_and_bands_add_up(msrs_max):
    t = torch.from_numpy(msrs_max)[None, None]
    assert torch.equal(boost_detail(t, 0.0, 2.0), t) and torch.equal(boost_detail(t, [0.0, 0.0], [1.0, 9.0]), t)
    two = boost_detail(t, [0.3, 0.2], [1.0, 9.0])
    one, other = boost_detail(t, 0.3, 1.0) - t, boost_detail(t, 0.2, 9.0) - t
    inside = (two > 0) & (two < 1) & (t + one + other > 0) & (t + one + other < 1)
    torch.testing.assert_close(two[inside], (t + one + other)[inside])


def test_detail_boost_rejects_bad_settings_by_name():
    t = torch.rand(1, 1, 40, 40)
    with pytest.raises(ValueError, match=r"loss\.detail_gain"):
        boost_detail(t, [0.3, 0.2], [9.0])
    with pytest.raises(ValueError, match=r"loss\.detail_gain"):
        boost_detail(t, -0.1, 2.0)
    with pytest.raises(ValueError, match=r"loss\.detail_gain"):
        boost_detail(t, 0.3, 0.0)
    with pytest.raises(ValueError, match="too small"):
        boost_detail(torch.rand(1, 1, 20, 20), 0.3, 9.0)


def test_fusion_loss_uses_the_configured_detail_boost(tmp_path):
    f, v, i = images(4, h=48, w=64)
    boxes = [torch.zeros(0, 4)] * 2
    plain = fusion_loss(f, v, i, boxes, torch.zeros(()), LossConfig(background_target="max"))
    cfg = LossConfig(background_target="max", detail_gain=0.3, detail_sigma=2.0)
    boosted = fusion_loss(f, v, i, boxes, torch.zeros(()), cfg)
    target = boost_detail(pixel_target(v, i, torch.ones(2, 1, 48, 64), "max"), 0.3, 2.0)
    assert boosted.pixel.item() == pytest.approx((f - target).abs().mean().item(), rel=1e-6)  # fp32 inside
    assert boosted.pixel.item() != pytest.approx(plain.pixel.item(), rel=1e-3)
    (tmp_path / "c.yaml").write_text("base: embedded\nloss: {detail_gain: [0.3, 0.2], detail_sigma: [1.0, 9.0]}\n")
    loaded = load_config(tmp_path / "c.yaml").loss
    assert list(loaded.detail_gain) == [0.3, 0.2] and list(loaded.detail_sigma) == [1.0, 9.0]


def test_ssim_term_matches_a_reference_ssim_and_is_off_by_default(sample_dir):
    ir = read_ir(sample_dir / "pairs" / "ir" / "0111_1803_0000.png")[200:328, 300:428].astype(np.float64) / 255
    vis = rgb_to_luma(read_vis(sample_dir / "pairs" / "vis" / "0111_1803_0000.png"))[200:328, 300:428] / 255.0

    def reference(a: np.ndarray, b: np.ndarray) -> float:  # Wang et al. 2004, 11×11 Gaussian σ 1.5, OpenCV blur
        g = lambda z: cv2.GaussianBlur(z, (11, 11), 1.5)  # noqa: E731
        ma, mb = g(a), g(b)
        va, vb, cab = g(a * a) - ma**2, g(b * b) - mb**2, g(a * b) - ma * mb
        c1, c2 = 0.01**2, 0.03**2
        return float((((2 * ma * mb + c1) * (2 * cab + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))).mean())

    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None, None]  # noqa: E731
    assert ssim(t(vis), t(ir)).item() == pytest.approx(reference(vis, ir), abs=1e-9)
    assert ssim(t(vis), t(vis)).item() == pytest.approx(1.0, abs=1e-9)
    f = torch.maximum(t(vis), t(ir)).float().requires_grad_()
    v, i = t(vis).float(), t(ir).float()
    load = torch.tensor(0.0)
    off = fusion_loss(f, v, i, [torch.zeros(0, 4)], load, LossConfig())
    on = fusion_loss(f, v, i, [torch.zeros(0, 4)], load, LossConfig(ssim_weight=2.0))
    assert off.ssim is None
    m = np.maximum(vis, ir)
    assert on.ssim.item() == pytest.approx(1 - (reference(m, vis) + reference(m, ir)) / 2, abs=1e-5)
    assert on.total.item() == pytest.approx(off.total.item() + 2.0 * on.ssim.item(), rel=1e-6)
    on.total.backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
