"""ID switches of the published track IDs on a labelled frame sequence (MSRS drives, ../shared/data/msrs_det_more).

Usage: ``python benchmarks/track_id_switches.py [--checkpoint DIR] [--data DIR] [--stems 00802N-00899N,...]``.

MSRS test stems are about every 4th frame of a drive, so the sorted stems of one run (``D``/``N`` suffix) are a
video-like sequence; a stem more than ``--max-gap`` numbers after the previous one starts a new sequence (tracker
and ground-truth identities start afresh). The default stems are the two night blocks the detector training holds
out for validation. Per sequence the engine fuses every pair, its published detections (the model's thresholds, or
``--score-threshold``) get track IDs from :class:`~moe_fusion_core.tracking.DetectionTracker` exactly as the node
and ``moe-fusion fuse`` give them, and the labels get identities by linking consecutive frames
(:func:`~moe_fusion_core.metrics.tracking.link_ground_truth`, Hungarian on IoU ≥ ``--gt-iou``). Ground truth of
classes the model does not have is left out (and said so). Printed: CLEAR-MOT counts per class and in total
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
from pathlib import Path

import cv2

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shared = Path(os.environ.get("MOE_FUSION_SHARED", REPO.parent / "shared"))
    ap.add_argument("--data", type=Path, default=shared / "data" / "msrs_det_more",
                    help="folder with ir/, vis/, labels/ (YOLO) and classes.txt")
    ap.add_argument("--stems", default=DEFAULT_STEMS, help="stem ranges FIRST-LAST, comma-separated")
    ap.add_argument("--max-gap", type=int, default=10, help="a larger jump of stem numbers starts a new sequence")
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
    if not seqs:
        print(f"error: no stem of {args.stems} in {args.data / 'ir'}", file=sys.stderr)
        return 2
    engine = FusionEngine(args.checkpoint, device=args.device, score_threshold=args.score_threshold)
    names = engine.class_names
    left_out = [c for c in label_names if c not in names]
    per_class = {c: dict.fromkeys(COUNTS, 0) for c in names}
    for seq in seqs:
        tracker = DetectionTracker()
        gt_boxes, pred = [], []
        for stem in seq:
            ir, vis = read_ir(args.data / "ir" / f"{stem}.png"), read_vis(args.data / "vis" / f"{stem}.png")
            h, w = vis.shape[:2]
            dets = engine.fuse(ir, vis).detections
            tracker.update(dets)
            pred.append([Obj(d.track_id, d.class_id, d.box) for d in dets])
            labels = read_yolo_labels(args.data / "labels" / f"{stem}.txt", w, h)
            gt_boxes.append([(names.index(label_names[b.class_id]), b.box) for b in labels
                             if label_names[b.class_id] in names])
            if args.draw is not None:
                img = draw_detections(vis, dets)
                for b in labels:
                    x1, y1, x2, y2 = (round(v) for v in b.box)
                    cv2.rectangle(img, (x1, y1), (x2, y2), (0, 255, 0), 1)
                gt_frame = link_ground_truth(gt_boxes, args.gt_iou)[-1]
                for o in gt_frame:
                    cv2.putText(img, f"g{o.id}", (round(o.box[0]), round(o.box[3]) + 12), cv2.FONT_HERSHEY_SIMPLEX,
                                0.4, (0, 255, 0), 1, cv2.LINE_AA)
                write_image(args.draw / f"{stem}.jpg", img, jpeg_quality=85)
        gt = link_ground_truth(gt_boxes, args.gt_iou)
        for cid, c in enumerate(names):
            counts = mot_counts([[o for o in f if o.class_id == cid] for f in gt],
                                [[o for o in f if o.class_id == cid] for f in pred], args.iou)
            for k in COUNTS:
                per_class[c][k] += counts[k]
        print(f"sequence {seq[0]}..{seq[-1]}: {len(seq)} frames, {len({o.id for f in gt for o in f})} "
              "ground-truth identities", file=sys.stderr)
    total = {k: sum(v[k] for v in per_class.values()) for k in COUNTS}
    rows = {**per_class, "all": total}
    for r in rows.values():
        r["mota"] = round(1 - (r["misses"] + r["false_positives"] + r["id_switches"]) / r["gt"], 3) if r["gt"] \
            else None
    print(f"model {engine.checkpoint}; {sum(map(len, seqs))} frames in {len(seqs)} sequence(s) of {args.data.name}; "
          f"detections matched at IoU >= {args.iou}, label boxes linked at IoU >= {args.gt_iou}"
          + (f"; ground truth of {', '.join(left_out)} left out (not a model class)" if left_out else ""))
    print("| class | " + " | ".join(COUNTS) + " | MOTA |")
    print("|---" * (len(COUNTS) + 2) + "|")
    for c, r in rows.items():
        print(f"| {c} | " + " | ".join(str(r[k]) for k in COUNTS) + f" | {r['mota']} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"checkpoint": str(engine.checkpoint), "sequences": seqs,
                                         "left_out": left_out, "counts": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
