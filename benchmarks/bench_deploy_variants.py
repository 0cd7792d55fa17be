"""Fused-only forward pass of the shipped model, eager against deploy-graph variants, timed interleaved.

    PYTHONPATH=. python benchmarks/bench_deploy_variants.py --size 640x480 --rounds 5

Variants: ``eager`` (the training model), ``gather`` / ``dense`` (deploy graph with gathered top-K expert kernels,
or all experts with zero weights for the unselected ones), ``gather_cl`` / ``eager_cl`` (channels-last memory
format). One call of each per round, so every variant sees the same machine load; prints medians and the 1-minute
load average before and after. Model forward only (no numpy conversion), CPU, fp32.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import numpy as np
import torch

from moe_fusion_core.bench import real_pair
from moe_fusion_core.engine import FusionEngine
from moe_fusion_core.image_io import rgb_to_luma
from moe_fusion_core.model.deploy import DeployFusion


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="640x480")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--variants", default="eager,gather,dense,gather_cl,eager_cl")
    p.add_argument("--pair-dir", type=Path, default=None)
    args = p.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    torch.set_grad_enabled(False)
    model = FusionEngine(device="cpu", deploy=False).model
    ir, vis = real_pair((w, h), args.pair_dir)
    ir_t = torch.from_numpy(ir)[None, None].float() / 255
    vis_t = torch.from_numpy(rgb_to_luma(vis))[None, None].float() / 255
    cl = torch.channels_last
    ir_c, vis_c = ir_t.contiguous(memory_format=cl), vis_t.contiguous(memory_format=cl)
    gather, dense = DeployFusion(model, "gather"), DeployFusion(model, "dense")
    gather_cl = DeployFusion(model, "gather").to(memory_format=cl)
    eager_cl = copy.deepcopy(model).to(memory_format=cl)
    calls = {"eager": lambda: model(ir_t, vis_t), "gather": lambda: gather(ir_t, vis_t),
             "dense": lambda: dense(ir_t, vis_t), "gather_cl": lambda: gather_cl(ir_c, vis_c),
             "eager_cl": lambda: eager_cl(ir_c, vis_c)}
    names = args.variants.split(",")
    for n in names:  # warm-up
        calls[n]()
    load = [os.getloadavg()[0]]
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n in names:
            t = time.perf_counter()
            calls[n]()
            times[n].append(time.perf_counter() - t)
    load.append(os.getloadavg()[0])
    ref = np.median(times["eager"]) if "eager" in times else None
    print(f"fused-only forward, {w}x{h}, cpu x{torch.get_num_threads()}, {args.rounds} rounds, "
          f"1-min load average {load[0]:.1f} -> {load[1]:.1f}")
    print("| variant | p50 s | min s | max s | speed-up vs eager |")
    print("|---|---:|---:|---:|---:|")
    for n, v in times.items():
        med = float(np.median(v))
        print(f"| {n} | {med:.3f} | {min(v):.3f} | {max(v):.3f} | {ref / med:.2f} |" if ref else
              f"| {n} | {med:.3f} | {min(v):.3f} | {max(v):.3f} | |")


if __name__ == "__main__":
    main()
