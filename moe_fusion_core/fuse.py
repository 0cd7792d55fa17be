"""``moe-fusion fuse --ir DIR --vis DIR --out DIR``: fuse every pair of two folders (pairs by file stem).

Writes ``OUT/<stem>.png`` (8-bit grey fused image at the visible image's size); with ``--color`` also
``OUT/color/<stem>.png``; with ``--detections`` ``OUT/detections/<stem>.json`` and an overlay
``OUT/detections/<stem>.jpg`` (the classes of ``--classes``, default all; pairs in stem order are tracked as one
sequence, each detection's ``track_id`` kept while the object stays in view, unless ``--no-tracking``); always
``OUT/gates.jsonl`` (which experts fired, per pair) and ``OUT/summary.json`` (with per-stage latency). Unpaired and
unreadable files are listed in the summary and skipped.
With ``--html-report DIR``: a contact sheet per pair (``DIR/sheets/<stem>.jpg``: thermal | visible | fused | fused +
detections, gate weights as a bar chart) and ``DIR/index.html`` with the per-stage latency and the fusion metrics
(paper mode) of every pair (:mod:`moe_fusion_core.report`).

Exit codes: 0 every pair fused; 1 some pairs or files were skipped (see the summary), or scoring a pair's metrics
for ``--html-report`` failed (the pair is named on stderr); 2 nothing was fused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from .embedded import CHECKPOINT_KINDS
from .image_io import ImageReadError, dataset_meta, pair_by_stem, read_ir, read_vis, write_image
from .report import draw_detections, latency_table
from .tracking import DetectionTracker, check_classes, select_classes
from .tracking import add_arguments as add_detection_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ir", required=True, type=Path, help="folder of infrared images")
    p.add_argument("--vis", required=True, type=Path, help="folder of visible images (same stems)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--checkpoint", default=None,
                   help=f"{CHECKPOINT_KINDS}, or an exported .onnx graph (fp32 or INT8, run by ONNX Runtime); "
                        "default: the embedded default model")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--color", action="store_true", help="also write colour fused images")
    p.add_argument("--detections", action="store_true", help="also write detections (JSON + overlay)")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="minimum detection score for every class (default: the model's own, per class)")
    add_detection_arguments(p)
    p.add_argument("--mismatch", choices=["resize", "error"], default="resize",
                   help="infrared of another size than the visible image: resize it, or skip the pair")
    p.add_argument("--html-report", type=Path, default=None, metavar="DIR",
                   help="write a contact sheet per pair and DIR/index.html (latency, metrics)")
    p.add_argument("--no-progress", action="store_true")


def daynight_tags(ir_dir: Path) -> dict[str, str]:
    """Day/night tags from a ``meta.csv`` beside the ``ir/`` folder (the shared data layout), if present."""
    try:
        rows = dataset_meta(ir_dir.parent)
    except FileNotFoundError:  # optional here: no tags
        return {}
    tags: dict[str, str] = {}
    for row in rows:  # other layouts name the columns id / daynight
        stem = row.get("stem") or row.get("id")
        tag = row.get("light") or row.get("daynight")
        if stem and tag:
            tags[stem] = tag
    return tags


def run(args: argparse.Namespace) -> int:
    from .engine import FusionEngine

    try:
        listing = pair_by_stem([args.ir, args.vis], ["ir", "vis"])
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = pair_metrics = None
    if args.html_report is not None:  # before anything is loaded or written: a bad folder fails at once
        from .report import HtmlReport, PairMetrics

        report = HtmlReport(args.html_report, f"moe-fusion fuse: {args.ir} + {args.vis}")
        pair_metrics = PairMetrics("paper")
    onnx_graph = args.checkpoint is not None and Path(args.checkpoint).suffix == ".onnx"
    engine = FusionEngine(args.checkpoint, device=args.device, precision=args.precision,
                          backend="onnxruntime" if onnx_graph else "torch",
                          detections=args.detections or report is not None,
                          score_threshold=args.score_threshold, mismatch=args.mismatch)
    classes = check_classes(args.classes, engine.class_names)
    tracker = None if args.no_tracking else DetectionTracker()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, list[float]] = defaultdict(list)
    tags = daynight_tags(args.ir)
    failed: dict[str, str] = {}
    fused_count = 0
    pairs = listing.pairs
    if not args.no_progress:
        from tqdm import tqdm

        pairs = tqdm(pairs, desc="fuse", unit="pair", file=sys.stderr)
    with open(out / "gates.jsonl", "w") as gate_log:
        for stem, (ir_path, vis_path) in pairs:
            t0 = time.perf_counter()
            try:
                ir, vis = read_ir(ir_path), read_vis(vis_path)
                t1 = time.perf_counter()
                res = engine.fuse(ir, vis, color=args.color, detections=args.detections or report is not None)
            except (ImageReadError, ValueError) as e:
                failed[stem] = str(e)
                continue
            res.detections = select_classes(res.detections, classes)
            if tracker is not None:
                tracker.update(res.detections)
            t2 = time.perf_counter()
            write_image(out / f"{stem}.png", res.fused)
            if res.color is not None:
                write_image(out / "color" / f"{stem}.png", res.color)
            if args.detections:
                h, w = res.fused.shape
                det_json = {"width": w, "height": h, "detections": [
                    {"box": [round(v, 2) for v in d.box], "class_id": d.class_id, "class_name": d.class_name,
                     "score": round(d.score, 4), "track_id": d.track_id} for d in res.detections]}
                det_file = out / "detections" / f"{stem}.json"
                det_file.parent.mkdir(parents=True, exist_ok=True)
                det_file.write_text(json.dumps(det_json))
                write_image(out / "detections" / f"{stem}.jpg", draw_detections(vis, res.detections))
            daynight = tags.get(Path(stem).name, "unknown")
            gate_log.write(json.dumps({"stem": stem, "daynight": daynight,
                                       **{k: [round(float(x), 4) for x in v] for k, v in res.gates.items()}}) + "\n")
            fused_count += 1
            t3 = time.perf_counter()
            stages = {k: v for k, v in res.timings_ms.items() if k != "total"}  # the engine's own stages
            pair_ms = {"read": (t1 - t0) * 1e3, **stages, "fuse": (t2 - t1) * 1e3, "write": (t3 - t2) * 1e3,
                       "total": (t3 - t0) * 1e3}
            for k, v in pair_ms.items():
                timings[k].append(v)
            if report is not None:
                ir8, vis8 = engine.prepare(ir, vis)  # what the model saw: 8-bit thermal at the visible size
                report.add_pair(stem, ir8, vis8, res.color if res.color is not None else res.fused, res.detections,
                                res.gates, tag=daynight if daynight != "unknown" else "",
                                timings_ms={"fuse": pair_ms["fuse"], "total": pair_ms["total"]},
                                metrics=pair_metrics.add(res.fused, ir8, vis8, stem))
    summary = {
        "fused": fused_count, "pairs": len(listing.pairs), "failed": failed,
        "unpaired": listing.unpaired, "duplicates": listing.duplicates,
        "checkpoint": str(engine.checkpoint), "device": str(engine.device), "precision": engine.precision,
        "backend": engine.backend, "quantization": engine.quantization,
        "latency_ms": latency_table(timings),
    }
    if report is not None:
        metric_values, metric_reason = pair_metrics.result()
        page = report.write(latency=summary["latency_ms"], metrics=metric_values, metrics_note=metric_reason,
                            summary={"pairs": len(listing.pairs), "fused": fused_count, "failed": len(failed),
                                     "checkpoint": summary["checkpoint"], "device": summary["device"],
                                     "precision": engine.precision})
        summary["html_report"] = str(page)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    skipped = len(failed) + sum(len(v) for v in listing.unpaired.values()) + len(listing.duplicates)
    print(f"fused {fused_count}/{len(listing.pairs)} pairs into {out}"
          + (f"; skipped {skipped} (see {out / 'summary.json'})" if skipped else ""))
    if "html_report" in summary:
        print(f"report: {summary['html_report']}")
    for stem, why in failed.items():
        print(f"  failed {stem}: {why}", file=sys.stderr)
    for side, stems in listing.unpaired.items():
        print(f"  no partner in the other folder ({side}): {', '.join(stems[:10])}"
              + (" …" if len(stems) > 10 else ""), file=sys.stderr)
    if pair_metrics is not None and pair_metrics.failed:
        print(f"error: fusion metrics: {pair_metrics.failed}", file=sys.stderr)
    if fused_count == 0:
        return 2
    return 1 if skipped or (pair_metrics is not None and pair_metrics.failed) else 0
