"""mAP@0.5 on hand-checkable cases, and the label / detection file readers."""

from __future__ import annotations

import json
import math

import pytest

from moe_fusion_core.metrics.detection import (
    Box,
    iou_matrix,
    load_labels_and_detections,
    mean_average_precision,
    read_class_names,
    read_detection_json,
    read_yolo_labels,
    voc_ap,
)

A = (10.0, 10.0, 50.0, 90.0)
B = (100.0, 20.0, 140.0, 100.0)


def test_iou_by_hand():
    assert iou_matrix([[0, 0, 2, 2]], [[1, 1, 3, 3]])[0, 0] == pytest.approx(1 / 7)
    assert iou_matrix([[0, 0, 2, 2]], [[2, 2, 3, 3]])[0, 0] == 0.0
    assert iou_matrix([A], [A, B]).tolist() == [[1.0, 0.0]]


def test_perfect_detections_give_ap_one():
    gt = {"a": [Box(A, 0), Box(B, 0)], "b": [Box(B, 0)]}
    det = {"a": [Box(A, 0, 0.9), Box(B, 0, 0.8)], "b": [Box(B, 0, 0.7)]}
    r = mean_average_precision(gt, det)
    assert r.ap == {0: 1.0} and r.map50 == 1.0
    assert r.num_gt == {0: 3} and r.num_det == {0: 3}


def test_box_shifted_below_iou_half_is_missed():
    x1, y1, x2, y2 = A
    w = x2 - x1
    shifted = (x1 + w / 2, y1, x2 + w / 2, y2)  # IoU = 1/3
    assert iou_matrix([A], [shifted])[0, 0] == pytest.approx(1 / 3)
    assert mean_average_precision({"a": [Box(A, 0)]}, {"a": [Box(shifted, 0, 0.99)]}).map50 == 0.0
    barely = (x1 + w * 0.3, y1, x2 + w * 0.3, y2)  # IoU = 0.7 / 1.3 ≈ 0.54: still a hit
    assert mean_average_precision({"a": [Box(A, 0)]}, {"a": [Box(barely, 0, 0.99)]}).map50 == 1.0


def test_duplicate_detection_is_a_false_positive():
    gt = {"a": [Box(A, 0), Box(B, 0)]}
    det = {"a": [Box(A, 0, 0.9), Box(A, 0, 0.8), Box(B, 0, 0.7)]}
    # ranks: TP (P 1, R .5), duplicate FP (P .5, R .5), TP (P 2/3, R 1)
    # all-point interpolation: 0.5 · max(1, .5, 2/3) + 0.5 · 2/3 = 5/6  (11-point VOC2007 would give 0.8485)
    assert mean_average_precision(gt, det).map50 == pytest.approx(5 / 6, abs=1e-12)


def test_detections_are_ranked_by_score_not_by_input_order():
    gt = {"a": [Box(A, 0)]}
    det = {"a": [Box(A, 0, 0.2), Box(B, 0, 0.9)]}  # the FP outranks the TP: P = 1/2 at R = 1
    assert mean_average_precision(gt, det).map50 == pytest.approx(0.5)
    det = {"a": [Box(B, 0, 0.2), Box(A, 0, 0.9)]}  # TP first: later FP does not lower AP
    assert mean_average_precision(gt, det).map50 == pytest.approx(1.0)


def test_multi_class_mean_over_classes_with_ground_truth():
    gt = {"a": [Box(A, 0), Box(B, 1)], "b": [Box(A, 1)]}
    det = {"a": [Box(A, 0, 0.9), Box(B, 0, 0.8)],  # class 0: TP then FP (B is class 1) -> AP 1
           "b": [Box(A, 1, 0.6), Box(B, 2, 0.5)]}  # class 1: one of two found -> AP 0.5; class 2: no GT
    r = mean_average_precision(gt, det, num_classes=4)
    assert r.ap[0] == 1.0 and r.ap[1] == pytest.approx(0.5)
    assert math.isnan(r.ap[2]) and math.isnan(r.ap[3])  # no ground truth: left out of the mean
    assert r.map50 == pytest.approx(0.75)
    js = r.to_json(["car", "person", "bike", "bus"])
    assert js["mAP50"] == pytest.approx(0.75) and js["per_class"]["bike"]["AP"] is None
    assert js["per_class"]["person"] == {"AP": 0.5, "num_gt": 2, "num_det": 1}


def test_class_with_ground_truth_but_no_detection_scores_zero():
    r = mean_average_precision({"a": [Box(A, 0), Box(B, 1)]}, {"a": [Box(A, 0, 0.5)]})
    assert r.ap == {0: 1.0, 1: 0.0} and r.map50 == 0.5


def test_voc_all_point_interpolation():
    # recall 1/3, 2/3, 2/3, 1 with precision 1, 1, 2/3, 3/4 -> 1/3 + 1/3 + 1/3 · 3/4
    assert voc_ap([1 / 3, 2 / 3, 2 / 3, 1.0], [1.0, 1.0, 2 / 3, 0.75]) == pytest.approx(2 / 3 + 0.25)


def test_readers(tmp_path):
    (tmp_path / "classes.txt").write_text("person\ncar\n\n")
    assert read_class_names(tmp_path / "classes.txt") == ["person", "car"]
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "f1.txt").write_text("1 0.5 0.5 0.2 0.4\n\n0 0.1 0.2 0.2 0.2\n")
    boxes = read_yolo_labels(labels / "f1.txt", 100, 50)
    assert [b.class_id for b in boxes] == [1, 0]
    assert boxes[0].box == pytest.approx((40, 15, 60, 35))
    assert boxes[1].box == pytest.approx((0, 5, 20, 15))
    (labels / "f2.txt").write_text("0 0.5 0.5 0.2 0.4\n")
    dets = tmp_path / "detections"
    dets.mkdir()
    (dets / "f1.json").write_text(json.dumps({"width": 100, "height": 50, "detections": [
        {"box": [40, 15, 60, 35], "class_id": 5, "class_name": "car", "score": 0.9},
        {"box": [0, 5, 20, 15], "class_id": 0, "class_name": "person", "score": 0.8}]}))
    (dets / "f3.json").write_text(json.dumps({"width": 100, "height": 50, "detections": []}))
    got, w, h = read_detection_json(dets / "f1.json")
    assert (w, h) == (100, 50) and got[0].class_id == 5
    got, _, _ = read_detection_json(dets / "f1.json", ["person", "car"])
    assert [b.class_id for b in got] == [1, 0]  # mapped by class name onto classes.txt
    gt, det, problems = load_labels_and_detections(labels, dets, ["person", "car"])
    assert list(gt) == ["f1"] and len(problems) == 2  # f2: no detections; f3: unlabelled
    assert mean_average_precision(gt, det).map50 == 1.0
    (dets / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a detection file"):
        read_detection_json(dets / "bad.json")
    (labels / "bad.txt").write_text("0 0.5\n")
    with pytest.raises(ValueError, match="class cx cy w h"):
        read_yolo_labels(labels / "bad.txt", 10, 10)
