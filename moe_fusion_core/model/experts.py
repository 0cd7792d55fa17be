"""Expert networks and the combination of the selected experts' outputs (spec §4.1, §4.3, §5)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .gate import GateOutput


class LocalExpert(nn.Module):
    """Conv3×3(C→h) → ReLU → Conv3×3(h→C); 2,328 parameters for C = 16, h = 8."""

    def __init__(self, channels: int = 16, hidden: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class GlobalExpert(nn.Module):
    """3×3 convs with ReLU between them, ending in one channel with no activation.

    Widths 160 → 64 → 32 → 16 → 1 give 115,457 parameters (the paper's global expert). ``reduce`` > 0 puts a
    1×1 convolution (+ ReLU) to that many channels first (the ``fast`` configuration): the first 3×3 layer then
    reads ``reduce`` channels instead of all of x_f, which is most of the expert's arithmetic.
    """

    def __init__(self, in_channels: int = 160, widths: Sequence[int] = (64, 32, 16), reduce: int = 0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        if reduce > 0:
            layers += [nn.Conv2d(c, reduce, 1), nn.ReLU(inplace=True)]
            c = reduce
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True)]
            c = w
        layers.append(nn.Conv2d(c, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def combine(expert_outputs: torch.Tensor, top_k_gates: torch.Tensor, mode: str) -> torch.Tensor:
    """Combine B×K×C×H×W selected-expert outputs with their B×K gates, in fp32.

    ``logsumexp``: y = log Σ_i g_i·exp(E_i) (authors' code), computed as logsumexp(log g_i + E_i).
    ``linear``: y = Σ_i g_i·E_i (paper Eq. 2/4).
    """
    e = expert_outputs.float()
    g = top_k_gates.float().view(*top_k_gates.shape, *([1] * (e.dim() - 2)))
    if mode == "logsumexp":
        return torch.logsumexp(torch.log(g.clamp_min(2.2e-16)) + e, dim=1)
    if mode == "linear":
        return (g * e).sum(1)
    raise ValueError(f"unknown combine mode {mode!r} (logsumexp | linear)")


def dispatch(gate: GateOutput, experts: nn.ModuleList, inputs: Callable[[int], torch.Tensor],
             mode: str) -> torch.Tensor:
    """Run each selected expert only on the samples that selected it, then combine (sparse MoE).

    ``inputs(i)`` returns the B×C×H×W input of expert ``i`` (modality routing happens there). Unselected
    experts never run, so they get no gradient and cost no compute.
    """
    idx = gate.top_k_indices  # B×K
    batch, k = idx.shape
    outputs: torch.Tensor | None = None
    for i, expert in enumerate(experts):
        rows, slots = torch.nonzero(idx == i, as_tuple=True)
        if rows.numel() == 0:
            continue
        y = expert(inputs(i)[rows])
        if outputs is None:
            outputs = y.new_zeros((batch, k, *y.shape[1:]))
        outputs = outputs.index_put((rows, slots), y)
    assert outputs is not None, "every sample selects K experts"
    return combine(outputs, gate.top_k_gates, mode)
