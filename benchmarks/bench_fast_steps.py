"""From the embedded configuration to the fast one, one change at a time: GFLOP and CPU time of each step.

    PYTHONPATH=. python benchmarks/bench_fast_steps.py --size 640x480 --rounds 5 [--threads 2]

Each row adds one change of ``fast_config`` (``moe_fusion_core/config.py``) to the previous row, starting from
``embedded`` (the default model's architecture). FLOPs are counted by ``torch.utils.flop_counter`` on one eager
forward pass (fused image only, and with detections); the time is the deploy graph's fused-image-only forward pass
(the CPU default path), timed interleaved: one call of every row per round, so each row sees the same machine
load; medians of ``--rounds``. Weights are random (cost does not depend on them: top-K routing runs K experts
whatever the weights). The last row is the shipped fast model's architecture. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from moe_fusion_core.config import Config, merge, named_config
from moe_fusion_core.model import build_model
from moe_fusion_core.model.deploy import DeployFusion

# (row label, the overrides of this step on top of the previous rows)
STEPS: list[tuple[str, dict[str, Any]]] = [
    ("embedded (the default model)", {}),
    ("MoGE: 1×1 reduction of x_f to 16 channels in each global expert", {"model": {"global_reduce": 16}}),
    ("encoders 8 wide, local experts 8-4-8", {"model": {"encoder_channels": 8, "local_hidden": 4}}),
    ("global experts 12-8 after the reduction", {"model": {"global_channels": [12, 8]}}),
    ("detector FPN 64 wide, attention 32 (= fast)", {"model": {"detector": {"fpn_channels": 64,
                                                                            "attention_channels": 32}}}),
]


def step_configs() -> list[tuple[str, Config]]:
    """The configs of the rows, each one the previous plus its change."""
    data = named_config("embedded").to_dict()
    out = []
    for label, change in STEPS:
        data = merge(data, change) if change else data
        out.append((label, Config.from_dict(data)))
    return out


def gflops(model: torch.nn.Module, ir: torch.Tensor, vis: torch.Tensor, detections: bool) -> float:
    with FlopCounterMode(display=False) as fc:
        model(ir, vis, need_detections=detections)
    return fc.get_total_flops() / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="640x480")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    w, h = (int(v) for v in args.size.split("x"))
    ir, vis = torch.rand(1, 1, h, w), torch.rand(1, 1, h, w)
    rows = []
    for label, cfg in step_configs():
        model = build_model(cfg.model).eval()
        rows.append({"label": label, "fused": gflops(model, ir, vis, False), "det": gflops(model, ir, vis, True),
                     "params": sum(q.numel() for q in model.parameters()) / 1e6, "deploy": DeployFusion(model),
                     "times": []})
    for r in rows:  # warm-up
        r["deploy"](ir, vis)
    for _ in range(args.rounds):
        for r in rows:
            t0 = time.perf_counter()
            r["deploy"](ir, vis)
            r["times"].append(time.perf_counter() - t0)
    print(f"{args.size}, batch 1, CPU, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| step | GFLOP fused only | GFLOP with detections | parameters | deploy graph, fused only, p50 |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['label']} | {r['fused']:.1f} | {r['det']:.1f} | {r['params']:.2f} M | "
              f"{statistics.median(r['times']) * 1e3:.0f} ms |")


if __name__ == "__main__":
    main()
