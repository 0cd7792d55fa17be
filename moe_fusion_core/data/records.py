"""One registered infrared/visible pair and its boxes, independent of the layout it was read from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class PairRecord:
    """A training/evaluation sample before any image is read.

    ``boxes`` are ``x1, y1, x2, y2`` in the *native* pixels of the image files (0-based, float32), ``labels``
    0-based indices into the dataset's class list. ``labelled`` is False when no annotation exists for the frame
    (not the same as an annotated frame with zero objects).
    """

    stem: str
    ir: Path
    vis: Path
    dataset: str  # the dataset root's folder name (one name per --data folder)
    scene: str  # frames of one scene never straddle the train/val split
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    labelled: bool = False
    boxes_normalized: bool = False  # YOLO labels: boxes in [0, 1], scaled to pixels once the image is read
    light: str = "unknown"  # day | night | unknown (from meta.csv where present)

    @property
    def key(self) -> str:
        """Unique across datasets: ``<dataset>/<stem>``."""
        return f"{self.dataset}/{self.stem}"

    @property
    def has_boxes(self) -> bool:
        return len(self.boxes) > 0
