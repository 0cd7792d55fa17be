"""The paired training dataset, its collate function, and ``build_datasets`` used by the trainer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import Config, TrainConfig
from ..image_io import read_ir, read_vis, rgb_to_luma
from ..preprocess import ThermalNormalizer, default_thermal_normalization
from .readers import SCENE_BLOCK, read_dataset
from .records import PairRecord
from .split import read_split_file, split_by_file, split_by_scene
from .transforms import clip_boxes, exposure, hflip, random_crop, resize_pair


def ir_to_unit(ir: np.ndarray) -> np.ndarray:
    """Infrared as float32 in [0, 1], as the engine sees it: 8-bit divided by 255, deeper images first brought to
    8 bits by the engine's default normalisation (:func:`~moe_fusion_core.preprocess.default_thermal_normalization`)."""
    return ThermalNormalizer(default_thermal_normalization())(ir).astype(np.float32) / 255.0


class PairDataset(Dataset):
    """Registered infrared/visible pairs with boxes, transformed for training or evaluation.

    Each item is a dict: ``ir`` and ``vis`` (1×H×W float in [0, 1], visible as BT.601 luma), ``vis_rgb``
    (3×H×W), ``boxes`` (N×4 float, ``x1 y1 x2 y2`` pixels of the returned image), ``labels`` (N, 0-based),
    ``labelled`` (bool) and ``stem`` (``<dataset>/<stem>``). With ``train=True`` the random crop and flip of
    ``cfg`` are applied, and with ``exposure_p`` an independent exposure change (gain, gamma) of each modality,
    as two cameras with their own auto-exposure give. The randomness depends only on (seed, epoch, index), so
    a resumed run and any number of loader workers see the same samples.
    """

    def __init__(self, records: list[PairRecord], cfg: TrainConfig, train: bool = True) -> None:
        if not 0.0 <= cfg.exposure_p <= 1.0:
            raise ValueError(f"train.exposure_p must be a probability in [0, 1], got {cfg.exposure_p}")
        for name in ("gain_range", "gamma_range"):
            lo, hi = getattr(cfg, name)
            if not 0 < lo <= hi:
                raise ValueError(f"train.{name} must be [low, high] with 0 < low <= high, got [{lo}, {hi}]")
        self.records = records
        self.cfg = cfg
        self.train = train
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, rec: PairRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Images and boxes at native resolution (IR resized to the visible size if they differ)."""
        ir = read_ir(rec.ir)
        vis = read_vis(rec.vis)  # always RGB uint8
        h, w = vis.shape[:2]
        if ir.shape[:2] != (h, w):
            import cv2

            ir = cv2.resize(ir, (w, h), interpolation=cv2.INTER_LINEAR)
        boxes = rec.boxes.astype(np.float32)
        if rec.boxes_normalized:
            boxes = boxes * np.array([w, h, w, h], np.float32)
        return ir, vis, boxes, rec.labels.copy()

    def _draw_exposure(self, rng: np.random.Generator) -> tuple[float, float]:
        (g0, g1), (e0, e1) = self.cfg.gain_range, self.cfg.gamma_range
        gain = float(np.exp(rng.uniform(np.log(g0), np.log(g1))))
        return gain, float(np.exp(rng.uniform(np.log(e0), np.log(e1))))

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        ir, vis, boxes, labels = self.load(rec)
        ir = ir_to_unit(ir)
        if self.cfg.input_size is not None:
            ir, vis, boxes = resize_pair(ir, vis, boxes, tuple(self.cfg.input_size))
        if self.train:
            rng = np.random.default_rng([self.cfg.seed, self.epoch, index])
            if self.cfg.scale_range is not None:
                lo, hi = self.cfg.scale_range
                f = float(rng.uniform(lo, hi))
                h0, w0 = ir.shape[:2]
                ir, vis, boxes = resize_pair(ir, vis, boxes, (max(1, round(h0 * f)), max(1, round(w0 * f))))
            if self.cfg.crop is not None:
                ir, vis, boxes, labels = random_crop(ir, vis, boxes, labels, tuple(self.cfg.crop), rng)
            if self.cfg.hflip > 0 and rng.random() < self.cfg.hflip:
                ir, vis, boxes = hflip(ir, vis, boxes)
            if self.cfg.exposure_p > 0:
                if rng.random() < self.cfg.exposure_p:
                    ir = exposure(ir, *self._draw_exposure(rng))
                if rng.random() < self.cfg.exposure_p:
                    vis = exposure(vis, *self._draw_exposure(rng))
        h, w = ir.shape[:2]
        boxes, labels = clip_boxes(boxes, labels, h, w)
        rgb = torch.from_numpy(np.ascontiguousarray(vis)).permute(2, 0, 1).float() / 255.0
        luma = torch.from_numpy(rgb_to_luma(vis)).float()[None] / 255.0
        return {
            "ir": torch.from_numpy(np.ascontiguousarray(ir, dtype=np.float32))[None],
            "vis": luma,
            "vis_rgb": rgb,
            "boxes": torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "labelled": bool(rec.labelled),
            "stem": rec.key,
        }


def collate_pairs(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch; every item must have the same size (set ``train.input_size`` or ``train.crop``)."""
    sizes = {tuple(it["ir"].shape[-2:]) for it in items}
    if len(sizes) > 1:
        raise ValueError(f"a batch mixes image sizes {sorted(sizes)}: set train.input_size or train.crop, "
                         "or use batch size 1")
    return {
        "ir": torch.stack([it["ir"] for it in items]),
        "vis": torch.stack([it["vis"] for it in items]),
        "vis_rgb": torch.stack([it["vis_rgb"] for it in items]),
        "boxes": [it["boxes"] for it in items],
        "labels": [it["labels"] for it in items],
        "labelled": [it["labelled"] for it in items],
        "stem": [it["stem"] for it in items],
    }


def resolve_split_file(path: str | Path) -> Path:
    """A split file path as given, or else relative to the repository (``training/splits/...`` from anywhere)."""
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return p
    repo = Path(__file__).resolve().parents[2] / p
    return repo if repo.is_file() else p


def class_balanced_repeats(records: list[PairRecord], threshold: float, seed: int) -> list[PairRecord]:
    """Repeat-factor sampling: each frame appears ``r`` times in expectation, ``r`` = max over its classes of
    ``max(1, sqrt(threshold / f_c))`` (``f_c``: share of the frames holding class c); the fractional part is drawn
    once with ``seed``, so the list is reproducible. ``threshold`` 0 returns ``records`` unchanged."""
    if threshold < 0:
        raise ValueError(f"train.class_repeat_threshold must be >= 0, got {threshold}")
    if threshold == 0 or not records:
        return records
    holding: dict[int, int] = {}
    for r in records:
        for c in {int(x) for x in r.labels}:
            holding[c] = holding.get(c, 0) + 1
    factor = {c: max(1.0, math.sqrt(threshold / (n / len(records)))) for c, n in holding.items()}
    rng = np.random.default_rng(seed)
    out: list[PairRecord] = []
    for r in records:
        f = max((factor[int(c)] for c in r.labels), default=1.0)
        out.extend([r] * (int(f) + int(rng.random() < f - int(f))))
    return out


def dataset_repeats(records: list[PairRecord], repeat: dict[str, int], loaded: set[str]) -> list[PairRecord]:
    """Append ``repeat[name] - 1`` more copies of each frame of the dataset folder ``name`` (``train.dataset_repeat``).
    A name that is not a loaded dataset or a factor below 1 is an error, not a silent no-op."""
    if not isinstance(repeat, dict):
        raise ValueError("train.dataset_repeat must map dataset folder names to factors (e.g. {m3svd: 3}), "
                         f"got {repeat!r}")
    unknown = sorted(set(repeat) - loaded)
    if unknown:
        raise ValueError(f"train.dataset_repeat names {unknown}, not among the loaded datasets {sorted(loaded)}")
    bad = {k: v for k, v in repeat.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1}
    if bad:
        raise ValueError(f"train.dataset_repeat factors must be integers >= 1, got {bad}")
    extra = [r for r in records if repeat.get(r.dataset, 1) > 1 for _ in range(repeat[r.dataset] - 1)]
    return records + extra


def build_datasets(data_dirs: list[str | Path], cfg: Config
                   ) -> tuple[PairDataset, PairDataset, list[str], dict[str, Any]]:
    """Read every dataset root, split by scene (or by ``train.split_file``), filter the training frames; returns
    what the trainer needs.

    Training keeps only frames with at least one box (the paper's recipe) unless ``train.keep_unlabelled``.
    Returns (train set, validation set, class names, a JSON-able description of the split).
    """
    class_names = list(cfg.model.class_names)
    records: list[PairRecord] = []
    info: dict[str, Any] = {"datasets": {}, "val_fraction": cfg.train.val_fraction, "scene_block": SCENE_BLOCK}
    seen: set[str] = set()
    for arg in data_dirs:
        recs, layout = read_dataset(arg, class_names)
        name = recs[0].dataset
        if name in seen:
            raise ValueError(f"two --data folders share the name '{name}': rename one (keys are <folder>/<stem>)")
        seen.add(name)
        records.extend(recs)
        info["datasets"][name] = {"root": str(arg), "layout": layout, "pairs": len(recs),
                                  "labelled": sum(r.labelled for r in recs),
                                  "boxes": int(sum(len(r.boxes) for r in recs))}
    if cfg.train.split_file:
        train, val, missing = split_by_file(records, read_split_file(resolve_split_file(cfg.train.split_file)))
        info["split_file"] = str(cfg.train.split_file)
        info["split_file_keys_not_in_data"] = len(missing)
    else:
        train, val = split_by_scene(records, cfg.train.val_fraction, cfg.train.seed)
    if not cfg.train.keep_unlabelled:
        dropped = [r.key for r in train if not r.has_boxes]
        train = [r for r in train if r.has_boxes]
    else:
        dropped = []
    if cfg.train.labelled_repeat < 1:
        raise ValueError(f"train.labelled_repeat must be >= 1, got {cfg.train.labelled_repeat}")
    train = train + [r for r in train if r.has_boxes] * (cfg.train.labelled_repeat - 1)
    train = dataset_repeats(train, cfg.train.dataset_repeat, seen)
    train = class_balanced_repeats(train, cfg.train.class_repeat_threshold, cfg.train.seed)
    info["train"] = [r.key for r in train]
    info["val"] = [r.key for r in val]
    info["dropped_without_boxes"] = dropped
    return PairDataset(train, cfg.train, train=True), PairDataset(val, cfg.train, train=False), class_names, info
