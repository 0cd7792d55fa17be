"""Mixture of Local Experts (spec §4): one instance for the foreground (Att) and one for the background."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import GateConfig
from .experts import LocalExpert, dispatch
from .gate import GateOutput, NoisyTopKGate, gate_input


@dataclass
class MixtureOutput:
    """A mixture layer's combined output and its gate."""

    y: torch.Tensor
    gate: GateOutput


class MoLE(nn.Module):
    """Gated mixture of local experts over attention-masked encoder features of both modalities.

    The first half of the experts are visible experts and only ever see the visible feature; the second half
    are infrared experts. The gate looks at both modalities (concatenated, resized to ``cfg.grid``).
    """

    def __init__(self, channels: int, hidden: int, cfg: GateConfig, combine: str) -> None:
        super().__init__()
        if cfg.num_experts % 2:
            raise ValueError(f"MoLE needs an even number of experts (visible/infrared split), got "
                             f"{cfg.num_experts}")
        self.cfg = cfg
        self.combine = combine
        self.num_visible = cfg.num_experts // 2
        gh, gw = cfg.grid
        self.gate = NoisyTopKGate(2 * channels * gh * gw, cfg.num_experts, cfg.top_k, cfg.noisy, cfg.loss_coef,
                                  cfg.input_norm)
        self.experts = nn.ModuleList(LocalExpert(channels, hidden) for _ in range(cfg.num_experts))

    def expert_modality(self, i: int) -> str:
        """``'visible'`` or ``'infrared'``: which feature expert ``i`` receives."""
        return "visible" if i < self.num_visible else "infrared"

    def forward(self, vis_feat: torch.Tensor, ir_feat: torch.Tensor) -> MixtureOutput:
        g = self.gate(gate_input(torch.cat([vis_feat, ir_feat], 1), self.cfg.grid, self.cfg.pool))
        y = dispatch(g, self.experts, lambda i: vis_feat if i < self.num_visible else ir_feat, self.combine)
        return MixtureOutput(y, g)


class AttLocal(nn.Module):
    """The ``Att-Local`` ablation: attention-masked local features through one local expert, no mixture.

    Our reading of the paper's ablation: the local attention is kept, the gated mixture of local experts is
    removed; one expert processes the sum of both modalities' masked features.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.expert = LocalExpert(channels, hidden)

    def forward(self, vis_feat: torch.Tensor, ir_feat: torch.Tensor) -> torch.Tensor:
        return self.expert(vis_feat + ir_feat)
