"""Shazeer et al. (2017) noisy top-K gating with importance / load balancing (spec §4.2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation, unbiased variance over experts; 0 for a single expert."""
    x = x.float()
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.var() / (x.mean() ** 2 + 1e-10)


@dataclass
class GateOutput:
    """Sparse gate weights and the statistics for the load-balancing loss."""

    gates: torch.Tensor  # B×N, exactly K non-zero entries per row summing to 1
    top_k_indices: torch.Tensor  # B×K expert indices, highest gate first
    top_k_gates: torch.Tensor  # B×K
    importance: torch.Tensor  # N: Σ_b gates
    load: torch.Tensor  # N: expected (train, noisy) or actual number of samples per expert
    loss: torch.Tensor  # coef · (cv²(importance) + cv²(load))
    clean_logits: torch.Tensor | None = None  # B×N logits before noise (diagnostics: logit scale, saturation)
    noise_std: torch.Tensor | None = None  # B×N learned noise std (training with noise only)


def gate_input(x: torch.Tensor, grid: tuple[int, int], pool: str) -> torch.Tensor:
    """Resize a B×C×H×W feature to the fixed gate grid and flatten it (spec §9.2), in fp32."""
    x = x.float()
    if tuple(x.shape[-2:]) != tuple(grid):
        if pool == "bilinear":
            x = F.interpolate(x, size=grid, mode="bilinear", align_corners=True)
        elif pool == "area":
            x = F.adaptive_avg_pool2d(x, grid)
        else:
            raise ValueError(f"unknown gate pool {pool!r} (bilinear | area)")
    return x.flatten(1)


INPUT_NORMS = ("none", "unit")


def normalize_gate_input(s: torch.Tensor, mode: str) -> torch.Tensor:
    """``none``: the flattened feature as is (paper). ``unit``: per sample, minus its mean over the D inputs,
    divided by its L2 norm, so every sample's gate input has norm 1 whatever the feature scale."""
    if mode == "none":
        return s
    if mode == "unit":
        s = s - s.mean(1, keepdim=True)
        return s / s.norm(dim=1, keepdim=True).clamp_min(1e-6)
    raise ValueError(f"unknown gate input_norm {mode!r} ({' | '.join(INPUT_NORMS)})")


class NoisyTopKGate(nn.Module):
    """Per-sample top-K gate over N experts with learned noise (training only).

    ``W_g`` and ``W_n`` start at zero, so all clean logits are equal until training moves them.
    ``input_norm="unit"`` feeds the gate a zero-mean, unit-norm copy of its input (not in the paper; see
    docs/design.md: it bounds the logits, which otherwise run away under Adam and saturate the top-K softmax).
    """

    def __init__(self, in_features: int, num_experts: int, top_k: int, noisy: bool = True,
                 loss_coef: float = 0.01, input_norm: str = "none") -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, {num_experts}], got {top_k}")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown gate input_norm {input_norm!r} ({' | '.join(INPUT_NORMS)})")
        self.num_experts = num_experts
        self.top_k = top_k
        self.noisy = noisy
        self.loss_coef = loss_coef
        self.input_norm = input_norm
        self.w_gate = nn.Parameter(torch.zeros(in_features, num_experts))
        self.w_noise = nn.Parameter(torch.zeros(in_features, num_experts))

    def forward(self, s: torch.Tensor) -> GateOutput:
        with torch.autocast(device_type=s.device.type, enabled=False):
            return self._forward(s.float())

    def _forward(self, s: torch.Tensor) -> GateOutput:
        s = normalize_gate_input(s, self.input_norm)
        clean = s @ self.w_gate
        use_noise = self.noisy and self.training
        if use_noise:
            noise_std = F.softplus(s @ self.w_noise) + 0.01
            logits = clean + torch.randn_like(clean) * noise_std
        else:
            logits = clean
        k, n = self.top_k, self.num_experts
        top_vals, top_idx = logits.topk(min(k + 1, n), dim=1)
        top_k_idx = top_idx[:, :k]
        top_k_gates = torch.softmax(top_vals[:, :k], dim=1)
        gates = torch.zeros_like(logits).scatter(1, top_k_idx, top_k_gates)
        importance = gates.sum(0)
        if use_noise and k < n:
            load = self._prob_in_top_k(clean, logits, noise_std, top_vals).sum(0)
        else:
            load = (gates > 0).sum(0).float()
        loss = self.loss_coef * (cv_squared(importance) + cv_squared(load))
        return GateOutput(gates, top_k_idx, top_k_gates, importance, load, loss, clean.detach(),
                          noise_std.detach() if use_noise else None)

    def _prob_in_top_k(self, clean: torch.Tensor, noisy: torch.Tensor, std: torch.Tensor,
                       top_vals: torch.Tensor) -> torch.Tensor:
        """P(expert i is in the top-K) with the other experts' noisy logits held fixed."""
        k = self.top_k
        threshold_if_in = top_vals[:, k : k + 1]  # (K+1)-th largest: what i must beat if it is in
        threshold_if_out = top_vals[:, k - 1 : k]  # K-th largest: what i must beat to get in
        is_in = noisy > threshold_if_in
        normal = torch.distributions.Normal(clean.new_zeros(()), clean.new_ones(()))
        prob_if_in = normal.cdf((clean - threshold_if_in) / std)
        prob_if_out = normal.cdf((clean - threshold_if_out) / std)
        return torch.where(is_in, prob_if_in, prob_if_out)
