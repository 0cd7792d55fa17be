"""The fusion training loss of several models on the same training crops: underfit or out of capacity?

    .venv/bin/python training/loss_on_crops.py --config training/fast.yaml --data $ALL9 \
        --checkpoint default=moe_fusion_core/default_model fast=moe_fusion_core/fast_model --crops 96

Draws ``--crops`` training crops of the config's training split (its crop size, rescale and augmentation; a fixed
seed, so every model sees the same pixels), runs every model in eval mode (no gate noise) and prints the mean pixel
and gradient terms of the config's fusion loss (``moe_fusion_core.losses.fusion_loss``). A model whose gradient term
stays far above another's on its own training data lacks capacity or training, not data.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_fusion_core.checkpoint import load_model
from moe_fusion_core.config import load_config
from moe_fusion_core.data.dataset import build_datasets, collate_pairs
from moe_fusion_core.losses import fusion_loss


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="recipe whose split, crops and loss are used")
    ap.add_argument("--data", nargs="+", required=True, help="dataset folders (as for moe-fusion train)")
    ap.add_argument("--checkpoint", nargs="+", required=True, help="NAME=CHECKPOINT (folder or embedded name)")
    ap.add_argument("--crops", type=int, default=96)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    cfg = load_config(args.config)
    train, _, _, _ = build_datasets(args.data, cfg)
    picks = random.Random(args.seed).sample(range(len(train)), min(args.crops, len(train)))
    batches = [collate_pairs([train[j] for j in picks[i:i + args.batch]]) for i in range(0, len(picks), args.batch)]
    print(f"{len(picks)} training crops of {args.config}")
    print("| model | pixel term | gradient term |")
    print("|---|---:|---:|")
    for spec in args.checkpoint:
        name, _, path = spec.partition("=")
        model = load_model(path or name)[0].float().eval()
        terms = []
        with torch.no_grad():
            for b in batches:
                out = model(b["ir"], b["vis"])
                lf = fusion_loss(out.fused, b["vis"], b["ir"], b["boxes"], out.load_loss, cfg.loss,
                                 labelled=[bool(x) for x in b["labelled"]])
                terms.append((lf.pixel.item(), lf.grad.item()))
        print(f"| {name} | {statistics.mean(p for p, _ in terms):.4f} | {statistics.mean(g for _, g in terms):.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
