"""Content checks: an image that was published or written is the engine's fused image of its pair.

The reference is computed in the test by the shipped (embedded) model, never hard-coded, so a retrained model
changes nothing here. :func:`assert_real_picture` guards every reference: an engine that returned zeros, or one
of its inputs, would make "equal to the engine" prove nothing.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from moe_fusion_core.image_io import rgb_to_luma

CHANNELS = {"mono8": 1, "rgb8": 3}


def pixels(msg: Any) -> np.ndarray:
    """H×W (mono8) or H×W×3 (rgb8) array of an Image message: an rclpy or rosbags message or the pipeline's dict."""
    get = msg.get if isinstance(msg, Mapping) else lambda k: getattr(msg, k)
    enc, h, w, step = str(get("encoding")), int(get("height")), int(get("width")), int(get("step"))
    if enc not in CHANNELS:
        raise ValueError(f"pixels: encoding {enc!r} is not one of {', '.join(CHANNELS)}")
    data = np.frombuffer(bytes(np.asarray(get("data"), np.uint8)), np.uint8)
    rows = data[: h * step].reshape(h, step)[:, : w * CHANNELS[enc]]
    return rows.reshape(h, w, 3) if enc == "rgb8" else rows.copy()


@lru_cache(maxsize=4)
def reference_engine(max_side: int | None = None) -> Any:
    """The embedded default model on CPU (fused image only), one per ``max_side``, shared by the session."""
    from moe_fusion_core.engine import FusionEngine

    return FusionEngine(device="cpu", detections=False, max_side=max_side)


def assert_real_picture(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> None:
    """``fused`` is an image with content, and neither of its sources (nor blank, nor a constant)."""
    luma = rgb_to_luma(vis) if vis.ndim == 3 else vis
    assert fused.std() > 8.0, f"fused image is (nearly) constant: std {fused.std():.2f}"
    for name, src in (("thermal", ir), ("visible", luma)):
        if src.shape == fused.shape:
            diff = np.abs(fused.astype(int) - src.astype(int)).mean()
            assert diff > 2.0, f"fused image is the {name} frame (mean |difference| {diff:.2f})"


def assert_same_picture(got: np.ndarray, want: np.ndarray, what: str = "image") -> None:
    """Same size, every pixel within 1 grey level."""
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1, f"{what}: {int((diff > 1).sum())} pixels differ by more than 1 (max {diff.max()})"


def fused_reference(engine: Any, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """The engine's fused image of one pair, checked to be a real picture."""
    fused = engine.fuse(ir, vis, detections=False).fused
    assert_real_picture(fused, *engine.prepare(ir, vis))
    return fused


class PairOracle:
    """Which candidate pair an image shows, read from its pixels: the engine's fused image of each candidate
    (key → (thermal, visible) arrays) is computed once; an image is the candidate within 1 grey level of it."""

    def __init__(self, engine: Any, candidates: Mapping[Hashable, tuple[np.ndarray, np.ndarray]]) -> None:
        self.refs = {k: fused_reference(engine, ir, vis) for k, (ir, vis) in candidates.items()}

    def identify(self, image: np.ndarray) -> Hashable:
        """The key of the candidate this image is; AssertionError when none is within 1 grey level."""
        dist = {k: int(np.abs(image.astype(int) - ref.astype(int)).max()) if ref.shape == image.shape else 256
                for k, ref in self.refs.items()}
        best = min(dist, key=dist.get)
        assert dist[best] <= 1, f"the image is the fused image of no candidate pair (closest {best}: max " \
                                f"|difference| {dist[best]} grey levels)"
        return best
