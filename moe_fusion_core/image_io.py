"""Reading images and pairing infrared/visible files by stem.

One place for the conventions every tool shares: visible images are returned as RGB ``uint8``; infrared
images keep their bit depth (``uint8`` or ``uint16``); luminance uses OpenCV's BT.601 weights (spec §1.1).
"""

from __future__ import annotations

import csv
import glob
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ImageReadError(ValueError):
    """An image file is missing, unreadable or of an unsupported layout."""


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as stored: H×W (grey, 8/16-bit) or H×W×3 RGB ``uint8``/``uint16``.

    Alpha channels are dropped; BGR from OpenCV is turned into RGB.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"{p}: no such file")
    data = np.fromfile(str(p), dtype=np.uint8)
    if data.size == 0:
        raise ImageReadError(f"{p}: empty file")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageReadError(f"{p}: not a decodable image (truncated or corrupt?)")
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[:, :, :3]
        if img.shape[2] == 1:
            img = img[:, :, 0]
        else:
            img = np.ascontiguousarray(img[:, :, ::-1])
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"{p}: unsupported pixel type {img.dtype}")
    return img


def read_ir(path: str | Path) -> np.ndarray:
    """Read an infrared image as a 2-D array, keeping its bit depth (colour: channel 0, spec §1.1)."""
    img = read_image(path)
    if img.ndim == 3:
        img = np.ascontiguousarray(img[:, :, 0])
    return img


def to_8bit(img: np.ndarray) -> np.ndarray:
    """A 16-bit image as 8 bits (``round(x / 257)``, so 65535 -> 255); 8-bit images pass through."""
    if img.dtype == np.uint8:
        return img
    return (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)


def read_vis(path: str | Path) -> np.ndarray:
    """Read a visible image as H×W×3 RGB ``uint8`` (grey files are replicated to 3 channels)."""
    img = read_image(path)
    if img.dtype == np.uint16:
        img = to_8bit(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return img


def rgb_to_luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB ``uint8`` image, as OpenCV's RGB→GRAY (the network's visible input)."""
    if rgb.ndim == 2:
        return rgb
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def write_image(path: str | Path, img: np.ndarray, jpeg_quality: int | None = None) -> None:
    """Write a grey or RGB image (PNG/JPEG by suffix) atomically, creating parent folders; ``jpeg_quality``
    overrides OpenCV's default (95) for JPEG."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    out = img if img.ndim == 2 else np.ascontiguousarray(img[:, :, ::-1])
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if jpeg_quality is not None else []
    ok, buf = cv2.imencode(p.suffix or ".png", out, params)
    if not ok:
        raise ImageReadError(f"{p}: could not encode image")
    tmp = p.with_name(p.name + ".tmp")
    buf.tofile(str(tmp))
    tmp.replace(p)


@dataclass
class PairListing:
    """Files matched by relative stem (``sub/dir/stem``) across two or more folders."""

    pairs: list[tuple[str, list[Path]]] = field(default_factory=list)
    unpaired: dict[str, list[str]] = field(default_factory=dict)  # folder label -> stems without partner
    duplicates: list[str] = field(default_factory=list)  # stems present with two suffixes in one folder


def _index(folder: Path) -> tuple[dict[str, Path], list[str]]:
    found: dict[str, Path] = {}
    dups: list[str] = []
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
            key = f.relative_to(folder).with_suffix("").as_posix()
            if key in found:
                dups.append(key)
                continue
            found[key] = f
    return found, dups


def pair_by_stem(folders: Iterable[str | Path], labels: Iterable[str] | None = None) -> PairListing:
    """Pair image files that share a relative stem across ``folders`` (nested sub-folders allowed).

    Returns the matched pairs in sorted order and, for each folder, the stems with no partner.
    """
    dirs = [Path(d) for d in folders]
    names = list(labels) if labels is not None else [str(d) for d in dirs]
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: not a folder")
    indexes = []
    listing = PairListing()
    for d in dirs:
        idx, dups = _index(d)
        indexes.append(idx)
        listing.duplicates.extend(f"{d}/{k}" for k in dups)
    common = set(indexes[0])
    for idx in indexes[1:]:
        common &= set(idx)
    for key in sorted(common):
        listing.pairs.append((key, [idx[key] for idx in indexes]))
    for name, idx in zip(names, indexes):
        missing = sorted(set(idx) - common)
        if missing:
            listing.unpaired[name] = missing
    return listing


def dataset_meta(root: str | Path) -> list[dict[str, str]]:
    """The rows of a dataset folder's ``meta.csv`` (the shared data layout: ``stem``, ``light``, …), in file order."""
    meta = Path(root) / "meta.csv"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta}: no meta.csv (expected the layout ir/, vis/, meta.csv)")
    with open(meta, newline="") as f:
        return list(csv.DictReader(f))


def read_dataset_pair(root: str | Path, stem: str) -> tuple[np.ndarray, np.ndarray]:
    """(thermal, visible) of one pair of a dataset folder in the shared layout: ``ir/STEM.png``, ``vis/STEM.*``."""
    root = Path(root)
    vis = [p for p in (root / "vis").glob(f"{glob.escape(stem)}.*") if p.suffix.lower() in IMAGE_SUFFIXES]
    if len(vis) != 1:
        raise FileNotFoundError(f"{root / 'vis'}: {len(vis)} images with the stem {stem!r} (expected one)")
    return read_ir(root / "ir" / f"{stem}.png"), read_vis(vis[0])
