"""Mixture of Global Experts (spec §5): the gated decoder from the global feature x_f to the fused image."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import GateConfig
from .experts import GlobalExpert, dispatch
from .gate import NoisyTopKGate, gate_input
from .mole import MixtureOutput


class MoGE(nn.Module):
    """Top-K of N global experts, every expert sees the whole x_f; output 1 channel, unbounded."""

    def __init__(self, in_channels: int, widths: Sequence[int], cfg: GateConfig, combine: str,
                 reduce: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.combine = combine
        gh, gw = cfg.grid
        self.gate = NoisyTopKGate(in_channels * gh * gw, cfg.num_experts, cfg.top_k, cfg.noisy, cfg.loss_coef,
                                  cfg.input_norm)
        self.experts = nn.ModuleList(GlobalExpert(in_channels, widths, reduce) for _ in range(cfg.num_experts))

    def forward(self, x_f: torch.Tensor) -> MixtureOutput:
        g = self.gate(gate_input(x_f, self.cfg.grid, self.cfg.pool))
        return MixtureOutput(dispatch(g, self.experts, lambda i: x_f, self.combine), g)
