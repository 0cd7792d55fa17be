"""Training transforms: geometric ones applied identically to both images and the boxes, and exposure changes."""

from __future__ import annotations

import cv2
import numpy as np

MIN_BOX_SIDE = 2.0  # px: boxes thinner than this after a crop are dropped
MIN_BOX_KEEP = 0.3  # a cropped box keeps at least this fraction of its area, or it is dropped


def resize_pair(ir: np.ndarray, vis: np.ndarray, boxes: np.ndarray, size: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize both images to ``size`` = (H, W) (bilinear, aspect not kept) and scale the boxes with them."""
    h0, w0 = ir.shape[:2]
    h, w = size
    if (h0, w0) == (h, w):
        return ir, vis, boxes
    ir = cv2.resize(ir, (w, h), interpolation=cv2.INTER_LINEAR)
    vis = cv2.resize(vis, (w, h), interpolation=cv2.INTER_LINEAR)
    scale = np.array([w / w0, h / h0, w / w0, h / h0], np.float32)
    return ir, vis, boxes * scale


def clip_boxes(boxes: np.ndarray, labels: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Clamp boxes to the image and drop the degenerate ones."""
    if len(boxes) == 0:
        return boxes, labels
    b = boxes.copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    keep = ((b[:, 2] - b[:, 0]) >= MIN_BOX_SIDE) & ((b[:, 3] - b[:, 1]) >= MIN_BOX_SIDE)
    return b[keep], labels[keep]


def random_crop(ir: np.ndarray, vis: np.ndarray, boxes: np.ndarray, labels: np.ndarray, size: tuple[int, int],
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A random ``size`` = (H, W) window of both images (zero-padded where the image is smaller).

    Boxes are shifted and clipped; a box keeping less than ``MIN_BOX_KEEP`` of its area is dropped.
    """
    ch, cw = size
    h, w = ir.shape[:2]
    if h < ch or w < cw:
        ph, pw = max(0, ch - h), max(0, cw - w)
        ir = np.pad(ir, ((0, ph), (0, pw)))
        vis = np.pad(vis, ((0, ph), (0, pw), (0, 0)))
        h, w = ir.shape[:2]
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    ir = ir[y0 : y0 + ch, x0 : x0 + cw]
    vis = vis[y0 : y0 + ch, x0 : x0 + cw]
    if len(boxes):
        area0 = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        b = boxes - np.array([x0, y0, x0, y0], np.float32)
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, cw)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, ch)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        keep = (area >= MIN_BOX_KEEP * np.maximum(area0, 1e-6)) & ((b[:, 2] - b[:, 0]) >= MIN_BOX_SIDE) \
            & ((b[:, 3] - b[:, 1]) >= MIN_BOX_SIDE)
        boxes, labels = b[keep], labels[keep]
    return np.ascontiguousarray(ir), np.ascontiguousarray(vis), boxes, labels


def hflip(ir: np.ndarray, vis: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mirror both images and the boxes left-right."""
    w = ir.shape[1]
    b = boxes.copy()
    if len(b):
        b[:, 0], b[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return np.ascontiguousarray(ir[:, ::-1]), np.ascontiguousarray(vis[:, ::-1]), b


def exposure(img: np.ndarray, gain: float, gamma: float, levels: int | None = 255) -> np.ndarray:
    """A camera exposure change: ``min(1, gain · x^gamma)`` on the image's [0, 1] values.

    ``uint8`` images stay ``uint8``; float images must hold [0, 1] values and are re-quantised to ``levels``
    steps (``None``: left continuous), so a darkened 8-bit frame has the coarse grey levels of a real dark one.
    """
    if gain <= 0 or gamma <= 0:
        raise ValueError(f"exposure needs a positive gain and gamma, got gain={gain}, gamma={gamma}")
    if img.dtype == np.uint8:
        lut = np.clip(np.round(255.0 * gain * (np.arange(256) / 255.0) ** gamma), 0, 255).astype(np.uint8)
        return lut[img]
    out = np.clip(gain * np.clip(img, 0.0, 1.0) ** gamma, 0.0, 1.0).astype(np.float32)
    return np.round(out * levels) / levels if levels else out
