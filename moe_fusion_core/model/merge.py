"""One box per object: merge the detections of the visible and the infrared detector (the published set)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import box_iou


def merge_detections(parts: Sequence[dict[str, torch.Tensor]], iou_threshold: float = 0.5,
                     containment_threshold: float = 1.0, max_detections: int = 100) -> dict[str, torch.Tensor]:
    """Union of several detectors' detections (``boxes`` N×4 xyxy, ``scores`` N, ``labels`` N), one box per object.

    Class-wise greedy suppression over all boxes by descending score: a box is dropped when a kept box of its
    class overlaps it with IoU ≥ ``iou_threshold`` (the same object seen by both detectors), or covers at least
    ``containment_threshold`` of the smaller box's area (a part box, e.g. a torso inside a person box); 1.0
    switches the containment test off, leaving plain class-wise NMS. Kept boxes are returned unchanged, best
    first, at most ``max_detections``.
    """
    boxes = torch.cat([p["boxes"] for p in parts]).float()
    scores = torch.cat([p["scores"] for p in parts]).float()
    labels = torch.cat([p["labels"] for p in parts])
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    n = len(boxes)
    if n == 0:
        return {"boxes": boxes, "scores": scores, "labels": labels}
    iou = box_iou(boxes, boxes)
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    area = wh[:, 0] * wh[:, 1]
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    contained = inter / torch.minimum(area[:, None], area[None, :]).clamp(min=1e-9)
    overlap = (iou >= iou_threshold) | ((contained >= containment_threshold) & (containment_threshold < 1.0))
    overlap &= labels[:, None] == labels[None, :]
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)
    for i in range(n):  # n is at most a few hundred (each detector keeps its top 100)
        if keep[i]:
            later = overlap[i].clone()
            later[: i + 1] = False
            keep &= ~later
    idx = torch.nonzero(keep).flatten()[:max_detections]
    return {"boxes": boxes[idx], "scores": scores[idx], "labels": labels[idx]}
