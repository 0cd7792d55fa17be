"""ID switches of the published track IDs on labelled frames (default: MSRS, ../shared/data/msrs_det_more).

Usage: ``python benchmarks/track_id_switches.py [--checkpoint DIR] [--stems 00802N-00899N,...] [--pan N]``.

Sequence mode (default): the sorted stems of the ranges, cut where the stem number jumps by more than
``--max-gap``, are taken as consecutive frames; the labels get identities by linking each frame's boxes to the
previous frame's (:func:`~moe_fusion_core.metrics.tracking.link_ground_truth`, Hungarian on IoU ≥ ``--gt-iou``).
Caution: the MSRS test stems are *not* video: neighbouring stems (00802N, 00806N, ...) are different scenes (looked
at with ``--draw``), so few label boxes continue an object of the previous frame (printed as "continue"), and ID
switches can only happen on those. Use it on a labelled video (any folder with ir/, vis/, labels/, classes.txt).

Pan mode (``--pan N``): each labelled frame becomes N crops whose window moves ``--pan-step`` px right per frame,
as a panning camera sees it; identities are exact (the label's index), a box counts while half of it is inside.

Either way the engine fuses every frame; its published detections (the model's thresholds, or
``--score-threshold``) get track IDs from :class:`~moe_fusion_core.tracking.DetectionTracker` exactly as the node
and ``moe-fusion fuse`` give them, a new tracker per sequence. Ground truth of classes the model does not have is
left out (and said so). Printed: CLEAR-MOT counts per class and in total
(:func:`~moe_fusion_core.metrics.tracking.mot_counts`, match at IoU ≥ ``--iou``): ground-truth objects, matched,
misses, false positives, ID switches, fragmentations, MOTA. ``--draw DIR`` writes each frame with the ground truth
(green, ``g<identity>``) and the tracked detections (``#<track ID>``) for spot checks; ``--json`` the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np

from moe_fusion_core.engine import FusionEngine
from moe_fusion_core.image_io import read_ir, read_vis, write_image
from moe_fusion_core.metrics.detection import read_class_names, read_yolo_labels
from moe_fusion_core.metrics.tracking import Obj, link_ground_truth, mot_counts
from moe_fusion_core.report import draw_detections
from moe_fusion_core.tracking import DetectionTracker

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STEMS = "00802N-00899N,01000N-01078N"
STEM = re.compile(r"^(\d+)([A-Za-z]*)$")
COUNTS = ("gt", "matched", "misses", "false_positives", "id_switches", "fragmentations")


def stem_key(stem: str) -> tuple[str, int]:
    m = STEM.match(stem)
    if m is None:
        raise ValueError(f"stem {stem!r} is not <number><suffix> (MSRS: 00802N)")
    return m.group(2), int(m.group(1))


def select_sequences(stems: list[str], ranges: str, max_gap: int) -> list[list[str]]:
    """The stems inside ``ranges`` (``A-B,C-D``, same suffix), sorted, cut where the number jumps by > max_gap."""
    spans = []
    for part in ranges.split(","):
        lo, _, hi = part.strip().partition("-")
        (s1, n1), (s2, n2) = stem_key(lo), stem_key(hi or lo)
        if s1 != s2 or n1 > n2:
            raise ValueError(f"bad stem range {part!r}: give FIRST-LAST with one suffix, FIRST <= LAST")
        spans.append((s1, n1, n2))
    chosen = sorted((stem_key(s), s) for s in stems
                    if any(stem_key(s)[0] == suf and lo <= stem_key(s)[1] <= hi for suf, lo, hi in spans))
    seqs: list[list[str]] = []
    prev: tuple[str, int] | None = None
    for key, s in chosen:
        if prev is None or key[0] != prev[0] or key[1] - prev[1] > max_gap:
            seqs.append([])
        seqs[-1].append(s)
        prev = key
    return seqs


def pan_frames(ir: np.ndarray, vis: np.ndarray, boxes: list[tuple[int, tuple[float, ...]]], n: int, step: int
               ) -> list[tuple[np.ndarray, np.ndarray, list[Obj]]]:
    """``n`` crops of one labelled pair, the window moving ``step`` px right per frame (a camera pan); the labels
    in each crop with their index as identity, kept while at least half of the box is inside."""
    w = vis.shape[1]
    cw = w - (n - 1) * step
    if cw < w // 2:
        raise ValueError(f"--pan {n} x --pan-step {step} px leaves a crop narrower than half the image")
    out = []
    for k in range(n):
        x0 = k * step
        objs = []
        for i, (c, (x1, y1, x2, y2)) in enumerate(boxes):
            a, b = max(x1 - x0, 0.0), min(x2 - x0, float(cw))
            if b > a and (b - a) >= 0.5 * (x2 - x1):
                objs.append(Obj(i + 1, c, (a, y1, b, y2)))
        out.append((ir[:, x0:x0 + cw], vis[:, x0:x0 + cw], objs))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shared = Path(os.environ.get("MOE_FUSION_SHARED", REPO.parent / "shared"))
    ap.add_argument("--data", type=Path, default=shared / "data" / "msrs_det_more",
                    help="folder with ir/, vis/, labels/ (YOLO) and classes.txt")
    ap.add_argument("--stems", default=DEFAULT_STEMS, help="stem ranges FIRST-LAST, comma-separated")
    ap.add_argument("--max-gap", type=int, default=10, help="a larger jump of stem numbers starts a new sequence")
    ap.add_argument("--pan", type=int, default=0, metavar="N",
                    help="instead: N crops of each labelled frame, panning --pan-step px a frame (exact identities)")
    ap.add_argument("--pan-step", type=int, default=12)
    ap.add_argument("--checkpoint", type=Path, default=None, help="model folder (default: the embedded model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--score-threshold", type=float, default=None, help="one threshold for all classes "
                    "(default: the model's own, per class)")
    ap.add_argument("--gt-iou", type=float, default=0.3, help="IoU linking a label box to the previous frame's")
    ap.add_argument("--iou", type=float, default=0.5, help="IoU matching a detection to a label box")
    ap.add_argument("--draw", type=Path, default=None, metavar="DIR", help="write annotated frames here")
    ap.add_argument("--json", type=Path, default=None, help="write the counts here")
    args = ap.parse_args(argv)

    label_names = read_class_names(args.data / "classes.txt")
    stems = sorted(p.stem for p in (args.data / "ir").glob("*.png"))
    seqs = select_sequences(stems, args.stems, args.max_gap)
    if args.pan:
        seqs = [[s] for seq in seqs for s in seq]
    if not seqs:
        print(f"error: no stem of {args.stems} in {args.data / 'ir'}", file=sys.stderr)
        return 2
    engine = FusionEngine(args.checkpoint, device=args.device, score_threshold=args.score_threshold)
    names = engine.class_names
    left_out = [c for c in label_names if c not in names]
    per_class = {c: dict.fromkeys(COUNTS, 0) for c in names}
    continuing = 0  # label boxes whose identity was in the previous frame too: where an ID switch can happen
    for seq in seqs:
        frames = []  # (name, ir, vis, ground truth with identities or None, label boxes)
        for stem in seq:
            ir, vis = read_ir(args.data / "ir" / f"{stem}.png"), read_vis(args.data / "vis" / f"{stem}.png")
            h, w = vis.shape[:2]
            boxes = [(names.index(label_names[b.class_id]), b.box)
                     for b in read_yolo_labels(args.data / "labels" / f"{stem}.txt", w, h)
                     if label_names[b.class_id] in names]
            if args.pan:
                frames += [(f"{stem}_{k}", i, v, objs) for k, (i, v, objs)
                           in enumerate(pan_frames(ir, vis, boxes, args.pan, args.pan_step))]
            else:
                frames.append((stem, ir, vis, boxes))
        gt = ([f[3] for f in frames] if args.pan else
              link_ground_truth([f[3] for f in frames], args.gt_iou))
        tracker = DetectionTracker()
        pred = []
        for (name, ir, vis, _), gt_frame in zip(frames, gt):
            dets = engine.fuse(ir, vis).detections
            tracker.update(dets)
            pred.append([Obj(d.track_id, d.class_id, d.box) for d in dets])
            if args.draw is not None:
                img = draw_detections(vis, dets)
                for o in gt_frame:
                    x1, y1, x2, y2 = (round(v) for v in o.box)
                    cv2.rectangle(img, (x1, y1), (x2, y2), (0, 255, 0), 1)
                    cv2.putText(img, f"g{o.id}", (x1, y2 + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 0), 1,
                                cv2.LINE_AA)
                write_image(args.draw / f"{name}.jpg", img, jpeg_quality=85)
        continuing += sum(len({o.id for o in a} & {o.id for o in b}) for a, b in pairwise(gt))
        for cid, c in enumerate(names):
            counts = mot_counts([[o for o in f if o.class_id == cid] for f in gt],
                                [[o for o in f if o.class_id == cid] for f in pred], args.iou)
            for k in COUNTS:
                per_class[c][k] += counts[k]
    total = {k: sum(v[k] for v in per_class.values()) for k in COUNTS}
    rows = {**per_class, "all": total}
    for r in rows.values():
        r["mota"] = round(1 - (r["misses"] + r["false_positives"] + r["id_switches"]) / r["gt"], 3) if r["gt"] \
            else None
    n_frames = sum(len(seq) for seq in seqs) * (args.pan or 1)
    how = (f"{len(seqs)} labelled frame(s) panned {args.pan} x {args.pan_step} px" if args.pan
           else f"{len(seqs)} sequence(s), label boxes linked at IoU >= {args.gt_iou}")
    print(f"model {engine.checkpoint}; {n_frames} frames of {args.data.name} ({how}); detections matched at "
          f"IoU >= {args.iou}; {continuing} of {total['gt']} label boxes continue an object of the previous frame"
          + (f"; ground truth of {', '.join(left_out)} left out (not a model class)" if left_out else ""))
    print("| class | " + " | ".join(COUNTS) + " | MOTA |")
    print("|---" * (len(COUNTS) + 2) + "|")
    for c, r in rows.items():
        print(f"| {c} | " + " | ".join(str(r[k]) for k in COUNTS) + f" | {r['mota']} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"checkpoint": str(engine.checkpoint), "sequences": seqs, "pan": args.pan,
                                         "continuing": continuing, "left_out": left_out, "counts": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
