"""Detection mAP@0.5 (per class and overall) and readers for YOLO labels and the engine's detection JSON.

Protocol (PASCAL VOC 2010+ style):

- per class, detections of all images are sorted by score (descending; ties keep input order) and matched
  greedily as in the VOC devkit: each detection takes the ground-truth box of its class in its image with
  the highest IoU; it is a true positive when that IoU ≥ ``iou_threshold`` (0.5) and the box is not yet
  matched, otherwise a false positive. A second detection of an already matched box is a **false positive**
  (duplicate).
- AP is the area under the precision/recall curve with **VOC all-point interpolation**: precision is
  replaced by its running maximum from the right (p_interp(r) = max_{r' ≥ r} p(r')) and summed over every
  recall step, AP = Σ (r_i − r_{i−1}) · p_interp(r_i). (Not the 11-point VOC2007 variant, not COCO's 101.)
- a class with ground truth but no detection has AP 0; a class with no ground truth in the evaluated images
  is left out of the mean (its AP is NaN). mAP is the mean AP over classes with ground truth.

Boxes are ``[x1, y1, x2, y2]`` in pixels, continuous coordinates (area = (x2−x1)·(y2−y1), no +1).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Box:
    """One box: pixels ``x1, y1, x2, y2``, a 0-based class id and (detections only) a score."""

    box: tuple[float, float, float, float]
    class_id: int
    score: float = 1.0


@dataclass
class DetectionResult:
    """AP per class (NaN: no ground truth), mAP over classes with ground truth, and the counts behind them."""

    ap: dict[int, float]
    map50: float
    num_gt: dict[int, int] = field(default_factory=dict)
    num_det: dict[int, int] = field(default_factory=dict)

    def to_json(self, class_names: Sequence[str] | None = None) -> dict:
        """``{"mAP50", "per_class": {name: {"AP", "num_gt", "num_det"}}}`` (NaN → null)."""
        def name(c: int) -> str:
            return class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)

        def num(x: float) -> float | None:
            return None if not np.isfinite(x) else float(x)

        return {"mAP50": num(self.map50), "per_class": {
            name(c): {"AP": num(self.ap[c]), "num_gt": self.num_gt.get(c, 0), "num_det": self.num_det.get(c, 0)}
            for c in sorted(self.ap)}}


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N×4) with every box in ``b`` (M×4), ``[x1, y1, x2, y2]``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under a precision/recall curve with VOC all-point interpolation (see the module docstring)."""
    r = np.concatenate([[0.0], np.asarray(recall, dtype=np.float64), [1.0]])
    p = np.concatenate([[0.0], np.asarray(precision, dtype=np.float64), [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(((r[steps + 1] - r[steps]) * p[steps + 1]).sum())


def _match(ground_truth: Mapping[str, Sequence[Box]], detections: Mapping[str, Sequence[Box]], class_id: int,
           iou_threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
    """VOC greedy matching of one class: (scores sorted high to low, 1 = true positive, number of GT boxes)."""
    gts = {k: np.array([g.box for g in v if g.class_id == class_id], dtype=np.float64).reshape(-1, 4)
           for k, v in ground_truth.items()}
    n_gt = sum(len(v) for v in gts.values())
    dets = [(d.score, k, d.box) for k, v in detections.items() for d in v if d.class_id == class_id]
    order = sorted(range(len(dets)), key=lambda i: -dets[i][0])
    tp = np.zeros(len(dets))
    used = {k: np.zeros(len(v), dtype=bool) for k, v in gts.items()}
    for rank, i in enumerate(order):
        _, key, box = dets[i]
        g = gts.get(key)
        if g is None or len(g) == 0:
            continue
        ious = iou_matrix(np.array([box]), g)[0]
        j = int(np.argmax(ious))
        if ious[j] >= iou_threshold and not used[key][j]:
            used[key][j] = True
            tp[rank] = 1.0
    return np.array([dets[i][0] for i in order], dtype=np.float64), tp, n_gt


def average_precision(ground_truth: Mapping[str, Sequence[Box]], detections: Mapping[str, Sequence[Box]],
                      class_id: int, iou_threshold: float = 0.5) -> tuple[float, int, int]:
    """AP of one class over images (keys = image ids): ``(AP, number of GT boxes, number of detections)``."""
    _, tp, n_gt = _match(ground_truth, detections, class_id, iou_threshold)
    if n_gt == 0:
        return float("nan"), 0, len(tp)
    if not len(tp):
        return 0.0, n_gt, 0
    ctp = np.cumsum(tp)
    cfp = np.cumsum(1.0 - tp)
    return voc_ap(ctp / n_gt, ctp / (ctp + cfp)), n_gt, len(tp)


def _pooled(ground_truth: Mapping[str, Sequence[Box]], detections: Mapping[str, Sequence[Box]],
            iou_threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Matches of every class together (each matched within its class), sorted by score."""
    dets = {k: detections.get(k, []) for k in ground_truth}
    classes = {b.class_id for v in ground_truth.values() for b in v} | {b.class_id for v in dets.values() for b in v}
    scores, tps, n_gt = [], [], 0
    for c in sorted(classes):
        s, tp, n = _match(ground_truth, dets, c, iou_threshold)
        scores.append(s)
        tps.append(tp)
        n_gt += n
    s, tp = np.concatenate(scores or [np.zeros(0)]), np.concatenate(tps or [np.zeros(0)])
    order = np.argsort(-s, kind="stable")
    return s[order], tp[order], n_gt


def _stats(tp: int, n_det: int, n_gt: int) -> dict[str, float]:
    p = tp / n_det if n_det else 0.0
    r = tp / n_gt if n_gt else 0.0
    return {"tp": int(tp), "fp": int(n_det - tp), "fn": int(n_gt - tp), "precision": p, "recall": r,
            "f1": 2 * p * r / (p + r) if p + r else 0.0}


def precision_recall_at(ground_truth: Mapping[str, Sequence[Box]], detections: Mapping[str, Sequence[Box]],
                        threshold: float, iou_threshold: float = 0.5) -> dict[str, float]:
    """Precision, recall and F1 of the detections scoring ≥ ``threshold``, all classes pooled (a detection is a
    true positive when it matches an unmatched ground-truth box of its class at IoU ≥ ``iou_threshold``)."""
    s, tp, n_gt = _pooled(ground_truth, detections, iou_threshold)
    keep = s >= threshold
    return _stats(int(tp[keep].sum()), int(keep.sum()), n_gt)


def best_f1_threshold(ground_truth: Mapping[str, Sequence[Box]], detections: Mapping[str, Sequence[Box]],
                      iou_threshold: float = 0.5) -> tuple[float, dict[str, float]]:
    """The score threshold with the highest pooled F1 (ties: the higher threshold) and the statistics there.

    Candidates are the detections' own scores (a threshold equal to a score keeps that detection)."""
    s, tp, n_gt = _pooled(ground_truth, detections, iou_threshold)
    if not len(s):
        return 1.0, _stats(0, 0, n_gt)
    ctp = np.cumsum(tp)
    n = np.arange(1, len(s) + 1)
    last = np.r_[s[1:] != s[:-1], True]  # a threshold keeps every detection of equal score
    f1 = np.where(last, 2 * ctp / (n + n_gt), -1.0)
    best = int(np.flatnonzero(f1 == f1.max())[0])
    return float(s[best]), _stats(int(ctp[best]), int(n[best]), n_gt)


def mean_average_precision(ground_truth: Mapping[str, Sequence[Box]], detections: Mapping[str, Sequence[Box]],
                           num_classes: int | None = None, iou_threshold: float = 0.5) -> DetectionResult:
    """AP per class and mAP@``iou_threshold`` over the images of ``ground_truth``.

    Detections for images without ground-truth entry are ignored (unlabelled, not empty); an image with an
    empty ground-truth list counts all its detections as false positives.
    """
    dets = {k: detections.get(k, []) for k in ground_truth}
    classes = {b.class_id for v in ground_truth.values() for b in v} | {b.class_id for v in dets.values() for b in v}
    if num_classes is not None:
        classes |= set(range(num_classes))
    ap: dict[int, float] = {}
    n_gt: dict[int, int] = {}
    n_det: dict[int, int] = {}
    for c in sorted(classes):
        ap[c], n_gt[c], n_det[c] = average_precision(ground_truth, dets, c, iou_threshold)
    valid = [v for v in ap.values() if np.isfinite(v)]
    return DetectionResult(ap, float(np.mean(valid)) if valid else float("nan"), n_gt, n_det)


# ------------------------------------------------------------------------------------------------------ files


def read_class_names(path: str | Path) -> list[str]:
    """``classes.txt``: one class name per line, line *i* = class id *i* (blank lines ignored at the end)."""
    names = Path(path).read_text().splitlines()
    while names and not names[-1].strip():
        names.pop()
    return [n.strip() for n in names]


def read_yolo_labels(path: str | Path, width: int, height: int) -> list[Box]:
    """A YOLO label file (``class cx cy w h`` normalised to [0,1]) as pixel boxes for a ``width``×``height`` image."""
    boxes: list[Box] = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 5:
            raise ValueError(f"{path}:{n}: expected 'class cx cy w h', got {line!r}")
        c = int(float(parts[0]))
        cx, cy, w, h = (float(v) for v in parts[1:5])
        boxes.append(Box(((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height),
                         c))
    return boxes


def read_detection_json(path: str | Path, class_names: Sequence[str] | None = None) -> tuple[list[Box], int, int]:
    """A ``moe-fusion fuse --detections`` file: ``(boxes, width, height)``.

    With ``class_names`` the detection's ``class_name`` is mapped to the label file's id (so a model whose
    class list differs from ``classes.txt`` is still compared by name); unknown names get id −1 (never match).
    """
    data = json.loads(Path(path).read_text())
    try:
        out = []
        for d in data["detections"]:
            cid = int(d["class_id"])
            if class_names is not None and d.get("class_name") is not None:
                cid = list(class_names).index(d["class_name"]) if d["class_name"] in class_names else -1
            out.append(Box(tuple(float(v) for v in d["box"]), cid, float(d["score"])))
        return out, int(data["width"]), int(data["height"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a detection file of 'moe-fusion fuse --detections' ({e})") from e


def load_labels_and_detections(labels_dir: str | Path, detections_dir: str | Path,
                               class_names: Sequence[str] | None = None
                               ) -> tuple[dict[str, list[Box]], dict[str, list[Box]], list[str]]:
    """Ground truth and detections by stem: labels from ``labels_dir/<stem>.txt`` sized by the detection JSON.

    Returns ``(ground_truth, detections, problems)``; stems with labels but no detection file (and vice versa)
    are reported in ``problems`` and left out.
    """
    ldir, ddir = Path(labels_dir), Path(detections_dir)
    labels = {p.relative_to(ldir).with_suffix("").as_posix(): p for p in sorted(ldir.rglob("*.txt"))
              if p.name != "classes.txt"}
    dets = {p.relative_to(ddir).with_suffix("").as_posix(): p for p in sorted(ddir.rglob("*.json"))}
    gt: dict[str, list[Box]] = {}
    found: dict[str, list[Box]] = {}
    problems: list[str] = []
    for stem in sorted(set(labels) | set(dets)):
        if stem not in dets:
            problems.append(f"{stem}: labels but no detection file")
            continue
        if stem not in labels:
            problems.append(f"{stem}: detections but no label file (unlabelled, ignored)")
            continue
        try:
            boxes, w, h = read_detection_json(dets[stem], class_names)
            gt[stem] = read_yolo_labels(labels[stem], w, h)
        except (OSError, ValueError) as e:
            problems.append(f"{stem}: {e}")
            continue
        found[stem] = boxes
    return gt, found, problems
