"""``moe-fusion fuse --ir DIR --vis DIR --out DIR``: fuse every pair of two folders (pairs by file stem).

Writes ``OUT/<stem>.png`` (8-bit grey fused image at the visible image's size); with ``--color`` also
``OUT/color/<stem>.png``; with ``--detections`` ``OUT/detections/<stem>.json`` and an overlay
``OUT/detections/<stem>.jpg``; always ``OUT/gates.jsonl`` (which experts fired, per pair) and
``OUT/summary.json``. Unpaired and unreadable files are listed in the summary and skipped.

Exit codes: 0 every pair fused; 1 some pairs or files were skipped (see the summary); 2 nothing was fused.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from .image_io import ImageReadError, pair_by_stem, read_ir, read_vis, write_image


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ir", required=True, type=Path, help="folder of infrared images")
    p.add_argument("--vis", required=True, type=Path, help="folder of visible images (same stems)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--checkpoint", type=Path, default=None, help="model folder or .safetensors (default: embedded)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--color", action="store_true", help="also write colour fused images")
    p.add_argument("--detections", action="store_true", help="also write detections (JSON + overlay)")
    p.add_argument("--score-threshold", type=float, default=0.3, help="minimum detection score")
    p.add_argument("--mismatch", choices=["resize", "error"], default="resize",
                   help="infrared of another size than the visible image: resize it, or skip the pair")
    p.add_argument("--no-progress", action="store_true")


def daynight_tags(ir_dir: Path) -> dict[str, str]:
    """Day/night tags from a ``meta.csv`` beside the ``ir/`` folder (the shared data layout), if present."""
    meta = ir_dir.parent / "meta.csv"
    tags: dict[str, str] = {}
    if meta.is_file():
        with open(meta, newline="") as f:
            for row in csv.DictReader(f):
                stem = row.get("stem") or row.get("id")
                tag = row.get("light") or row.get("daynight")
                if stem and tag:
                    tags[stem] = tag
    return tags


def draw_detections(rgb: np.ndarray, detections: list) -> np.ndarray:
    """A copy of ``rgb`` with boxes, class names and scores drawn."""
    img = np.ascontiguousarray(rgb.copy())
    for d in detections:
        x1, y1, x2, y2 = (round(v) for v in d.box)
        cv2.rectangle(img, (x1, y1), (x2, y2), (255, 64, 0), 2)
        cv2.putText(img, f"{d.class_name} {d.score:.2f}", (x1, max(10, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 0), 1, cv2.LINE_AA)
    return img


def run(args: argparse.Namespace) -> int:
    from .engine import FusionEngine

    try:
        listing = pair_by_stem([args.ir, args.vis], ["ir", "vis"])
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    engine = FusionEngine(args.checkpoint, device=args.device, precision=args.precision,
                          detections=args.detections, score_threshold=args.score_threshold, mismatch=args.mismatch)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tags = daynight_tags(args.ir)
    failed: dict[str, str] = {}
    fused_count = 0
    pairs = listing.pairs
    if not args.no_progress:
        from tqdm import tqdm

        pairs = tqdm(pairs, desc="fuse", unit="pair", file=sys.stderr)
    with open(out / "gates.jsonl", "w") as gate_log:
        for stem, (ir_path, vis_path) in pairs:
            try:
                res = engine.fuse(read_ir(ir_path), read_vis(vis_path), color=args.color,
                                  detections=args.detections)
            except (ImageReadError, ValueError) as e:
                failed[stem] = str(e)
                continue
            write_image(out / f"{stem}.png", res.fused)
            if res.color is not None:
                write_image(out / "color" / f"{stem}.png", res.color)
            if args.detections:
                h, w = res.fused.shape
                det_json = {"width": w, "height": h, "detections": [
                    {"box": [round(v, 2) for v in d.box], "class_id": d.class_id, "class_name": d.class_name,
                     "score": round(d.score, 4)} for d in res.detections]}
                det_file = out / "detections" / f"{stem}.json"
                det_file.parent.mkdir(parents=True, exist_ok=True)
                det_file.write_text(json.dumps(det_json))
                write_image(out / "detections" / f"{stem}.jpg", draw_detections(read_vis(vis_path), res.detections))
            gate_log.write(json.dumps({"stem": stem, "daynight": tags.get(Path(stem).name, "unknown"),
                                       **{k: [round(float(x), 4) for x in v] for k, v in res.gates.items()}}) + "\n")
            fused_count += 1
    summary = {
        "fused": fused_count, "pairs": len(listing.pairs), "failed": failed,
        "unpaired": listing.unpaired, "duplicates": listing.duplicates,
        "checkpoint": str(engine.checkpoint), "device": str(engine.device), "precision": engine.precision,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    skipped = len(failed) + sum(len(v) for v in listing.unpaired.values()) + len(listing.duplicates)
    print(f"fused {fused_count}/{len(listing.pairs)} pairs into {out}"
          + (f"; skipped {skipped} (see {out / 'summary.json'})" if skipped else ""))
    for stem, why in failed.items():
        print(f"  failed {stem}: {why}", file=sys.stderr)
    for side, stems in listing.unpaired.items():
        print(f"  no partner in the other folder ({side}): {', '.join(stems[:10])}"
              + (" …" if len(stems) > 10 else ""), file=sys.stderr)
    if fused_count == 0:
        return 2
    return 1 if skipped else 0
