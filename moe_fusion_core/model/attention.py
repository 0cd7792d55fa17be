"""Cross-modal mixing and per-modality spatial attention on FPN levels (spec §3.2), and Att (§3.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossModalMixing(nn.Module):
    """c = ReLU(Conv1×1([P^V, P^I])), added to both streams; one conv shared by all levels and modalities."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, channels, 1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, p_vis: torch.Tensor, p_ir: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = torch.relu(self.conv(torch.cat([p_vis, p_ir], 1)))
        return p_vis + c, p_ir + c


class SpatialAttention(nn.Module):
    """Conv1×1-BN-ReLU, Conv1×1-BN-Sigmoid → a B×1×h×w map in (0, 1); shared across FPN levels."""

    def __init__(self, channels: int, hidden: int = 128) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1)
        nn.init.normal_(self.conv1.weight, std=0.01)
        nn.init.normal_(self.conv2.weight, std=0.01)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(f))))))


class AttentionCombiner(nn.Module):
    """Att from the two detectors' attention maps, resized to the fusion resolution (spec §3.3, §9.3).

    ``max`` (authors' code): element-wise maximum. ``conv`` (paper): [Att_V, Att_I] → two 1×1 conv branches
    with sigmoid → element-wise maximum. The inputs are detached: fusion losses never reach the detectors.
    """

    def __init__(self, mode: str = "max") -> None:
        super().__init__()
        if mode not in ("max", "conv"):
            raise ValueError(f"unknown att_mode {mode!r} (max | conv)")
        self.mode = mode
        if mode == "conv":
            self.branch_a = nn.Conv2d(2, 1, 1)
            self.branch_b = nn.Conv2d(2, 1, 1)

    def forward(self, att_vis: torch.Tensor, att_ir: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        att_vis, att_ir = att_vis.detach().float(), att_ir.detach().float()
        if self.mode == "max":
            att = torch.maximum(att_vis, att_ir)
        else:
            x = torch.cat([att_vis, att_ir], 1)
            att = torch.maximum(torch.sigmoid(self.branch_a(x)), torch.sigmoid(self.branch_b(x)))
        if tuple(att.shape[-2:]) != tuple(size):
            att = F.interpolate(att, size=size, mode="bilinear", align_corners=True)
        return att
