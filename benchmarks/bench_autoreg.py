"""Accuracy and time of ``moe-fusion register --auto`` on registered real pairs turned into unregistered rigs.

Each registered IR/visible pair of ``../shared/data`` becomes a rig by :func:`moe_fusion_core.autoreg.simulate_rig`
(RGB = the visible image's centre; thermal rotated ≤ 6°, zoomed 0.85–1.15, shifted ≤ 8 %, corners moved ≤ 1.5 %
for a mild perspective; every second rig's thermal image at 0.625× the RGB resolution). A seeded random
homography per rig; five-frame trials warp five neighbouring frames of one sequence by one homography.

Splits (by dataset / stem, fixed): ``tune`` = msrs (16), roadscene stems 0–19, m3svd validation frames; ``test`` =
msrs_more (41), m3svd test-video frames (``*_v*``), llvip_more (4), roadscene stems from 157 on. Thresholds in
autoreg.py were chosen on ``tune`` only.

Usage: ``python benchmarks/bench_autoreg.py --split test [--data ../shared/data] [--json out.json]
[--maps hybrid|learned|gradient] [--weights W.safetensors]``; ``--unwarped``: each pair estimated as registered
(the identity as truth; how far a dataset's own registration is from its images' structure), with ``--json``
its records; ``--by-own-offset TRIALS.json UNWARPED.json``: the single-pair trials grouped by their pairs' own
offset (no estimation).
Prints a Markdown table: per light (day / night) and mode (1 frame / 5 frames): trials, mean corner error of the
accepted estimates (px), share within 4 px (of all trials), refused, confidently wrong (> 10 px), median seconds.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from moe_fusion_core import autoreg, autoreg_net  # noqa: E402
from moe_fusion_core.image_io import dataset_meta, read_dataset_pair  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
THERMAL_SCALES = (1.0, 0.625)


def stems(data: Path, ds: str) -> list[tuple[str, str]]:
    """(stem, light) of a dataset from its meta.csv (light: day / night; anything else counts as day)."""
    return [(r["stem"], "night" if r["light"] == "night" else "day") for r in dataset_meta(data / ds)]


def split(data: Path, name: str) -> tuple[list[tuple[str, str, str]], list[tuple[str, list[str], str]]]:
    """(single pairs: ds, stem, light), (five-frame sequences: ds, stems, light) of a split."""
    road = stems(data, "roadscene")
    m3 = stems(data, "m3svd")
    if name == "tune":
        singles = [("msrs", s, li) for s, li in stems(data, "msrs")] + [("roadscene", s, li) for s, li in road[:20]]
        singles += [("m3svd", s, li) for s, li in m3 if "_v" not in s]
        ms = stems(data, "msrs")
        seqs = [("msrs", [s for s, _ in ms[i:i + 5]], ms[i][1]) for i in range(0, len(ms) - 4, 5)]
        return singles, seqs
    more = stems(data, "msrs_more")
    singles = [("msrs_more", s, li) for s, li in more] + [("m3svd", s, li) for s, li in m3 if "_v" in s]
    singles += [("llvip_more", s, li) for s, li in stems(data, "llvip_more")]
    singles += [("roadscene", s, li) for s, li in road[157:]]
    seqs: list[tuple[str, list[str], str]] = []
    by_seq: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for s, li in m3:
        if "_v" in s:
            by_seq[s.split("_v")[0]].append((s, li))
    for frames in by_seq.values():
        for i in range(0, max(1, len(frames) - 4), 2):
            win = frames[i:i + 5]
            if len(win) == 5:
                seqs.append(("m3svd", [s for s, _ in win], max({li for _, li in win}, key=[li for _, li in win].count)))
    train = [(s, li) for s, li in more if s < "01000"]
    for i in range(0, len(train) - 4, 5):
        win = train[i:i + 5]
        lights = [li for _, li in win]
        seqs.append(("msrs_more", [s for s, _ in win], max(set(lights), key=lights.count)))
    return singles, seqs


def record(est: autoreg.Estimate, h_gt: np.ndarray, th_size: tuple[int, int], **kw: object) -> dict:
    err = autoreg.corner_error(est.h, h_gt, th_size) if est.h is not None else None
    return {**kw, "ok": est.ok, "err": err, "conf": est.confidence, "reason": est.reason, "s": est.seconds,
            "details": {k: v for k, v in est.details.items() if isinstance(v, (int, float, bool))}}


def run(data: Path, name: str, seed: int) -> list[dict]:
    singles, seqs = split(data, name)
    rng = np.random.default_rng(seed)
    recs = []
    for i, (ds, stem, light) in enumerate(singles):
        ts = THERMAL_SCALES[i % 2]
        th, rgb, h_gt = autoreg.simulate_rig(*read_dataset_pair(data / ds, stem), rng, ts)
        cpu = time.process_time()
        est = autoreg.estimate_pair(th, rgb)
        recs.append(record(est, h_gt, (th.shape[1], th.shape[0]), mode="1 frame", light=light, ds=ds,
                           stems=[stem], thermal_scale=ts, cpu_s=time.process_time() - cpu))
        print(f"{ds} {stem} x{ts}: {recs[-1]['err']} {est.summary()}", flush=True)
    for i, (ds, group, light) in enumerate(seqs):
        ts = THERMAL_SCALES[i % 2]
        state = rng.bit_generator.state
        pairs, h_gt = [], None
        for stem in group:
            rng.bit_generator.state = state  # one homography for the whole sequence
            th, rgb, h_gt = autoreg.simulate_rig(*read_dataset_pair(data / ds, stem), rng, ts)
            pairs.append((th, rgb))
        cpu = time.process_time()
        est, _ = autoreg.estimate_multi(pairs)
        recs.append(record(est, h_gt, (pairs[0][0].shape[1], pairs[0][0].shape[0]), mode="5 frames", light=light,
                           ds=ds, stems=group, thermal_scale=ts, cpu_s=time.process_time() - cpu))
        print(f"{ds} {group[0]}..{group[-1]} x{ts}: {recs[-1]['err']} {est.summary()}", flush=True)
    return recs


def unwarped(data: Path, name: str) -> list[dict]:
    """Each single pair of the split estimated as registered (truth: the identity): how far the dataset's own
    registration is from what the images' structure says. Prints the corner errors per dataset; returns one
    record per pair (``err``: the estimate's corner distance from the identity, None when nothing converged)."""
    singles, _ = split(data, name)
    errs: dict[str, list[float]] = defaultdict(list)
    recs = []
    for ds, stem, light in singles:
        ir, vis = read_dataset_pair(data / ds, stem)
        est = autoreg.estimate_pair(ir, vis)
        recs.append(record(est, np.eye(3), (ir.shape[1], ir.shape[0]), mode="unwarped", light=light, ds=ds,
                           stems=[stem]))
        if est.h is not None:
            errs[ds].append(recs[-1]["err"])
        print(f"{ds} {stem}: {recs[-1]['err']} {est.summary()}", flush=True)
    for ds, e in errs.items():
        e = sorted(e)
        print(f"| {ds} | {len(e)} | {sum(x <= 4 for x in e)} | {statistics.median(e):.1f} | "
              + ", ".join(f"{x:.1f}" for x in e) + " |")
    return recs


OWN_BUCKETS = ((2.0, "≤ 2 px"), (4.0, "2–4 px"), (100.0, "> 4 px"))


def by_own_offset(trials: list[dict], own: list[dict]) -> str:
    """Single-pair trials grouped by how far their pair's own registration is from its images' structure (the
    ``--unwarped`` records of the same split): a Markdown table, and how closely an accepted trial's error
    follows its pair's own offset. The offset is the method's own estimate on the unwarped pair, so this shows
    where the truth limits the score; it is not an independent truth."""
    offset = {(r["ds"], r["stems"][0]): r["err"] for r in own}
    groups: dict[str, list[tuple[float | None, dict]]] = defaultdict(list)
    for r in trials:
        if r["mode"] != "1 frame":
            continue
        e = offset.get((r["ds"], r["stems"][0]))
        label = next((lab for lim, lab in OWN_BUCKETS if e is not None and e <= lim), "not measured")
        groups[label].append((e, r))
    lines = ["| pair's own offset (unwarped estimate) | trials | within 4 px | refused | accepted at > 4 px "
             "| confidently wrong (> 10 px) | datasets |", "|---|---:|---:|---:|---:|---:|---|"]
    for label in [lab for _, lab in OWN_BUCKETS] + ["not measured"]:
        rs = [r for _, r in groups.get(label, [])]
        if not rs:
            continue
        acc = [r for r in rs if r["ok"]]
        within = sum(r["err"] <= 4 for r in acc)
        counts = Counter(r["ds"] for r in rs)
        lines.append(f"| {label} | {len(rs)} | {within} ({within / len(rs):.0%}) | {len(rs) - len(acc)} | "
                     f"{len(acc) - within} | {sum(r['err'] > 10 for r in acc)} | "
                     + ", ".join(f"{d} {n}" for d, n in sorted(counts.items())) + " |")
    pairs = np.array([(e, r["err"]) for label, group in groups.items() if label != "not measured"
                      for e, r in group if r["ok"]])
    if len(pairs) > 2:
        lines.append(f"\naccepted trials with a measured own offset: {len(pairs)}; correlation of trial error and own "
                     f"offset {np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]:.2f}; median |error − own offset| "
                     f"{np.median(np.abs(pairs[:, 1] - pairs[:, 0])):.2f} px")
    return "\n".join(lines)


def table(recs: list[dict]) -> str:
    lines = ["| mode | light | trials | mean error of accepted (px) | within 4 px | refused "
             "| confidently wrong (>10 px) | median CPU s | median wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for mode in ("1 frame", "5 frames"):
        for light in ("day", "night", "all"):
            rs = [r for r in recs if r["mode"] == mode and light in (r["light"], "all")]
            if not rs:
                continue
            acc = [r for r in rs if r["ok"]]
            n = len(rs)
            mean = f"{statistics.mean(r['err'] for r in acc):.1f}" if acc else "–"
            within = sum(r["err"] <= 4 for r in acc) / n
            wrong = sum(r["err"] > 10 for r in acc) / n
            refused = 1 - len(acc) / n
            secs = statistics.median(r["s"] for r in rs)
            cpu = statistics.median(r["cpu_s"] for r in rs)
            lines.append(f"| {mode} | {light} | {n} | {mean} | {within:.0%} | {refused:.0%} | {wrong:.0%} | "
                         f"{cpu:.2f} | {secs:.2f} |")
    return "\n".join(lines)


def time_640(data: Path, repeat: int = 3) -> tuple[float, float]:
    """Median (CPU, wall) seconds of one estimate on a 640×480 RGB frame (a full msrs pair, no crop)."""
    ir, vis = read_dataset_pair(data / "msrs", "00055D")
    th, rgb, _ = autoreg.simulate_rig(ir, vis, np.random.default_rng(0), 1.0, margin=0.0)
    assert rgb.shape[:2] == (480, 640)
    cpu, wall = [], []
    for _ in range(repeat):
        c = time.process_time()
        wall.append(autoreg.estimate_pair(th, rgb).seconds)
        cpu.append(time.process_time() - c)
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--split", choices=("tune", "test"), default="test")
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--json", type=Path, default=None, help="write the per-trial records here")
    p.add_argument("--maps", choices=("learned", "hybrid", "gradient"), default=autoreg.MAPS,
                   help="what is matched (autoreg.MAPS): the learned structure maps or the gradient ones")
    p.add_argument("--weights", type=Path, default=None,
                   help="learned-map weights to evaluate instead of the shipped ones (a training run's output)")
    p.add_argument("--unwarped", action="store_true",
                   help="estimate each single pair as registered instead (truth: identity) and print the errors")
    p.add_argument("--by-own-offset", nargs=2, type=Path, metavar=("TRIALS_JSON", "UNWARPED_JSON"), default=None,
                   help="no estimation: group the single-pair trials of a --json run by their pairs' own offset "
                        "(the --unwarped --json run of the same split) and print the table")
    a = p.parse_args()
    if a.by_own_offset is not None:
        trials, own = (json.loads(f.read_text()) for f in a.by_own_offset)
        print(by_own_offset(trials, own))
        return
    autoreg.MAPS = a.maps
    if a.weights is not None:
        autoreg_net.WEIGHTS = a.weights
    cv2.setNumThreads(1)
    if a.unwarped:
        recs = unwarped(a.data, a.split)
        if a.json:
            a.json.write_text(json.dumps(recs, indent=1))
        return
    recs = run(a.data, a.split, a.seed)
    if a.json:
        a.json.write_text(json.dumps(recs, indent=1))
    print(table(recs))
    cpu, wall = time_640(a.data)
    print(f"\none estimate at 640×480, 1 OpenCV thread: {cpu:.2f} s CPU, {wall:.2f} s wall (median of 3)")
    why = defaultdict(int)
    for r in recs:
        if not r["ok"]:
            why[r["reason"].split(":")[0].split("(")[0].strip()] += 1
    print("refusals: " + "; ".join(f"{k}: {v}" for k, v in sorted(why.items(), key=lambda t: -t[1])))


if __name__ == "__main__":
    main()
