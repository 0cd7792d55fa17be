"""Decode ``sensor_msgs/Image`` fields to numpy without cv_bridge (ROS-free, unit-tested).

Any object with the fields ``height, width, encoding, is_bigendian, step, data`` works: an rclpy message, a
rosbags message or a ``types.SimpleNamespace``. ``step`` padding and big-endian data are handled as cv_bridge's
``passthrough`` does. Supported encodings:

| encoding | array | as thermal | as visible |
|---|---|---|---|
| ``mono8``, ``8UC1`` | H×W uint8 | unchanged | grey replicated to RGB |
| ``mono16``, ``16UC1`` | H×W uint16 | normalised (:mod:`moe_fusion_core.preprocess`) | scaled /257 |
| ``32FC1`` | H×W float32 | normalised | rejected |
| ``rgb8``, ``bgr8`` | H×W×3 uint8 | BT.601 luma (false-colour palettes are not invertible) | RGB |
| ``rgba8``, ``bgra8`` | H×W×4 uint8 | luma of the colour channels | RGB, alpha dropped |

Anything else raises :class:`UnsupportedEncoding`; inconsistent sizes raise :class:`MalformedImage`.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np

from moe_fusion_core.preprocess import ThermalNormalization, ThermalNormalizer

# encoding -> (numpy dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
}
BGR_ORDER = ("bgr8", "bgra8")


class ImageDecodeError(ValueError):
    """An image message cannot be turned into an array."""


class UnsupportedEncoding(ImageDecodeError):
    """The message's ``encoding`` is not one this package decodes."""


class MalformedImage(ImageDecodeError):
    """The message's sizes, step or data length are inconsistent."""


def _buffer(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype == np.uint8 else data.astype(np.uint8).reshape(-1)
    try:
        return np.frombuffer(memoryview(data).cast("B"), np.uint8)
    except TypeError:
        return np.asarray(list(data), np.uint8)


def image_to_array(msg: Any) -> np.ndarray:
    """Raw pixels of an Image message in the encoding's own layout: H×W or H×W×C (no copy when possible)."""
    enc = str(msg.encoding)
    if enc not in ENCODINGS:
        raise UnsupportedEncoding(f"unsupported image encoding {enc!r}; supported: {', '.join(ENCODINGS)}")
    dtype, ch = ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise MalformedImage(f"image has zero size ({w}×{h}, encoding {enc})")
    row = w * ch * dtype.itemsize
    if step < row:
        raise MalformedImage(f"step {step} is smaller than width×channels×bytes = {row} ({w}×{h} {enc})")
    buf = _buffer(msg.data)
    need = step * (h - 1) + row
    if buf.size < need:
        raise MalformedImage(f"image data too short: {buf.size} bytes for {w}×{h} {enc} with step {step} "
                             f"(need {need})")
    if buf.size > step * h:
        buf = buf[: step * h]
    if buf.size < step * h:  # last row without its padding
        buf = np.concatenate([buf, np.zeros(step * h - buf.size, np.uint8)])
    rows = buf.reshape(h, step)[:, :row]
    order = ">" if bool(msg.is_bigendian) else "<"
    arr = np.ascontiguousarray(rows).view(dtype.newbyteorder(order) if dtype.itemsize > 1 else dtype)
    arr = arr.astype(dtype, copy=False)  # native byte order (a copy only for foreign-endian data)
    arr = arr.reshape(h, w, ch) if ch > 1 else arr.reshape(h, w)
    return arr


def decode_visible(msg: Any) -> np.ndarray:
    """H×W×3 RGB ``uint8`` from an Image message (grey replicated, BGR reordered, alpha dropped)."""
    arr = image_to_array(msg)
    enc = str(msg.encoding)
    if arr.dtype == np.float32:
        raise UnsupportedEncoding(f"encoding {enc!r} is not a visible-camera format")
    if arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    arr = arr[:, :, :3]
    if enc in BGR_ORDER:
        arr = arr[:, :, ::-1]
    return np.ascontiguousarray(arr)


def thermal_array(msg: Any) -> np.ndarray:
    """H×W thermal values in their own type (uint8, uint16 or float32); colour encodings become BT.601 luma."""
    arr = image_to_array(msg)
    if arr.ndim == 3:
        enc = str(msg.encoding)
        code = cv2.COLOR_BGR2GRAY if enc in BGR_ORDER else cv2.COLOR_RGB2GRAY
        arr = cv2.cvtColor(np.ascontiguousarray(arr[:, :, :3]), code)
    return arr


def decode_thermal(msg: Any, normalizer: ThermalNormalizer | None = None) -> np.ndarray:
    """H×W ``uint8`` thermal image: decode, then normalise non-8-bit data (default: stateless percentile 1–99)."""
    arr = thermal_array(msg)
    if normalizer is None:
        normalizer = ThermalNormalizer(ThermalNormalization(mode="percentile", ema=0.0))
    return normalizer(arr)


def stamp_ns(msg: Any) -> int:
    """``header.stamp`` of a message as integer nanoseconds."""
    st = msg.header.stamp
    return int(st.sec) * 1_000_000_000 + int(st.nanosec)


def image_from_array(arr: np.ndarray, stamp: int, frame_id: str, encoding: str | None = None) -> SimpleNamespace:
    """An object with ``sensor_msgs/Image`` fields holding ``arr`` (callers without ROS: tests, benchmarks, scripts).

    The encoding follows the dtype and shape unless given: ``mono8`` / ``mono16`` / ``32FC1`` for H×W uint8 /
    uint16 / float32, ``rgb8`` for H×W×3 uint8; ``stamp`` is in nanoseconds."""
    a = np.ascontiguousarray(arr)
    if encoding is None:
        kinds = {np.dtype(np.uint8): "mono8", np.dtype(np.uint16): "mono16", np.dtype(np.float32): "32FC1"}
        encoding = kinds.get(a.dtype) if a.ndim == 2 else ("rgb8" if a.dtype == np.uint8 else None)
        if encoding is None:
            raise UnsupportedEncoding(f"no image encoding for a {a.dtype} array of shape {a.shape}")
    h = a.shape[0]
    hdr = SimpleNamespace(stamp=SimpleNamespace(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000),
                          frame_id=frame_id)
    return SimpleNamespace(header=hdr, height=h, width=a.shape[1], encoding=encoding, is_bigendian=0,
                           step=a.nbytes // h, data=a.tobytes())
