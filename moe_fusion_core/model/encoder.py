"""Per-modality encoder (spec §2): a 3×3 conv + ReLU, then three dense 3×3 convs without activation."""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """Maps a 1-channel image to ``x_enc`` (C channels) and ``x_dense`` (4·C channels), full resolution.

    ``x_enc`` is the last dense conv's output; ``x_dense`` the concatenation [a, b, c, d]. With C = 16 this
    has 14,032 parameters, as the authors' code.
    """

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        c = channels
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.dense1 = nn.Conv2d(c, c, 3, padding=1)
        self.dense2 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.dense3 = nn.Conv2d(3 * c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.relu(self.conv1(x))
        b = self.dense1(a)
        ab = torch.cat([a, b], 1)
        c = self.dense2(ab)
        abc = torch.cat([ab, c], 1)
        d = self.dense3(abc)
        return d, torch.cat([abc, d], 1)
