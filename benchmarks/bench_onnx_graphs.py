"""Exported ONNX graphs (e.g. fp32 against INT8) through ``FusionEngine(backend="onnxruntime")``, timed interleaved.

    PYTHONPATH=. python benchmarks/bench_onnx_graphs.py runs/float.onnx runs/int8.onnx --threads 2 --rounds 5

One ``engine.fuse`` of each graph per round (a real pair at ``--size``), so every graph sees the same machine load;
prints p50/p95 of the whole call and of the engine's ``inference`` stage per graph, and the 1-minute load average
before and after. CPU only; ``--threads`` sets ONNX Runtime's intra-op threads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from moe_fusion_core.bench import _loadavg, real_pair
from moe_fusion_core.engine import FusionEngine
from moe_fusion_core.onnx_export import parse_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("graphs", nargs="+", type=Path, help=".onnx files from `moe-fusion export --onnx`")
    p.add_argument("--size", default="640x480")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--detections", action="store_true", help="also decode and merge detections")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)  # OnnxSession takes torch's thread count
    ir, vis = real_pair(parse_size(args.size))
    engines = {str(g): FusionEngine(g, device="cpu", backend="onnxruntime") for g in args.graphs}
    for eng in engines.values():
        for _ in range(args.warmup):
            eng.fuse(ir, vis, detections=args.detections)
    load = [_loadavg()]
    times: dict[str, dict[str, list[float]]] = {g: {"total": [], "inference": []} for g in engines}
    for _ in range(args.rounds):
        for g, eng in engines.items():
            t = time.perf_counter()
            res = eng.fuse(ir, vis, detections=args.detections)
            times[g]["total"].append((time.perf_counter() - t) * 1e3)
            times[g]["inference"].append(res.timings_ms["inference"])
    load.append(_loadavg())
    rows = [{"graph": g, "quantization": engines[g].quantization or "fp32", "threads": args.threads,
             "size": args.size, "rounds": args.rounds, "detections": args.detections,
             **{f"{k}_{q}_ms": round(float(np.percentile(v, pct)), 1) for k, v in t.items()
                for q, pct in (("p50", 50), ("p95", 95))}, "total_ms": [round(v, 1) for v in t["total"]]}
            for g, t in times.items()]
    for r in rows:
        print(f"{r['graph']} ({r['quantization']}): fuse p50 {r['total_p50_ms']} ms, p95 {r['total_p95_ms']} ms; "
              f"inference p50 {r['inference_p50_ms']} ms")
    base = times[str(args.graphs[0])]["total"]
    for g, t in list(times.items())[1:]:  # same round, same load: the ratio is steadier than either p50
        ratio = np.median(np.asarray(t["total"]) / np.asarray(base))
        print(f"{g} / {args.graphs[0]}: median per-round time ratio {ratio:.3f}")
    print(f"load average (1 min) before/after: {load[0]} / {load[1]}")
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "loadavg": load}, indent=1))


if __name__ == "__main__":
    main()
