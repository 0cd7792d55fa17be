"""Why a gate routes as it does: gate-input statistics, clean logits and learned noise per expert on real pairs.

    .venv/bin/python training/gate_probe.py --checkpoint moe_fusion_core/default_model \
        --data ../shared/data/msrs ../shared/data/roadscene --every 4

For every gate (MoLE-fg, MoLE-bg, MoGE) of the model, over the pairs (every ``--every``-th of each folder, at native
size, eval mode): the norm and mean of the gate input as the gate sees it (after ``input_norm``), the mean cosine
between two pairs' inputs (how much of it is common to every pair), the clean logits per expert (mean and spread
over pairs), the learned noise std the gate would add in training, and the mean gate vector. A logit lead much
larger than the noise std means the top-K softmax is saturated: that expert takes the pair whatever the
balancing losses say (docs/design.md, "Gate collapse").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_fusion_core.engine import FusionEngine
from moe_fusion_core.image_io import pair_by_stem, read_ir, read_vis
from moe_fusion_core.model.gate import normalize_gate_input


def _fmt(t: torch.Tensor) -> str:
    return np.array2string(t.numpy(), precision=3, suppress_small=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--data", nargs="+", required=True, type=Path, help="folders with ir/ and vis/")
    ap.add_argument("--every", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    engine = FusionEngine(args.checkpoint, device="cpu", detections=False)
    head = engine.model.fusion
    gates = {k: getattr(head, k).gate for k in ("mole_fg", "mole_bg") if hasattr(head, k)}
    if hasattr(head, "moge"):
        gates["moge"] = head.moge.gate
    inputs: dict[str, list[torch.Tensor]] = {k: [] for k in gates}
    hooks = [g.register_forward_hook(lambda m, i, o, k=k: inputs[k].append(i[0].detach().float()))
             for k, g in gates.items()]
    n = 0
    for root in args.data:
        for _, (ip, vp) in pair_by_stem([root / "ir", root / "vis"], ["ir", "vis"]).pairs[:: args.every]:
            engine.fuse(read_ir(ip), read_vis(vp))
            n += 1
    for h in hooks:
        h.remove()
    print(f"{n} pairs from {', '.join(str(d) for d in args.data)}")
    for k, g in gates.items():
        s = normalize_gate_input(torch.cat(inputs[k]), g.input_norm)
        with torch.no_grad():
            clean = s @ g.w_gate
            noise = F.softplus(s @ g.w_noise) + 0.01
            top = clean.topk(g.top_k, dim=1)
            gate = torch.zeros_like(clean).scatter(1, top.indices, torch.softmax(top.values, 1))
        u = s / s.norm(dim=1, keepdim=True).clamp_min(1e-12)
        cos = (u @ u.T)[~torch.eye(len(s), dtype=torch.bool)]
        ranked = clean.topk(min(g.top_k + 1, g.num_experts), 1).values
        print(f"\n[{k}] input_norm={g.input_norm}: gate input {s.shape[1]} values, norm {s.norm(dim=1).mean():.3g}, "
              f"mean {s.mean():.3g}; cosine between pairs mean {cos.mean():.3f} (min {cos.min():.3f})")
        print(f"  clean logits  mean {_fmt(clean.mean(0))}  spread over pairs {_fmt(clean.std(0))}")
        print(f"  noise std     mean {_fmt(noise.mean(0))}")
        print(f"  lead of the top logit over the (K+1)-th: mean {(ranked[:, 0] - ranked[:, -1]).mean():.3f}")
        print(f"  mean gate vector {_fmt(gate.mean(0))}; top-{g.top_k} counts "
              f"{np.bincount(top.indices.flatten().numpy(), minlength=g.num_experts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
