"""Detection on the labelled validation frames: AP, per-class thresholds, and the published detections' quality.

    .venv/bin/python training/detection_eval.py --checkpoint v2=runs/v2_model v3=moe_fusion_core/default_model \
        --data ../shared/data/msrs_det_more ../shared/data/msrs_more ../shared/data/llvip_det \
        ../shared/data/llvip_more --split training/splits/shared_val_v3.txt --json runs/det_eval.json

Every model runs as the engine publishes (both detectors, merged to one box per object, native size), with no
score threshold, once per labelled validation frame of ``--split``. Per model and per group of frames (all; day
and night; each original dataset: MSRS's rig and LLVIP's camera; the frames v2 was validated on):

- AP@0.5 per class (VOC all-point, :mod:`moe_fusion_core.metrics.detection`) and mAP@[.5:.95] (the mean of the
  class-mean AP at IoU 0.50, 0.55, …, 0.95: COCO's IoU range with VOC's interpolation);
- precision, recall and false positives per frame of the published detections: each class at its threshold.

Thresholds: the model's own (``detector.score_thresholds``, else ``score_threshold``), or with ``--choose`` the
per-class threshold with the best F1 on these frames (what the shipped model publishes; the card says so).
``--choose`` also prints a two-fold check by sequence (thresholds chosen on one half of the sequences, scored on
the other) to show how much choosing and scoring on the same frames flatters the figures. Class names are matched
by name (``CLASS_ALIASES``): a class a model does not know has no AP there. ``--fused-ref NAME``: the mean and
largest difference of every model's fused image from that model's, in grey levels (the fusion must not change
when only the detectors were retrained).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_fusion_core.data import read_dataset
from moe_fusion_core.data.readers import canonical_class
from moe_fusion_core.data.split import assign_sequences, read_split_file
from moe_fusion_core.engine import FusionEngine
from moe_fusion_core.image_io import read_ir, read_vis
from moe_fusion_core.metrics.detection import Box, best_f1_threshold, mean_average_precision, precision_recall_at

LABEL_CLASSES = ["person", "bicycle", "car"]
IOUS = [0.5 + 0.05 * i for i in range(10)]
FOLDS = ({"msrs:day:500", "msrs:night:800"}, {"msrs:night:1000", "msrs:night:3", "llvip:01"})
V2_VAL = "msrs_more"  # the labelled frames v2's detection figures were measured on


def _only(boxes: dict[str, list[Box]], c: int) -> dict[str, list[Box]]:
    return {k: [b for b in v if b.class_id == c] for k, v in boxes.items()}


def choose_thresholds(gt: dict[str, list[Box]], dets: dict[str, list[Box]], classes: list[int]) -> dict[int, float]:
    """Per class, the score threshold with the best F1 of that class alone (1.0 when it has no ground truth)."""
    out = {}
    for c in classes:
        g = _only(gt, c)
        out[c] = best_f1_threshold(g, _only(dets, c))[0] if any(g.values()) else 1.0
    return out


def published(dets: dict[str, list[Box]], thr: dict[int, float]) -> dict[str, list[Box]]:
    return {k: [b for b in v if b.score >= thr.get(b.class_id, 1.0)] for k, v in dets.items()}


def scores(gt: dict[str, list[Box]], dets: dict[str, list[Box]], thr: dict[int, float], known: list[int]
           ) -> dict[str, Any]:
    """AP@0.5 per class, mAP@0.5 and @[.5:.95] over the classes the model knows; P/R/FP at ``thr``."""
    gt_k = {k: [b for b in v if b.class_id in known] for k, v in gt.items()}
    res = mean_average_precision(gt_k, dets)
    maps = [mean_average_precision(gt_k, dets, iou_threshold=t).map50 for t in IOUS]
    pub = published(dets, thr)
    at = precision_recall_at(gt_k, pub, 0.0)
    per_class = {}
    for c in known:
        pc = precision_recall_at(_only(gt_k, c), _only(pub, c), 0.0)
        per_class[LABEL_CLASSES[c]] = {"AP50": res.ap.get(c), "gt": res.num_gt.get(c, 0), **pc,
                                       "fp_per_frame": pc["fp"] / max(1, len(gt))}
    return {"frames": len(gt), "objects": sum(len(v) for v in gt_k.values()), "mAP50": res.map50,
            "mAP50_95": float(np.nanmean(maps)), "per_class": per_class, **at,
            "fp_per_frame": at["fp"] / max(1, len(gt))}


def run_model(ckpt: str, frames: list[Any]) -> tuple[dict[str, list[Box]], dict[str, np.ndarray], FusionEngine]:
    engine = FusionEngine(ckpt, device="cpu", score_threshold=0.0)
    to_label = {i: LABEL_CLASSES.index(canonical_class(n)) for i, n in enumerate(engine.class_names)
                if canonical_class(n) in LABEL_CLASSES}
    dets, fused = {}, {}
    for rec in frames:
        r = engine.fuse(read_ir(rec.ir), read_vis(rec.vis), detections=True)
        dets[rec.key] = [Box(d.box, to_label[d.class_id], d.score) for d in r.detections if d.class_id in to_label]
        fused[rec.key] = r.fused
    return dets, fused, engine


def model_thresholds(engine: FusionEngine) -> dict[int, float]:
    """The model's own published thresholds (the engine's rule), by label class."""
    own, engine.score_threshold = engine.score_threshold, None  # run_model's engine publishes everything
    try:
        return {LABEL_CLASSES.index(canonical_class(n)): engine.threshold_for(n)
                for n in engine.class_names if canonical_class(n) in LABEL_CLASSES}
    finally:
        engine.score_threshold = own


def fmt(x: float | None) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", nargs="+", required=True, help="NAME=CHECKPOINT (folder, or 'default')")
    ap.add_argument("--data", nargs="+", required=True, type=Path)
    ap.add_argument("--split", required=True, type=Path)
    ap.add_argument("--choose", nargs="*", default=[], help="models whose per-class thresholds are chosen here")
    ap.add_argument("--fused-ref", default=None, help="model whose fused images the others are compared with")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    held = set(read_split_file(args.split))
    recs = [r for root in args.data for r in read_dataset(root, LABEL_CLASSES)[0]]
    seq = assign_sequences(recs)
    frames = [r for r in recs if r.labelled and r.key in held]
    gt: dict[str, list[Box]] = {}
    for rec in frames:
        h, w = read_vis(rec.vis).shape[:2]
        b = rec.boxes * np.array([w, h, w, h], np.float32) if rec.boxes_normalized else rec.boxes
        gt[rec.key] = [Box(tuple(x), int(c)) for x, c in zip(b.tolist(), rec.labels.tolist())]
    groups: dict[str, list[str]] = defaultdict(list)
    for rec in frames:
        groups["all"].append(rec.key)
        groups[rec.light].append(rec.key)
        groups["llvip" if rec.dataset.startswith("llvip") else "msrs"].append(rec.key)
        if rec.dataset == V2_VAL:
            groups["v2 val (msrs_more)"].append(rec.key)
    print(f"{len(frames)} labelled validation frames: " + ", ".join(f"{g} {len(v)}" for g, v in groups.items()))
    out: dict[str, Any] = {"frames": sorted(gt), "models": {}}
    fused_all = {}
    for spec in args.checkpoint:
        name, _, ckpt = spec.partition("=")
        dets, fused, engine = run_model(ckpt, frames)
        fused_all[name] = fused
        known = sorted(model_thresholds(engine))
        if name in args.choose:
            thr = choose_thresholds(gt, dets, known)
            fold = {}
            for i, f in enumerate(FOLDS):
                a = {k for k in gt if seq[k] in f}
                other = set(gt) - a
                t = choose_thresholds({k: gt[k] for k in a}, {k: dets[k] for k in a}, known)
                fold.update({k: [b for b in dets[k] if b.score >= t[b.class_id]] for k in other})
                print(f"  fold {i}: thresholds chosen on {sorted(f)}: "
                      + ", ".join(f"{LABEL_CLASSES[c]} {v:.3f}" for c, v in t.items()))
            pr = precision_recall_at(gt, fold, 0.0)
            out.setdefault("twofold", {})[name] = {**pr, "fp_per_frame": pr["fp"] / len(gt)}
            print(f"  two-fold by sequence ({name}): P {pr['precision']:.3f} R {pr['recall']:.3f} "
                  f"FP/frame {pr['fp'] / len(gt):.2f}")
        else:
            thr = model_thresholds(engine)
        res = {g: scores({k: gt[k] for k in keys}, {k: dets[k] for k in keys}, thr, known)
               for g, keys in groups.items()}
        out["models"][name] = {"checkpoint": ckpt, "thresholds": {LABEL_CLASSES[c]: v for c, v in thr.items()},
                               "groups": res}
        print(f"\n## {name} ({ckpt}); thresholds " + ", ".join(f"{LABEL_CLASSES[c]} {v:.3f}" for c, v in thr.items()))
        print("| frames | n | AP50 person | AP50 bicycle | AP50 car | mAP50 | mAP50:95 | P | R | FP/frame |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for g, r in res.items():
            ap50 = [r["per_class"].get(c, {}).get("AP50") for c in LABEL_CLASSES]
            print(f"| {g} | {r['frames']} | " + " | ".join(fmt(a) for a in ap50)
                  + f" | {fmt(r['mAP50'])} | {fmt(r['mAP50_95'])} | {r['precision']:.3f} | {r['recall']:.3f} | "
                  f"{r['fp_per_frame']:.2f} |")
        print("per class at the thresholds (all frames): " + "; ".join(
            f"{c}: P {v['precision']:.3f} R {v['recall']:.3f} FP/frame {v['fp_per_frame']:.2f}"
            for c, v in res["all"]["per_class"].items()))
    if args.fused_ref:
        ref = fused_all[args.fused_ref]
        for name, fused in fused_all.items():
            d = [np.abs(fused[k].astype(np.int16) - ref[k].astype(np.int16)) for k in ref]
            diff = {"mean": float(np.mean([x.mean() for x in d])), "max": int(max(x.max() for x in d))}
            out["models"][name]["fused_vs_" + args.fused_ref] = diff
            print(f"fused {name} vs {args.fused_ref}: mean |diff| {diff['mean']:.3f}, max {diff['max']} grey levels")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
