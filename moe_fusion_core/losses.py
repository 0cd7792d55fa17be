"""Fusion losses (spec §6): box-guided pixel loss, Sobel gradient loss, and the total fusion loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import LossConfig

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def box_mask(boxes: Sequence[torch.Tensor], size: tuple[int, int], device: torch.device | None = None
             ) -> torch.Tensor:
    """B×1×H×W mask, 1 inside any box of that image (xyxy pixels, clamped, truncated to integers;
    rows y1..y2-1 and columns x1..x2-1, as the authors' code)."""
    h, w = size
    mask = torch.zeros(len(boxes), 1, h, w, device=device)
    for b, bx in enumerate(boxes):
        for x1, y1, x2, y2 in bx.detach().cpu().tolist():
            c1, c2 = int(min(max(x1, 0), w)), int(min(max(x2, 0), w))
            r1, r2 = int(min(max(y1, 0), h)), int(min(max(y2, 0), h))
            if c2 > c1 and r2 > r1:
                mask[b, 0, r1:r2, c1:c2] = 1
    return mask


def pixel_target(vis: torch.Tensor, ir: torch.Tensor, mask: torch.Tensor, background: str = "mean",
                 contrast_mix: float = 1.0) -> torch.Tensor:
    """max(V, I) inside the boxes; outside, (V + I)/2 (``background="mean"``, spec §6.1), max(V, I) (``"max"``) or
    the contrast-weighted blend of :func:`contrast_blend` (``"contrast"``), of which ``contrast_mix`` is taken and
    the rest max(V, I). Detached."""
    if background not in BACKGROUND_TARGETS:
        raise ValueError(f"loss.background_target must be one of {', '.join(BACKGROUND_TARGETS)}, got {background!r}")
    if not 0.0 <= contrast_mix <= 1.0:
        raise ValueError(f"loss.contrast_mix must be in [0, 1], got {contrast_mix}")
    fg = torch.maximum(vis, ir)
    if background == "max":
        return fg.detach()
    if background == "mean":
        bg = (vis + ir) / 2
    else:
        bg = contrast_blend(vis, ir)
        if contrast_mix < 1.0:
            bg = contrast_mix * bg + (1.0 - contrast_mix) * fg
    return torch.where(mask > 0, fg, bg).detach()


BACKGROUND_TARGETS = ("mean", "max", "contrast")
CONTRAST_SIGMA = 3.0  # pixels of the training crop: the window of the local contrast


def local_variance(x: torch.Tensor, sigma: float = CONTRAST_SIGMA) -> torch.Tensor:
    """Local variance of a B×C×H×W image in a Gaussian window of ``sigma`` (the local contrast, squared)."""
    m = gaussian_blur(x, sigma)
    return (gaussian_blur(x * x, sigma) - m * m).clamp_min(0)


def contrast_blend(vis: torch.Tensor, ir: torch.Tensor, sigma: float = CONTRAST_SIGMA) -> torch.Tensor:
    """w·V + (1 − w)·I with w = c_V² / (c_V² + c_I²), c² the local variance (smoothed over 2σ so that the weight does
    not flicker in flat regions): each pixel follows the source that shows structure there (a flat veil of smoke or a
    dark night sky gives way to the thermal image), not the brighter one."""
    cv, ci = (gaussian_blur(local_variance(x, sigma), 2 * sigma) for x in (vis, ir))
    w = (cv + 1e-6) / (cv + ci + 2e-6)
    return w * vis + (1 - w) * ir


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a B×C×H×W tensor (radius ceil(3σ), reflected borders)."""
    r = max(1, math.ceil(3 * sigma))
    if min(x.shape[-2:]) <= r:
        raise ValueError(f"image of {tuple(x.shape[-2:])} pixels is too small for a Gaussian blur of sigma {sigma}")
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    y = F.pad(x, (r, r, r, r), mode="reflect")
    y = F.conv2d(y, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def boost_detail(target: torch.Tensor, gain: float | Sequence[float], sigma: float | Sequence[float]
                 ) -> torch.Tensor:
    """Unsharp masking of a [0, 1] target, one band or several: T + Σ gain_i·(T − blur_σi(T)), clipped to
    [0, 1]; all gains 0 returns T."""
    gains = [float(gain)] if isinstance(gain, (int, float)) else [float(g) for g in gain]
    sigmas = [float(sigma)] if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    if len(gains) != len(sigmas) or any(g < 0 for g in gains) or any(s <= 0 for s in sigmas):
        raise ValueError("loss.detail_gain and loss.detail_sigma must have one entry per band, gains >= 0 and "
                         f"sigmas > 0; got {gain} and {sigma}")
    if not any(gains):
        return target
    out = target
    for g, s in zip(gains, sigmas):
        if g:
            out = out + g * (target - gaussian_blur(target, s))
    return out.clamp(0, 1)


def pixel_loss(fused: torch.Tensor, vis: torch.Tensor, ir: torch.Tensor, mask: torch.Tensor,
               background: str = "mean", detail_gain: float | Sequence[float] = 0.0,
               detail_sigma: float | Sequence[float] = 2.0, contrast_mix: float = 1.0) -> torch.Tensor:
    """Mean over all pixels of |F − T| (spec §6.1), T optionally detail-boosted (``boost_detail``)."""
    target = boost_detail(pixel_target(vis, ir, mask, background, contrast_mix), detail_gain, detail_sigma)
    return (fused - target).abs().mean()


def sobel_gradient(x: torch.Tensor) -> torch.Tensor:
    """|Sobel_x * x| + |Sobel_y * x| with zero padding (cross-correlation), per channel."""
    kx = _SOBEL_X.to(x)
    k = torch.stack([kx, kx.t()]).unsqueeze(1)  # 2×1×3×3
    g = F.conv2d(x.reshape(-1, 1, *x.shape[-2:]), k, padding=1)
    return (g.abs().sum(1, keepdim=True)).reshape(x.shape)


def gradient_loss(fused: torch.Tensor, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of |∇F − max(∇V, ∇I)| (spec §6.2)."""
    target = torch.maximum(sobel_gradient(vis), sobel_gradient(ir)).detach()
    return (sobel_gradient(fused) - target).abs().mean()


SSIM_SIGMA = 1.5  # pixels: the Gaussian window of the SSIM term (Wang et al. 2004)
_SSIM_C1, _SSIM_C2 = 0.01**2, 0.03**2  # (K1·L)², (K2·L)² for data range L = 1


def ssim(x: torch.Tensor, y: torch.Tensor, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Mean SSIM of two B×C×H×W images in [0, 1] (Gaussian window, reflected borders)."""
    mx, my = gaussian_blur(x, sigma), gaussian_blur(y, sigma)
    vx = gaussian_blur(x * x, sigma) - mx * mx
    vy = gaussian_blur(y * y, sigma) - my * my
    cxy = gaussian_blur(x * y, sigma) - mx * my
    s = ((2 * mx * my + _SSIM_C1) * (2 * cxy + _SSIM_C2)) / ((mx * mx + my * my + _SSIM_C1) * (vx + vy + _SSIM_C2))
    return s.mean()


def ssim_loss(fused: torch.Tensor, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
    """1 − (SSIM(F, V) + SSIM(F, I)) / 2: the fused image keeps the structure of both sources."""
    return 1 - (ssim(fused, vis.detach()) + ssim(fused, ir.detach())) / 2


@dataclass
class FusionLosses:
    """The fusion loss and its parts (all scalars; ``ssim`` is None when its weight is 0)."""

    total: torch.Tensor
    pixel: torch.Tensor
    grad: torch.Tensor
    load: torch.Tensor
    ssim: torch.Tensor | None = None


def fusion_loss(fused: torch.Tensor, vis: torch.Tensor, ir: torch.Tensor, boxes: Sequence[torch.Tensor],
                load_loss: torch.Tensor, cfg: LossConfig, labelled: Sequence[bool] | None = None) -> FusionLosses:
    """L_fusion = w_pix·L_pixel + α·L_grad + w_load·L_load (+ w_ssim·L_ssim when set), computed in fp32.

    ``labelled[b]`` False marks a frame without box annotations; its pixel target follows
    ``cfg.unlabelled_target`` (whole frame background = mean, or foreground = max); ``cfg.background_target``
    sets the target outside boxes.
    """
    if cfg.unlabelled_target not in ("mean", "max"):
        raise ValueError(f"loss.unlabelled_target must be 'mean' or 'max', got {cfg.unlabelled_target!r}")
    fused, vis, ir = fused.float(), vis.float(), ir.float()
    mask = box_mask(boxes, tuple(fused.shape[-2:]), fused.device)
    if labelled is not None and cfg.unlabelled_target == "max":
        for b, has_labels in enumerate(labelled):
            if not has_labels:
                mask[b] = 1
    lp = pixel_loss(fused, vis, ir, mask, cfg.background_target, cfg.detail_gain, cfg.detail_sigma,
                    cfg.contrast_mix)
    lg = gradient_loss(fused, vis, ir)
    total = cfg.pixel_weight * lp + cfg.alpha * lg + cfg.load_weight * load_loss
    ls = None
    if cfg.ssim_weight:
        ls = ssim_loss(fused, vis, ir)
        total = total + cfg.ssim_weight * ls
    return FusionLosses(total, lp, lg, load_loss, ls)
