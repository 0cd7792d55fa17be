"""Ablation table: several evaluated runs side by side, per dataset, against a reference run and a peer.

    .venv/bin/python training/compare_runs.py --ref control=runs/s12/v4_control \
        contrast=runs/s12/v4_contrast ssim=runs/s12/v4_ssim [--mode paper] [--markdown OUT.md]

Each run folder holds ``eval.json`` (``moe-fusion evaluate --mode both --baselines``) and ``peer.json``
(``training/compare_peer.py --per-dataset --json``) on the same pairs. Per dataset folder and over all pairs,
prints the eight means of every run and of the peer, and per run: the metrics at the peer's level or above, the
metrics above both average and max fusion, and the relative change against the reference run. Also lists the
datasets on which a run is worse than the reference on more than two of the eight metrics (the issue's rule).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_peer import _mean

from moe_fusion_core.metrics.fusion import METRIC_NAMES

WORSE_LIMIT = 2  # a dataset counts against a run when it is worse than the reference on more than this many metrics


def _means(per_image: dict[str, dict[str, float]], prefix: str | None) -> dict[str, float]:
    keys = [k for k in per_image if prefix is None or k.startswith(prefix)]
    return {m: _mean(per_image, keys, m) for m in METRIC_NAMES}


def load_run(folder: Path) -> tuple[dict, dict]:
    """(eval.json, peer.json) of an evaluated run folder; a missing file is an error naming it."""
    out = []
    for name in ("eval.json", "peer.json"):
        p = folder / name
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: evaluate the run (and compare_peer.py --json) first")
        out.append(json.loads(p.read_text()))
    return out[0], out[1]


def table(runs: dict[str, Path], mode: str = "paper", peer_name: str = "SeAFusion") -> tuple[str, dict]:
    """Markdown tables and a summary; the first run is the reference."""
    loaded = {name: load_run(folder) for name, folder in runs.items()}
    ref = next(iter(loaded))
    keysets = {name: set(ev[mode]["per_image"]) for name, (ev, _) in loaded.items()}
    if len({frozenset(k) for k in keysets.values()}) != 1:
        raise ValueError(f"the runs were evaluated on different pairs: {({n: len(k) for n, k in keysets.items()})}")
    scopes = ["all", *sorted({k.split("/")[0] for k in keysets[ref]})]
    lines, summary = [], {}
    for scope in scopes:
        prefix = None if scope == "all" else scope + "/"
        peer = loaded[ref][1][scope][mode]["means"][peer_name]
        n = loaded[ref][1][scope][mode]["pairs"]
        lines += [f"**{scope}** ({n} pairs, {mode} mode)", "",
                  "| run | " + " | ".join(METRIC_NAMES) + f" | at {peer_name} | above avg+max | worse than {ref} |",
                  "|---|" + "---:|" * len(METRIC_NAMES) + "---:|---:|---:|"]
        ref_means = _means(loaded[ref][0][mode]["per_image"], prefix)
        summary[scope] = {}
        for name, (ev, pj) in loaded.items():
            mo = _means(ev[mode]["per_image"], prefix)
            av, mx = pj[scope][mode]["means"]["average"], pj[scope][mode]["means"]["max"]
            at_peer = sum(mo[m] >= peer[m] for m in METRIC_NAMES)
            beats = sum(mo[m] > av[m] and mo[m] > mx[m] for m in METRIC_NAMES)
            worse = [m for m in METRIC_NAMES if mo[m] < ref_means[m]]
            cells = [f"{mo[m]:.4f}" if name == ref else f"{mo[m]:.4f} ({100 * (mo[m] / ref_means[m] - 1):+.1f} %)"
                     for m in METRIC_NAMES]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {at_peer} | {beats} | "
                         + ("–" if name == ref else str(len(worse))) + " |")
            summary[scope][name] = {"means": mo, "at_peer_level": at_peer, "beats_avg_and_max": beats,
                                    "worse_than_ref": worse}
        lines += [f"| {peer_name} | " + " | ".join(f"{peer[m]:.4f}" for m in METRIC_NAMES) + " | | | |", ""]
    for name in list(loaded)[1:]:
        bad = [s for s in scopes[1:] if len(summary[s][name]["worse_than_ref"]) > WORSE_LIMIT]
        lines.append(f"{name}: worse than {ref} on more than {WORSE_LIMIT} of 8 metrics on "
                     + (", ".join(bad) if bad else "no dataset"))
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", required=True, help="NAME=FOLDER of the reference run")
    ap.add_argument("runs", nargs="*", help="NAME=FOLDER of the runs to compare with it")
    ap.add_argument("--mode", choices=("paper", "standard"), default="paper")
    ap.add_argument("--peer-name", default="SeAFusion")
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args(argv)
    runs = {}
    for spec in [args.ref, *args.runs]:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            ap.error(f"expected NAME=FOLDER, got {spec!r}")
        runs[name] = Path(folder)
    text, _ = table(runs, args.mode, args.peer_name)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
