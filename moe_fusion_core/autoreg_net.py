"""Learned cross-modal structure maps for automatic registration (:mod:`moe_fusion_core.autoreg`, issue #21).

Two small convolutional branches, one per modality, turn a thermal and a visible image into single-channel maps
that correlate when the images are aligned and not when they are shifted. They replace the hand-made gradient
structure map in the coarse search and the ECC refinement (both take one channel). Trained on registered real
pairs by ``training/autoreg_features.py`` (a contrastive loss over shifts and over other pairs); the weights ship
in the package (``autoreg_model/model.safetensors``, a few kB); nothing is downloaded.

Input of a branch (:func:`branch_input`): the grey image at the working size (0..1) and its local-contrast
normalised version (box of 1/8 of the image, as the gradient map's normalisation), so that dark regions count.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

MODALITIES = ("thermal", "rgb")
WEIGHTS = Path(__file__).parent / "autoreg_model" / "model.safetensors"
WIDTH = 16


class StructureBranch(nn.Module):
    """(N, 2, H, W) branch input → (N, 1, H, W) structure map; receptive field 15 px (dilations 1, 2, 4)."""

    def __init__(self, width: int = WIDTH) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 2
        for d in (1, 2, 4):
            layers += [nn.Conv2d(c, width, 3, padding=d, dilation=d, padding_mode="reflect"), nn.ReLU(inplace=True)]
            c = width
        layers.append(nn.Conv2d(width, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class StructureNets(nn.Module):
    """One :class:`StructureBranch` per modality (``thermal``, ``rgb``)."""

    def __init__(self, width: int = WIDTH) -> None:
        super().__init__()
        self.thermal = StructureBranch(width)
        self.rgb = StructureBranch(width)

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r} (expected one of {MODALITIES})")
        return getattr(self, modality)(x)


def branch_input(gray: np.ndarray) -> np.ndarray:
    """(2, H, W) float32 branch input from a grey image (0..255, already at the working size)."""
    g = gray.astype(np.float32) / 255.0
    k = max(3, (min(g.shape) // 8) | 1)
    mu = cv2.blur(g, (k, k))
    var = np.maximum(cv2.blur(g * g, (k, k)) - mu * mu, 0.0)
    lcn = np.clip((g - mu) / (np.sqrt(var) + 0.05), -3.0, 3.0) / 3.0
    return np.stack([g, lcn]).astype(np.float32)


@lru_cache(maxsize=2)
def load_nets(path: str = str(WEIGHTS)) -> StructureNets:
    """The trained branches (float32, eval mode); cached. Raises FileNotFoundError naming the missing file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"registration feature weights not found: {p}")
    state = {k: v.float() for k, v in load_file(str(p)).items()}
    width = int(state["thermal.body.0.weight"].shape[0])
    nets = StructureNets(width)
    nets.load_state_dict(state)
    return nets.eval()


def learned_map(gray: np.ndarray, modality: str, nets: StructureNets | None = None) -> np.ndarray:
    """The learned structure map (float32, same size) of a grey image (0..255) at the working size."""
    nets = nets if nets is not None else load_nets(str(WEIGHTS))
    x = torch.from_numpy(branch_input(gray))[None]
    with torch.inference_mode():
        y = nets(x, modality)[0, 0].numpy()
    return np.ascontiguousarray(y, dtype=np.float32)
