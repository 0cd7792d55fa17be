"""Choose how the two detectors' boxes are merged, and the score threshold, on labelled frames.

    .venv/bin/python training/detection_sweep.py --checkpoint CKPT --data ../shared/data/llvip_det \
        ../shared/data/llvip_more ../shared/data/msrs_more [--split training/splits/shared_val.txt --side train]
        [--merge 0.5:1.0 0.3:0.7 ...] [--threshold 0.5]

Runs both detectors once per labelled frame (native size, as the engine does) and keeps each detector's own
boxes (score ≥ the model's ``box_score_thresh``), then for every ``IOU:CONTAINMENT`` merge setting
(:func:`moe_fusion_core.model.merge.merge_detections`) prints AP@0.5 per class, the score threshold with the best
F1 (pooled over classes), precision / recall / F1 there, and published boxes per frame against labelled objects;
``--threshold`` also reports every setting at that fixed threshold. ``--split FILE --side train|val`` keeps only
the training or the validation frames of a split file (choose the merge on training frames, the threshold on
validation frames). ``--json OUT`` writes everything.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_fusion_core.data import read_dataset
from moe_fusion_core.data.readers import canonical_class
from moe_fusion_core.data.split import read_split_file
from moe_fusion_core.engine import FusionEngine
from moe_fusion_core.image_io import read_ir, read_vis
from moe_fusion_core.metrics.detection import Box, best_f1_threshold, mean_average_precision, precision_recall_at
from moe_fusion_core.model.merge import merge_detections

LABEL_CLASSES = ["person", "bicycle", "car"]  # the classes labelled in ../shared/data; boxes of others are an error


@torch.no_grad()
def raw_detections(engine: FusionEngine, ir: np.ndarray, vis: np.ndarray) -> list[dict[str, torch.Tensor]]:
    """Each detector's own detections (before the merge) at the engine's input size, in input pixels."""
    ir8, rgb = engine.prepare(ir, vis)
    ir_t, vis_t, rgb_t = engine._tensors([ir8], [rgb])
    model = engine.model
    h, w = ir_t.shape[-2:]
    d = model.cfg.size_divisor
    pad = (0, (-w) % d, 0, (-h) % d)
    ir_p, vis_p, rgb_p = (torch.nn.functional.pad(x, pad) for x in (ir_t, vis_t, rgb_t))
    det = model.detectors
    f_vis, f_ir, _, _ = det.features(rgb_p if model.cfg.detector.rgb_visible else vis_p, ir_p)
    from torchvision.models.detection.image_list import ImageList

    dv, _ = det.head_vis(f_vis, ImageList(vis_p, [(h, w)]))
    di, _ = det.head_ir(f_ir, ImageList(ir_p, [(h, w)]))
    return [dv[0], di[0]]


def to_boxes(d: dict[str, torch.Tensor]) -> list[Box]:
    return [Box(tuple(b), int(c) - 1, float(s)) for b, c, s in
            zip(d["boxes"].tolist(), d["labels"].tolist(), d["scores"].tolist())]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--data", nargs="+", required=True, type=Path)
    ap.add_argument("--split", type=Path, default=None)
    ap.add_argument("--side", choices=["train", "val"], default="val")
    ap.add_argument("--merge", nargs="+", default=["0.5:1.0", "0.4:1.0", "0.3:1.0", "0.5:0.8", "0.4:0.8", "0.3:0.8",
                                                    "0.4:0.7", "0.3:0.7", "0.3:0.6"])
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    engine = FusionEngine(args.checkpoint, device="cpu", score_threshold=0.0)
    names = engine.class_names
    model_cls = [canonical_class(n) for n in names]
    held = set(read_split_file(args.split)) if args.split else None
    gt: dict[str, list[Box]] = {}
    raw: dict[str, list[dict[str, torch.Tensor]]] = {}
    for root in args.data:
        for rec in read_dataset(root, LABEL_CLASSES)[0]:
            if not rec.labelled or (held is not None and (rec.key in held) != (args.side == "val")):
                continue
            ir, vis = read_ir(rec.ir), read_vis(rec.vis)
            h, w = vis.shape[:2]
            b = rec.boxes * np.array([w, h, w, h], np.float32) if rec.boxes_normalized else rec.boxes
            known = [LABEL_CLASSES[c] in model_cls for c in rec.labels.tolist()]  # boxes of classes the model knows
            gt[rec.key] = [Box(tuple(x), model_cls.index(LABEL_CLASSES[c])) for x, c, k in
                           zip(b.tolist(), rec.labels.tolist(), known) if k]
            raw[rec.key] = raw_detections(engine, ir, vis)
    n_obj = sum(len(v) for v in gt.values())
    print(f"{len(gt)} labelled frames, {n_obj} objects "
          + ", ".join(f"{n} {sum(b.class_id == i for v in gt.values() for b in v)}" for i, n in enumerate(names)))
    cfg = engine.config.model.detector
    results = {}
    header = "merge IoU:cont | " + " | ".join(f"AP {n}" for n in names) + " | best-F1 thr | P | R | F1 | boxes/frame"
    if args.threshold is not None:
        header += f" | @{args.threshold}: P | R | F1 | boxes/frame"
    print(header)
    for m in args.merge:
        iou, cont = (float(x) for x in m.split(":"))
        dets = {k: to_boxes(merge_detections(v, iou, cont, cfg.box_detections_per_img)) for k, v in raw.items()}
        res = mean_average_precision(gt, dets, num_classes=len(names))
        thr, st = best_f1_threshold(gt, dets)
        per_frame = sum(sum(d.score >= thr for d in v) for v in dets.values()) / len(dets)
        row = {"AP": {n: res.ap.get(i) for i, n in enumerate(names)}, "mAP50": res.map50, "best_f1": st,
               "boxes_per_frame": per_frame, "objects_per_frame": n_obj / len(gt)}
        line = (f"{m:>14} | " + " | ".join(f"{res.ap.get(i, float('nan')):.3f}" for i in range(len(names)))
                + f" | {thr:.3f} | {st['precision']:.3f} | {st['recall']:.3f} | {st['f1']:.3f} | {per_frame:.1f}")
        if args.threshold is not None:
            at = precision_recall_at(gt, dets, args.threshold)
            n_at = sum(sum(d.score >= args.threshold for d in v) for v in dets.values()) / len(dets)
            row["at_threshold"] = {**at, "threshold": args.threshold, "boxes_per_frame": n_at}
            line += f" | {at['precision']:.3f} | {at['recall']:.3f} | {at['f1']:.3f} | {n_at:.1f}"
        results[m] = row
        print(line)
    print(f"labelled objects per frame: {n_obj / len(gt):.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"frames": sorted(gt), "objects": n_obj, "merge": results}, indent=1,
                                        default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
