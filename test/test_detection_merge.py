"""Merging the two detectors' boxes: one published box per object."""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms

from moe_fusion_core.model.merge import merge_detections


def dets(boxes, scores, labels) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.int64)}


def test_one_person_seen_by_both_detectors_gives_one_box_the_better_one():
    vis = dets([[100, 100, 150, 220]], [0.7], [1])
    ir = dets([[104, 96, 152, 216]], [0.9], [1])
    out = merge_detections([vis, ir], iou_threshold=0.5)
    assert out["boxes"].tolist() == [[104, 96, 152, 216]]
    torch.testing.assert_close(out["scores"], torch.tensor([0.9]))


def test_a_part_box_inside_a_person_box_is_dropped_only_with_the_containment_test():
    person = dets([[100, 100, 150, 220]], [0.8], [1])
    torso = dets([[105, 130, 145, 180]], [0.6], [1])  # IoU 0.33 with the person, entirely inside it
    assert len(merge_detections([person, torso], 0.5, 1.0)["boxes"]) == 2  # plain NMS keeps both
    out = merge_detections([person, torso], 0.5, 0.7)
    assert out["boxes"].tolist() == [[100, 100, 150, 220]]


def test_neighbours_and_other_classes_are_kept():
    a = dets([[100, 100, 150, 220], [160, 100, 210, 220]], [0.9, 0.8], [1, 1])  # two people side by side
    b = dets([[100, 100, 150, 220]], [0.85], [2])  # a car box on the same pixels: another class
    out = merge_detections([a, b], 0.3, 0.7)
    assert sorted(out["labels"].tolist()) == [1, 1, 2]
    assert out["scores"].tolist() == sorted(out["scores"].tolist(), reverse=True)


def test_without_containment_it_is_class_wise_nms_and_respects_the_cap():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(60, 2, generator=g) * 200
    wh = torch.rand(60, 2, generator=g) * 60 + 5
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(60, generator=g)
    labels = torch.randint(1, 3, (60,), generator=g)
    parts = [{"boxes": boxes[:30], "scores": scores[:30], "labels": labels[:30]},
             {"boxes": boxes[30:], "scores": scores[30:], "labels": labels[30:]}]
    keep = batched_nms(boxes, scores, labels, 0.5)
    out = merge_detections(parts, 0.5, 1.0, max_detections=100)
    torch.testing.assert_close(out["boxes"], boxes[keep])
    assert len(merge_detections(parts, 0.5, 1.0, max_detections=5)["boxes"]) == 5
    empty = merge_detections([dets([], [], []), dets([], [], [])])
    assert empty["boxes"].shape == (0, 4)
