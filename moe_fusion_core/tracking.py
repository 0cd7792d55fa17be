"""What is published of a frame's detections: the selected classes, each detection with a stable track ID.

- :func:`check_classes` / :func:`select_classes`: the class filter of the node's ``detections.classes`` and of
  ``moe-fusion fuse`` / ``replay --classes`` (empty = every class the model has; unknown names are refused).
- :class:`DetectionTracker`: track IDs that persist while an object stays in view, from the maintained tracker of
  `norfair-enough <https://pypi.org/project/norfair-enough/>`_ (the numpy-2 fork of Tryolabs' norfair): a Kalman
  filter on the two box corners (:data:`VELOCITY_VARIANCE`), matched on IoU (≥ :data:`MIN_IOU`), one tracker for
  all classes that matches only boxes of the same class, so IDs are unique across classes. A track survives up to
  :data:`MAX_MISSED` frames without a matching box. IDs are positive integers, published as their decimal text
  (``Detection2D.id = "17"``), never reused within one tracker, also not after a reset.

A frame whose stamp is more than ``time_jump_ns`` older than the previous frame's starts a new timeline (a bag
replayed or looped, a simulator reset: the rule of the pairing's time-jump reset, :mod:`moe_fusion_ros.sync`): the
tracks are dropped and objects get new IDs.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

# A box continues a track when its IoU with the track's predicted box is at least this. Tried with the embedded
# model: 0.1 cut ID switches on MSRS crops panned 5 x 12 px from 11 to 1 (small distant people overlap their
# track little before the filter knows their speed) but let a track take a neighbour's box in a crowd (the live
# test's busiest frame); to tune again with a better detector (benchmarks/track_id_switches.py --pan 5).
MIN_IOU = 0.3
MAX_MISSED = 8  # frames a track outlives its last matching box (norfair's hit_counter_max)
# Initial velocity variance of a track's Kalman filter (px² per frame²; norfair's default 1): large, so a track takes
# its speed from its second box, as objects seen from a moving vehicle start with any speed. With the default, two
# people 7 px wide side by side, panning 3 px a frame, swapped IDs (test/test_tracking.py).
VELOCITY_VARIANCE = 100.0
TIME_JUMP_S = 0.25  # default of sync.time_jump_s


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--classes`` and ``--no-tracking`` of ``moe-fusion fuse`` and ``replay``."""
    p.add_argument("--classes", nargs="+", default=[], metavar="NAME",
                   help="publish only these classes (default: every class the model has)")
    p.add_argument("--no-tracking", action="store_true",
                   help="no track IDs (default: each detection gets a track ID kept while the object stays in view)")


def check_classes(classes: Iterable[str], class_names: Sequence[str]) -> tuple[str, ...]:
    """The selected classes (empty names ignored; empty = all); names the model does not have are an error."""
    chosen = tuple(dict.fromkeys(str(c).strip() for c in classes if str(c).strip()))
    unknown = [c for c in chosen if c not in class_names]
    if unknown:
        raise ValueError(f"unknown class(es) {', '.join(unknown)}; the model's classes are {', '.join(class_names)}")
    return chosen


def select_classes(detections: Iterable[Any], classes: Sequence[str]) -> list[Any]:
    """The detections of ``classes`` (objects with ``class_name``); all of them when ``classes`` is empty."""
    dets = list(detections)
    return dets if not classes else [d for d in dets if d.class_name in classes]


def _iou_distance(candidates: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """1 − IoU of boxes given as flattened corner points (N×4, K×4), corners put in order first: a Kalman estimate
    may swap them for a box that shrinks fast, and a box clipped at the image border may have no area."""
    from .metrics.detection import iou_matrix

    def ordered(b: np.ndarray) -> np.ndarray:
        b = np.asarray(b, np.float64).reshape(-1, 4)
        return np.stack([np.minimum(b[:, 0], b[:, 2]), np.minimum(b[:, 1], b[:, 3]),
                         np.maximum(b[:, 0], b[:, 2]), np.maximum(b[:, 1], b[:, 3])], axis=1)

    return 1.0 - iou_matrix(ordered(candidates), ordered(objects))


class DetectionTracker:
    """Track IDs for one stream of frames (see the module docstring)."""

    def __init__(self, min_iou: float = MIN_IOU, max_missed: int = MAX_MISSED,
                 time_jump_s: float = TIME_JUMP_S) -> None:
        if not 0.0 < min_iou <= 1.0:
            raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
        if max_missed < 1:
            raise ValueError(f"max_missed must be >= 1 frame, got {max_missed}")
        if not time_jump_s > 0:
            raise ValueError(f"time_jump_s must be > 0 seconds, got {time_jump_s}")
        self.min_iou = min_iou
        self.max_missed = max_missed
        self.time_jump_ns = round(time_jump_s * 1e9)
        self.resets = 0  # tracker resets on a time jump (not counting reset() calls)
        self._tracker: Any = None
        self._offset = 0  # IDs of earlier timelines: new ones start above them
        self._last_ns: int | None = None
        self._frame = 0

    def reset(self) -> None:
        """Drop every track (lifecycle cleanup, a new timeline); later IDs continue above the ones given."""
        if self._tracker is not None:
            self._offset += self._tracker.total_object_count
        self._tracker = None
        self._last_ns = None

    def update(self, detections: Sequence[Any], stamp_ns: int | None = None,
               time_jump_ns: int | None = None) -> list[int]:
        """Give one frame's detections (objects with ``box`` x1, y1, x2, y2 and ``class_name``) their track IDs.

        Sets each detection's ``track_id`` and returns the IDs in the detections' order. Call it for every frame,
        also one without detections (tracks age by frames). ``time_jump_ns`` overrides the constructor's."""
        from norfair import Detection, Tracker
        from norfair.distances import VectorizedDistance
        from norfair.filter import OptimizedKalmanFilterFactory

        jump = self.time_jump_ns if time_jump_ns is None else time_jump_ns
        if stamp_ns is not None:
            if self._last_ns is not None and self._last_ns - stamp_ns > jump:
                self.reset()
                self.resets += 1
            self._last_ns = stamp_ns
        if self._tracker is None:
            self._tracker = Tracker(distance_function="iou", distance_threshold=1.0 - self.min_iou,
                                    hit_counter_max=self.max_missed, initialization_delay=0,
                                    filter_factory=OptimizedKalmanFilterFactory(vel_variance=VELOCITY_VARIANCE))
            # norfair's own "iou" warns on and miscounts boxes with swapped corners or no area: ours orders them
            self._tracker.distance_function = VectorizedDistance(_iou_distance)
        self._frame += 1
        points = [np.array(d.box, np.float64).reshape(2, 2) for d in detections]
        objects = self._tracker.update([Detection(p, label=d.class_name, data=(self._frame, i))
                                        for i, (p, d) in enumerate(zip(points, detections))])
        ids = [0] * len(detections)
        for o in objects:
            frame, i = o.last_detection.data
            if frame == self._frame:
                ids[i] = self._offset + int(o.id)
        for d, track_id in zip(detections, ids):
            d.track_id = track_id
        return ids
