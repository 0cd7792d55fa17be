"""Track-ID quality on a labelled frame sequence: ground-truth identities from per-frame boxes, CLEAR-MOT counts.

- :func:`link_ground_truth`: labels that carry no identities (YOLO files of consecutive frames) get them by
  linking each frame's boxes to the previous frame's, per class, one-to-one by the Hungarian method on IoU, a link
  needing IoU ≥ ``min_iou`` (0.3); an unlinked box starts a new identity. An object missing from one frame's labels
  thus gets a new identity when it comes back (the counts below then see a new object, not a switch).
- :func:`mot_counts`: CLEAR-MOT matching (Bernardin & Stiefelhagen 2008) per class at IoU ≥ ``min_iou`` (0.5):
  a ground-truth object matched in the previous frame keeps its track when that track is still there and
  overlaps enough; the others are matched by the Hungarian method on IoU. Counted: ``gt`` (objects over all
  frames), ``matched``, ``misses``, ``false_positives``, ``id_switches`` (a ground-truth identity matched to
  another track than at its last match), ``fragmentations`` (a ground-truth trajectory matched again after
  frames without a match), ``mota`` = 1 − (misses + false positives + ID switches) / gt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from .detection import iou_matrix


@dataclass(frozen=True)
class Obj:
    """One box of one frame: identity (ground truth) or track ID (prediction), class and pixel box."""

    id: int
    class_id: int
    box: tuple[float, float, float, float]


def _hungarian(a: Sequence[tuple[float, ...]], b: Sequence[tuple[float, ...]], min_iou: float
               ) -> list[tuple[int, int]]:
    """Index pairs of a one-to-one assignment maximising total IoU, keeping pairs with IoU ≥ ``min_iou``."""
    if not a or not b:
        return []
    iou = iou_matrix(np.array(a), np.array(b))
    rows, cols = linear_sum_assignment(-iou)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if iou[r, c] >= min_iou]


def link_ground_truth(frames: Sequence[Sequence[tuple[int, tuple[float, float, float, float]]]],
                      min_iou: float = 0.3) -> list[list[Obj]]:
    """Identities for per-frame ``(class_id, box)`` labels of consecutive frames (see the module docstring)."""
    out: list[list[Obj]] = []
    next_id = 1
    prev: list[Obj] = []
    for boxes in frames:
        ids: list[int | None] = [None] * len(boxes)
        for c in {cls for cls, _ in boxes}:
            cur = [i for i, (cls, _) in enumerate(boxes) if cls == c]
            old = [o for o in prev if o.class_id == c]
            for r, k in _hungarian([o.box for o in old], [boxes[i][1] for i in cur], min_iou):
                ids[cur[k]] = old[r].id
        frame = []
        for i, (cls, box) in enumerate(boxes):
            if ids[i] is None:
                ids[i], next_id = next_id, next_id + 1
            frame.append(Obj(ids[i], cls, tuple(box)))
        out.append(frame)
        prev = frame
    return out


def mot_counts(gt: Sequence[Sequence[Obj]], pred: Sequence[Sequence[Obj]], min_iou: float = 0.5
               ) -> dict[str, float]:
    """CLEAR-MOT counts of tracked predictions against ground truth with identities (see the module docstring)."""
    if len(gt) != len(pred):
        raise ValueError(f"{len(gt)} ground-truth frames but {len(pred)} prediction frames")
    last_track: dict[int, int] = {}  # ground-truth id -> track id at its last match
    prev_match: dict[int, int] = {}  # ground-truth id -> track id in the previous frame
    was_tracked: dict[int, bool] = {}  # ground-truth id -> matched in the frame it last appeared in
    n = {"gt": 0, "matched": 0, "misses": 0, "false_positives": 0, "id_switches": 0, "fragmentations": 0}
    for g_frame, p_frame in zip(gt, pred):
        match: dict[int, int] = {}  # index in g_frame -> index in p_frame
        by_track = {(p.class_id, p.id): j for j, p in enumerate(p_frame)}
        for i, g in enumerate(g_frame):  # keep last frame's correspondences that still hold
            j = by_track.get((g.class_id, prev_match.get(g.id, -1)))
            if j is not None and j not in match.values() and \
                    iou_matrix(np.array([g.box]), np.array([p_frame[j].box]))[0, 0] >= min_iou:
                match[i] = j
        for c in {g.class_id for g in g_frame}:
            gi = [i for i, g in enumerate(g_frame) if g.class_id == c and i not in match]
            pj = [j for j, p in enumerate(p_frame) if p.class_id == c and j not in match.values()]
            for r, k in _hungarian([g_frame[i].box for i in gi], [p_frame[j].box for j in pj], min_iou):
                match[gi[r]] = pj[k]
        prev_match = {}
        for i, g in enumerate(g_frame):
            n["gt"] += 1
            if i not in match:
                n["misses"] += 1
                if g.id in last_track:  # an interruption of a trajectory that was tracked
                    was_tracked[g.id] = False
                continue
            track = p_frame[match[i]].id
            n["matched"] += 1
            if g.id in last_track and last_track[g.id] != track:
                n["id_switches"] += 1
            if not was_tracked.get(g.id, True):
                n["fragmentations"] += 1
            last_track[g.id] = prev_match[g.id] = track
            was_tracked[g.id] = True
        n["false_positives"] += len(p_frame) - len(match)
    mota = 1.0 - (n["misses"] + n["false_positives"] + n["id_switches"]) / n["gt"] if n["gt"] else float("nan")
    return {**n, "mota": mota}
