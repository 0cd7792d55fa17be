"""Real MSRS pairs for tests, read as the engine reads files and shrunk to a test size."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from moe_fusion_core.image_io import read_ir, read_vis


def msrs_pairs(data_dir: Path, stems: Iterable[str], size: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(thermal, visible) of each MSRS ``stem`` under ``data_dir``, area-resized to ``size`` = (W, H)."""
    out = []
    for stem in stems:
        ir = read_ir(data_dir / "msrs" / "ir" / f"{stem}.png")
        vis = read_vis(data_dir / "msrs" / "vis" / f"{stem}.png")
        out.append((cv2.resize(ir, size, interpolation=cv2.INTER_AREA),
                    cv2.resize(vis, size, interpolation=cv2.INTER_AREA)))
    return out
