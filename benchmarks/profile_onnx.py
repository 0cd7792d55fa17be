"""Where an exported ONNX graph spends its time: ONNX Runtime's own profiler, kernel time per operator type and
per node (the largest first), and per part of the model (detector, encoders, the rest of the fusion head).

    PYTHONPATH=. python benchmarks/profile_onnx.py runs/fast.onnx --threads 1 --runs 7

Random inputs of the graph's static size (``--size`` for dynamic graphs); CPU, ``--threads`` intra-op threads.
Times are kernel times summed over the timed runs and divided by their number (the run's own p50 is printed too).
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import numpy as np

from moe_fusion_core.onnx_export import parse_size

DETECTOR = ("body", "layer_blocks", "inner_blocks", "attention", "mixing", "/deploy/conv/", "fpn")
ENCODERS = ("dense", "conv1")


def _part(node: str) -> str:
    if any(p in node for p in DETECTOR):
        return "detector (backbones, FPN level, attention)"
    if any(p in node for p in ENCODERS):
        return "encoders"
    return "mixtures, combination, concatenations, layout"


def main() -> None:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("graph", type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--size", default="640x480", help="WxH for graphs with dynamic height/width")
    p.add_argument("--top", type=int, default=25, help="nodes to list")
    args = p.parse_args()
    w, h = parse_size(args.size)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.enable_profiling = True
    so.profile_file_prefix = str(args.graph.with_suffix("")) + "_profile"
    sess = ort.InferenceSession(str(args.graph), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else None for d in i.shape]
        shape = [s if s is not None else (h if k == len(shape) - 2 else w if k == len(shape) - 1 else 1)
                 for k, s in enumerate(shape)]
        feeds[i.name] = rng.random(shape, dtype=np.float32)
    sess.run(None, feeds)  # warm-up (also profiled: dropped below by counting only the last runs' share)
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: collections.Counter[str] = collections.Counter()
    by_node: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
            by_node[e["name"][:-len("_kernel_time")]] += e["dur"]
    n = args.runs + 1
    total = sum(by_op.values())
    print(f"{args.graph}: p50 {1000 * np.median(times):.1f} ms per run ({args.threads} thread(s)); "
          f"kernel time {total / n / 1000:.1f} ms per run")
    print("\n| operator | share | ms per run |\n|---|---:|---:|")
    for k, v in by_op.most_common(12):
        print(f"| {k} | {100 * v / total:.1f} % | {v / n / 1000:.1f} |")
    parts: collections.Counter[str] = collections.Counter()
    for k, v in by_node.items():
        parts[_part(k)] += v
    print("\n| part | share | ms per run |\n|---|---:|---:|")
    for k, v in parts.most_common():
        print(f"| {k} | {100 * v / total:.1f} % | {v / n / 1000:.1f} |")
    print("\n| node | share | ms per run |\n|---|---:|---:|")
    for k, v in by_node.most_common(args.top):
        print(f"| {k} | {100 * v / total:.1f} % | {v / n / 1000:.1f} |")


if __name__ == "__main__":
    main()
