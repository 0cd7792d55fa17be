"""``moe-fusion evaluate``: score fused images with the paper's eight fusion metrics (+ mAP@0.5 with labels).

``moe-fusion evaluate --fused DIR --ir DIR --vis DIR [--labels DIR [--score-threshold T]] [--detections DIR]
[--mode paper|standard|both]
[--baselines] [--json OUT.json] [--report OUT_DIR] [--gate-log gates.jsonl] [--no-progress]``

Images are paired by relative stem across the three folders (nested dataset folders are allowed; means are also
given per dataset folder). The ``color/`` and ``detections/`` sub-folders that ``moe-fusion fuse`` writes next to
the fused images are ignored. A fused image must have the sources' size. Metric definitions and the two modes:
``docs/evaluation.md`` and :mod:`moe_fusion_core.metrics.fusion`.

JSON (``--json``; NaN is written as ``null``)::

    {"<mode>": {"mean": {"EN": …, …}, "per_image": {"<stem>": {…}}, "nan_count": {…},
                "per_folder": {"<folder>": {"mean", "nan_count", "count"}}   (nested folders only)},
     "baselines": {"<name>": {"<mode>": {"mean", "nan_count", "per_image"}}}   (--baselines),
     "skipped": [{"stem", "reason"}, …],
     "detection": {"mAP50", "per_class", "images", "problems", "best_f1": {"threshold", "precision", "recall",
                   "f1", …}, "at_threshold": {…} (--score-threshold), …}   (--labels),
     "gates": {…}   (--gate-log),
     "summary": {"pairs", "scored", "skipped", "modes"}}

Exit codes: 0 every pair scored (and, with ``--labels``, every labelled image had detections); 1 some pairs or
files were skipped (listed in ``skipped``/``detection.problems`` and on stderr); 2 usage error or nothing
scorable (no pair could be scored, a folder is missing).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .image_io import ImageReadError, pair_by_stem, read_image, read_ir
from .metrics.fusion import METRIC_NAMES, aggregate, score_all, to_grey_u8

FUSE_SUBFOLDERS = ("color", "detections")  # written by ``moe-fusion fuse`` beside the fused images
BASELINES = ("average", "max", "ir", "visible")
GATE_KEYS = ("mole_fg", "mole_bg", "moge")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fused", required=True, type=Path, help="folder of fused images (8-bit, source size)")
    p.add_argument("--ir", required=True, type=Path, help="folder of infrared images (same stems)")
    p.add_argument("--vis", required=True, type=Path, help="folder of visible images (same stems)")
    p.add_argument("--labels", type=Path, default=None, help="YOLO label folder: also compute mAP@0.5")
    p.add_argument("--detections", type=Path, default=None,
                   help="detection JSON folder of 'moe-fusion fuse --detections' (default FUSED/detections)")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="with --labels: also precision/recall of the detections scoring at least this")
    p.add_argument("--classes", type=Path, default=None,
                   help="classes.txt (default: in the label folder or beside it)")
    p.add_argument("--mode", choices=["paper", "standard", "both"], default="both",
                   help="metric definitions: the paper's toolbox scales, conventional floats, or both")
    p.add_argument("--baselines", action="store_true", help="also score average, max, IR-only and visible-only")
    p.add_argument("--json", type=Path, default=None, help="write all results as JSON")
    p.add_argument("--report", type=Path, default=None, help="write report.md and PNG plots into this folder")
    p.add_argument("--gate-log", type=Path, default=None,
                   help="gates.jsonl of 'moe-fusion fuse': each expert's share of the gate mass by day/night")
    p.add_argument("--no-progress", action="store_true")


def baseline_images(ir: np.ndarray, vis: np.ndarray) -> dict[str, np.ndarray]:
    """The simple fusions every method is compared with (``uint8`` grey)."""
    s = ir.astype(np.float64) + vis
    return {"average": np.floor(s / 2 + 0.5).astype(np.uint8), "max": np.maximum(ir, vis), "ir": ir, "visible": vis}


def _size(a: np.ndarray) -> str:
    return f"{a.shape[1]}×{a.shape[0]}"


def _load(fp: Path, ip: Path, vp: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fused = to_grey_u8(read_image(fp), f"{fp}")
    ir = to_grey_u8(read_ir(ip), f"{ip}")
    vis = to_grey_u8(read_image(vp), f"{vp}")
    if ir.shape != vis.shape:
        raise ValueError(f"infrared {_size(ir)} and visible {_size(vis)} differ in size")
    if fused.shape != ir.shape:
        raise ValueError(f"fused image is {_size(fused)} but the sources are {_size(ir)} (W×H); fused images "
                         f"must be at the source resolution")
    return fused, ir, vis


def _clean(x: Any) -> Any:
    """NaN/inf → None, numpy scalars → Python, recursively (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _block(per_image: dict[str, dict[str, float]], folders: bool) -> dict[str, Any]:
    mean, nan_count = aggregate(per_image)
    out: dict[str, Any] = {"mean": mean, "per_image": per_image, "nan_count": nan_count}
    if folders:
        groups: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
        for stem, row in per_image.items():
            groups[str(Path(stem).parent)][stem] = row
        out["per_folder"] = {}
        for g, rows in sorted(groups.items()):
            m, c = aggregate(rows)
            out["per_folder"][g] = {"mean": m, "nan_count": c, "count": len(rows)}
    return out


def gate_statistics(path: Path) -> dict[str, Any]:
    """Routing statistics of a ``gates.jsonl``, per gate and day/night tag.

    ``fired_fraction``: fraction of pairs in which each expert fired (weight > 0). ``share``: mean gate vector,
    i.e. each expert's share of the gate mass (sums to 1), per tag and over all pairs (``"all"``).
    ``tv_day_night``: total-variation distance ½·Σ|share_day − share_night| per gate (0: day and night frames
    routed alike, 1: disjoint experts); present when both tags occur.
    """
    fired: dict[str, dict[str, np.ndarray]] = {}
    mass: dict[str, dict[str, np.ndarray]] = {}
    counts: dict[str, int] = defaultdict(int)
    gate_counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON line ({e})") from e
        tag = str(rec.get("daynight", "unknown"))
        counts[tag] += 1
        for t in (tag, "all"):
            for k in GATE_KEYS:
                if k not in rec:
                    continue
                w = np.asarray(rec[k], dtype=np.float64)
                mass.setdefault(t, {})
                mass[t][k] = mass[t].get(k, np.zeros_like(w)) + w
                gate_counts[t][k] += 1
                if t == tag:
                    per = fired.setdefault(tag, {})
                    per[k] = per.get(k, np.zeros_like(w)) + (w > 0)
    share = {t: {k: (v / gate_counts[t][k]).tolist() for k, v in per.items()} for t, per in mass.items()}
    out: dict[str, Any] = {
        "count": dict(counts),
        "fired_fraction": {t: {k: (v / counts[t]).tolist() for k, v in per.items()} for t, per in fired.items()},
        "share": share,
    }
    if "day" in share and "night" in share:
        out["tv_day_night"] = {k: 0.5 * float(np.abs(np.subtract(share["day"][k], share["night"][k])).sum())
                               for k in GATE_KEYS if k in share["day"] and k in share["night"]}
    return out


def _detection(args: argparse.Namespace) -> dict[str, Any]:
    from .metrics.detection import (
        best_f1_threshold,
        load_labels_and_detections,
        mean_average_precision,
        precision_recall_at,
        read_class_names,
    )

    det_dir = args.detections or args.fused / "detections"
    if not args.labels.is_dir():
        raise FileNotFoundError(f"{args.labels}: label folder not found")
    if not det_dir.is_dir():
        raise FileNotFoundError(f"{det_dir}: detection folder not found (run 'moe-fusion fuse --detections' "
                                f"or pass --detections)")
    classes_file = args.classes or next((c for c in (args.labels / "classes.txt", args.labels.parent / "classes.txt")
                                         if c.is_file()), None)
    names = read_class_names(classes_file) if classes_file else None
    gt, dets, problems = load_labels_and_detections(args.labels, det_dir, names)
    res = mean_average_precision(gt, dets, num_classes=len(names) if names else None)
    thr, best = best_f1_threshold(gt, dets)
    out = {**res.to_json(names), "images": len(gt), "problems": problems, "iou_threshold": 0.5,
           "interpolation": "VOC all-point", "detections_dir": str(det_dir),
           "best_f1": {"threshold": thr, **best}}
    if args.score_threshold is not None:
        out["at_threshold"] = {"threshold": args.score_threshold, **precision_recall_at(gt, dets, args.score_threshold)}
    return out


def run(args: argparse.Namespace) -> int:
    if args.detections is not None and args.labels is None:
        print("moe-fusion evaluate: error: --detections needs --labels (the ground truth)", file=sys.stderr)
        return 2
    try:
        listing = pair_by_stem([args.fused, args.ir, args.vis], ["fused", "ir", "vis"])
    except FileNotFoundError as e:
        print(f"moe-fusion evaluate: error: {e}", file=sys.stderr)
        return 2
    modes = ["paper", "standard"] if args.mode == "both" else [args.mode]
    skipped: list[dict[str, str]] = []
    present: dict[str, list[str]] = defaultdict(list)
    for side, stems in listing.unpaired.items():
        for s in stems:
            if side == "fused" and s.split("/", 1)[0] in FUSE_SUBFOLDERS:
                continue
            present[s].append(side)
    for s, sides in sorted(present.items()):
        missing = [x for x in ("fused", "ir", "vis") if x not in sides]
        skipped.append({"stem": s, "reason": f"no partner: found in {', '.join(sides)}, missing in "
                                             f"{', '.join(missing)}"})
    skipped.extend({"stem": d, "reason": "stem present twice with different suffixes"} for d in listing.duplicates)

    per_image: dict[str, dict[str, dict[str, float]]] = {m: {} for m in modes}
    base: dict[str, dict[str, dict[str, dict[str, float]]]] = {b: {m: {} for m in modes} for b in BASELINES}
    pairs = listing.pairs
    if not args.no_progress:
        from tqdm import tqdm

        pairs = tqdm(pairs, desc="evaluate", unit="pair", file=sys.stderr)
    for stem, (fp, ip, vp) in pairs:
        try:
            fused, ir, vis = _load(fp, ip, vp)
        except (ImageReadError, ValueError) as e:
            skipped.append({"stem": stem, "reason": str(e)})
            continue
        for m in modes:
            per_image[m][stem] = score_all(fused, ir, vis, m)
        if args.baselines:
            for name, img in baseline_images(ir, vis).items():
                for m in modes:
                    base[name][m][stem] = score_all(img, ir, vis, m)
    scored = len(per_image[modes[0]])
    nested = any("/" in s for s in per_image[modes[0]])
    result: dict[str, Any] = {m: _block(per_image[m], nested) for m in modes}
    if args.baselines:
        result["baselines"] = {b: {m: _block(base[b][m], False) for m in modes} for b in BASELINES}
    result["skipped"] = skipped
    problems = 0
    if args.labels is not None:
        result["detection"] = _detection(args)
        problems = len(result["detection"]["problems"])
    if args.gate_log is not None:
        result["gates"] = gate_statistics(args.gate_log)
    result["summary"] = {"pairs": len(listing.pairs), "scored": scored, "skipped": len(skipped) + problems,
                         "modes": modes}
    result = _clean(result)

    _print_summary(result, modes)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    if args.report is not None and scored:
        write_report(result, modes, args.report)
    for s in skipped:
        print(f"  skipped {s['stem']}: {s['reason']}", file=sys.stderr)
    for p in result.get("detection", {}).get("problems", []):
        print(f"  detection: {p}", file=sys.stderr)
    if scored == 0:
        print("moe-fusion evaluate: error: no pair could be scored", file=sys.stderr)
        return 2
    return 1 if skipped or problems else 0


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def _print_summary(result: dict[str, Any], modes: list[str]) -> None:
    s = result["summary"]
    print(f"scored {s['scored']}/{s['pairs']} pairs" + (f"; skipped {s['skipped']}" if s["skipped"] else ""))
    for m in modes:
        rows = [("method", result[m]["mean"])]
        rows += [(b, result["baselines"][b][m]["mean"]) for b in result.get("baselines", {})]
        print(f"\n[{m} mode]  " + "".join(f"{k:>9}" for k in METRIC_NAMES))
        for name, mean in rows:
            print(f"{name:<14}" + "".join(f"{_fmt(mean[k]):>9}" for k in METRIC_NAMES))
        nan = {k: v for k, v in result[m]["nan_count"].items() if v}
        if nan:
            print(f"  NaN (left out of the means): {nan}")
    if "gates" in result:
        g = result["gates"]
        print("\nrouting: share of the gate mass per expert")
        for key in GATE_KEYS:
            for t, per in sorted(g.get("share", {}).items()):
                if key in per:
                    print(f"  {key:<8} {t:<8}" + "".join(f"{v:>8.1%}" for v in per[key]))
        if "tv_day_night" in g:
            print("  day/night total-variation distance: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in g["tv_day_night"].items()))
    if "detection" in result:
        d = result["detection"]
        print(f"\nmAP@0.5 (VOC all-point) over {d['images']} images: {_fmt(d['mAP50'])}")
        for name, c in d["per_class"].items():
            print(f"  {name:<16} AP {_fmt(c['AP'])}  (gt {c['num_gt']}, det {c['num_det']})")
        for key, label in (("best_f1", "best F1"), ("at_threshold", "at")):
            if key in d:
                x = d[key]
                print(f"  {label} score ≥ {x['threshold']:.3f}: precision {x['precision']:.3f}, recall "
                      f"{x['recall']:.3f}, F1 {x['f1']:.3f} (all classes pooled)")


# ------------------------------------------------------------------------------------------------------- report


def _winner(values: dict[str, float | None]) -> str:
    finite = {k: v for k, v in values.items() if v is not None}
    return max(finite, key=lambda k: finite[k]) if finite else "—"


def _num_experts(g: dict[str, Any]) -> int:
    return max((len(v) for per in g.get("share", {}).values() for v in per.values()), default=0)


def write_report(result: dict[str, Any], modes: list[str], out: Path) -> list[Path]:
    """``report.md`` (method vs baselines per mode, winner per metric) and PNG plots; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    s = result["summary"]
    lines = ["# Fusion evaluation", "",
             f"Scored {s['scored']} of {s['pairs']} pairs; skipped {s['skipped']}. All eight metrics are "
             "higher-is-better; definitions in `docs/evaluation.md`. Copying one source wins MI and VIF by "
             "construction: judge a method on all eight metrics together.", ""]
    for m in modes:
        cols = {"method": result[m]["mean"]}
        cols.update({b: result["baselines"][b][m]["mean"] for b in result.get("baselines", {})})
        lines += [f"## {m} mode", "", "| metric | " + " | ".join(cols) + " | best |",
                  "|---|" + "---|" * (len(cols) + 1)]
        for k in METRIC_NAMES:
            vals = {c: v[k] for c, v in cols.items()}
            best = _winner(vals)
            cells = [f"**{_fmt(v)}**" if c == best else _fmt(v) for c, v in vals.items()]
            lines.append(f"| {k} | " + " | ".join(cells) + f" | {best} |")
        nan = {k: v for k, v in result[m]["nan_count"].items() if v}
        lines += ["", f"NaN values left out of the means (method): {nan}" if nan else "No NaN values (method).", ""]

        fig, axes = plt.subplots(2, 4, figsize=(14, 6))
        names = list(cols)
        for ax, k in zip(axes.ravel(), METRIC_NAMES):
            vals = [cols[c][k] if cols[c][k] is not None else np.nan for c in names]
            ax.bar(range(len(names)), vals, color=["C3"] + ["C0"] * (len(names) - 1))
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
            ax.set_title(k)
        fig.suptitle(f"mean metrics, {m} mode: method vs baselines")
        fig.tight_layout()
        files.append(out / f"metrics_{m}.png")
        fig.savefig(files[-1], dpi=80)
        plt.close(fig)

        per = result[m]["per_image"]
        ref = result.get("baselines", {}).get("average", {}).get(m, {}).get("per_image")
        fig, axes = plt.subplots(2, 4, figsize=(14, 6))
        stems = sorted(per)
        for ax, k in zip(axes.ravel(), METRIC_NAMES):
            y = np.array([per[st][k] if per[st][k] is not None else np.nan for st in stems], dtype=float)
            if ref:
                x = np.array([ref[st][k] if ref[st][k] is not None else np.nan for st in stems], dtype=float)
                ax.scatter(x, y, s=12)
                lo, hi = np.nanmin(np.r_[x, y, 0.0]), np.nanmax(np.r_[x, y, 1e-9])
                ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
                ax.set_xlabel("average baseline", fontsize=8)
                ax.set_ylabel("method", fontsize=8)
            else:
                ax.scatter(np.arange(len(stems)), y, s=12)
                ax.set_xlabel("image index", fontsize=8)
            ax.set_title(k)
        fig.suptitle(f"per image, {m} mode" + (" (above the diagonal: method beats averaging)" if ref else ""))
        fig.tight_layout()
        files.append(out / f"per_image_{m}.png")
        fig.savefig(files[-1], dpi=80)
        plt.close(fig)

    if "detection" in result:
        d = result["detection"]
        lines += ["## Detection", "", f"mAP@0.5 (VOC all-point interpolation) over {d['images']} images: "
                  f"{_fmt(d['mAP50'])}", "", "| class | AP | GT | detections |", "|---|---|---|---|"]
        lines += [f"| {n} | {_fmt(c['AP'])} | {c['num_gt']} | {c['num_det']} |" for n, c in d["per_class"].items()]
        lines.append("")
        for key, label in (("best_f1", "Best F1"), ("at_threshold", "At")):
            if key in d:
                x = d[key]
                lines.append(f"{label} score ≥ {x['threshold']:.3f} (classes pooled): precision {x['precision']:.3f}, "
                             f"recall {x['recall']:.3f}, F1 {x['f1']:.3f}.")
        lines.append("")
    if "gates" in result:
        g = result["gates"]
        tags = sorted(g["fired_fraction"])
        lines += ["## Routing: each expert's share of the gate mass by day/night", "", f"Pairs per tag: {g['count']}",
                  "", "| gate | pairs | " + " | ".join(f"expert {j}" for j in range(_num_experts(g))) + " |",
                  "|---|---|" + "---:|" * _num_experts(g)]
        for key in GATE_KEYS:
            for t in [*tags, "all"]:
                sh = g.get("share", {}).get(t, {}).get(key)
                if sh is not None:
                    n = g["count"].get(t, sum(g["count"].values()))
                    lines.append(f"| {key} | {t} ({n}) | " + " | ".join(f"{v:.1%}" for v in sh) + " |")
        if "tv_day_night" in g:
            lines += ["", "Total-variation distance between the mean day and mean night gate vectors: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in g["tv_day_night"].items()) + "."]
        lines += ["", "### Expert firing (weight > 0) by day/night", ""]
        fig, axes = plt.subplots(1, len(GATE_KEYS), figsize=(13, 3.6))
        for ax, key in zip(np.atleast_1d(axes), GATE_KEYS):
            width = 0.8 / max(len(tags), 1)
            for i, t in enumerate(tags):
                frac = g["fired_fraction"][t].get(key, [])
                ax.bar(np.arange(len(frac)) + (i - (len(tags) - 1) / 2) * width, frac, width, label=t)
                ax.set_xticks(range(len(frac)))
                lines.append(f"- {key}, {t}: " + ", ".join(f"expert {j}: {v:.0%}" for j, v in enumerate(frac)))
            ax.set_title(key)
            ax.set_xlabel("expert")
            ax.set_ylim(0, 1.05)
            ax.legend(fontsize=8)
        axes_first = np.atleast_1d(axes)[0]
        axes_first.set_ylabel("fraction of pairs fired")
        fig.tight_layout()
        files.append(out / "gates.png")
        fig.savefig(files[-1], dpi=80)
        plt.close(fig)
        lines.append("")
    if result["skipped"]:
        lines += ["## Skipped", ""] + [f"- `{x['stem']}`: {x['reason']}" for x in result["skipped"]] + [""]
    lines += ["Plots: " + ", ".join(f"`{f.name}`" for f in files), ""]
    (out / "report.md").write_text("\n".join(lines))
    return [out / "report.md", *files]
