"""Side-by-side table: our model against a published peer and the baselines on the same validation pairs.

    .venv/bin/python training/compare_peer.py --eval runs/val/eval.json \
        --peer ../shared/data/peers/seafusion_metrics_367.json [MORE.json ...] \
        [--peer-name SeAFusion] [--markdown OUT.md]

``--eval`` is the JSON of ``moe-fusion evaluate --mode both --baselines`` on a folder of ``<dataset>/<stem>``
images (``training/make_split_view.py``); the peer's per-image metrics (same metric code, same grey sources;
``../shared/data/peers/README.md``) are averaged over exactly the pairs our evaluation scored. Prints, per mode,
the means of our model, the peer, average and max fusion, the difference to the peer, and how many of the eight
metrics reach the peer's level and beat both baselines. Also checks that our average/max baselines reproduce the
peer file's (the two metric implementations agree): the largest difference is reported, and the exit code is 1
when it exceeds ``--baseline-tolerance`` (then the comparison with the peer means nothing). Several peer files (e.g. the
367 shared pairs and ``msrs_det_more``) are merged; the check runs on the pairs whose file holds the baselines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_fusion_core.metrics.fusion import METRIC_NAMES

BASELINE_TOLERANCE = 1e-6  # the two implementations agree to ~1e-9 (MODEL_CARD.md)


def _mean(per_image: dict[str, dict[str, float]], keys: list[str], metric: str) -> float:
    vals = [per_image[k][metric] for k in keys if per_image[k].get(metric) is not None]
    return float(np.mean(vals)) if vals else float("nan")


def merge_peers(files: list[dict]) -> dict:
    """One peer metrics dict from several files: per method and mode, the union of their per-image entries."""
    methods: dict[str, dict[str, dict[str, dict]]] = {}
    for f in files:
        for name, modes in f["methods"].items():
            for mode, entry in modes.items():
                if not isinstance(entry, dict) or "per_image" not in entry:
                    continue  # timing and other per-method notes
                methods.setdefault(name, {}).setdefault(mode, {"per_image": {}})["per_image"].update(
                    entry["per_image"])
    return {"methods": methods}


def compare(ours: dict, peer: dict, peer_name: str, subset: str | None = None) -> tuple[str, dict]:
    """Markdown tables (both modes) and a summary dict; ``subset`` keeps keys starting with it (a dataset)."""
    lines, summary = [], {}
    for mode in ("paper", "standard"):
        if mode not in ours:
            continue
        keys = sorted(k for k in ours[mode]["per_image"] if subset is None or k.startswith(subset))
        missing = [k for k in keys if k not in peer["methods"][peer_name][mode]["per_image"]]
        if missing:
            raise KeyError(f"{len(missing)} pairs have no {peer_name} metrics, e.g. {missing[:3]}")
        rows = {
            "model": {m: _mean(ours[mode]["per_image"], keys, m) for m in METRIC_NAMES},
            peer_name: {m: _mean(peer["methods"][peer_name][mode]["per_image"], keys, m) for m in METRIC_NAMES},
            "average": {m: _mean(ours["baselines"]["average"][mode]["per_image"], keys, m) for m in METRIC_NAMES},
            "max": {m: _mean(ours["baselines"]["max"][mode]["per_image"], keys, m) for m in METRIC_NAMES},
        }
        bkeys = [k for k in keys if all(k in peer["methods"].get(pb, {}).get(mode, {}).get("per_image", {})
                                        for pb in ("Average", "Max"))]
        check = max(abs(_mean(ours["baselines"][b][mode]["per_image"], bkeys, m)
                        - _mean(peer["methods"][pb][mode]["per_image"], bkeys, m))
                    for b, pb in (("average", "Average"), ("max", "Max")) for m in METRIC_NAMES) if bkeys else None
        mo, pe, av, mx = (rows[r] for r in ("model", peer_name, "average", "max"))
        at_peer = [m for m in METRIC_NAMES if mo[m] >= pe[m]]
        beats = [m for m in METRIC_NAMES if mo[m] > av[m] and mo[m] > mx[m]]
        summary[mode] = {"pairs": len(keys), "means": rows, "at_peer_level": at_peer, "beats_avg_and_max": beats,
                         "baseline_check_max_abs_diff": check, "baseline_check_pairs": len(bkeys)}
        checked = (f"largest difference {check:.2g} on {len(bkeys)} pairs" if bkeys
                   else "not checked (no peer baselines for these pairs)")
        lines += [f"**{mode}** mode, {len(keys)} pairs" + (f" ({subset})" if subset else ""), "",
                  "| | " + " | ".join(METRIC_NAMES) + " |", "|---|" + "---:|" * len(METRIC_NAMES)]
        for name, r in rows.items():
            lines.append(f"| {name} | " + " | ".join(f"{r[m]:.4f}" for m in METRIC_NAMES) + " |")
        lines.append(f"| model − {peer_name} | " + " | ".join(f"{mo[m] - pe[m]:+.4f}" for m in METRIC_NAMES) + " |")
        lines += ["", f"At {peer_name}'s level or above: {len(at_peer)} of 8 ({', '.join(at_peer) or 'none'}); "
                  f"above both average and max: {len(beats)} of 8 ({', '.join(beats) or 'none'}). "
                  f"Baselines vs the peer file's: {checked}.", ""]
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval", required=True, type=Path)
    ap.add_argument("--peer", required=True, type=Path, nargs="+", help="peer metrics file(s), merged")
    ap.add_argument("--peer-name", default="SeAFusion")
    ap.add_argument("--per-dataset", action="store_true", help="also one table per dataset folder")
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--baseline-tolerance", type=float, default=BASELINE_TOLERANCE,
                    help="largest allowed |our baseline mean - the peer file's| (default %(default)g)")
    args = ap.parse_args(argv)
    ours = json.loads(args.eval.read_text())
    peer = merge_peers([json.loads(p.read_text()) for p in args.peer])
    text, summary = compare(ours, peer, args.peer_name)
    out = {"all": summary}
    if args.per_dataset:
        for ds in sorted({k.split("/")[0] for k in ours["paper"]["per_image"]}):
            t, s = compare(ours, peer, args.peer_name, ds + "/")
            text += "\n" + t
            out[ds] = s
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    bad = [f"{scope} {mode}: {s['baseline_check_max_abs_diff']:.3g}" for scope, modes in out.items()
           for mode, s in modes.items() if s["baseline_check_max_abs_diff"] is not None
           and not s["baseline_check_max_abs_diff"] <= args.baseline_tolerance]
    if bad:
        print(f"error: our average/max baselines disagree with the peer file's beyond {args.baseline_tolerance:g} "
              f"({'; '.join(bad)}): the metric code or the grey sources differ, so the comparison is invalid",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
