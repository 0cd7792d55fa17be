"""Weight averaging: one checkpoint whose weights are the (weighted) mean of several of one architecture.

    .venv/bin/python training/average_weights.py runs/v9tail/final runs/default_v8 --out runs/v9

The default model v9 (MODEL_CARD.md, "Recipe") is the mean of v8 and the end of a 1,200-step low learning-rate
tail trained from v8 (``training/shared_v9_tail.yaml``): two points of one trajectory, so their mean stays in the
same basin, halfway between v8's operating point and the tail's. Floating tensors are averaged in fp32;
integer buffers must agree. The result is an fp32 checkpoint folder carrying the first checkpoint's config (list
the last training stage first) for ``moe-fusion export``, ``--checkpoint`` or ``moe-fusion train --init``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_fusion_core.checkpoint import average_models, save_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders, .safetensors files or embedded model names")
    p.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per checkpoint (default: equal)")
    p.add_argument("--out", type=Path, required=True, help="output checkpoint folder (fp32)")
    args = p.parse_args(argv)
    model, cfg = average_models(args.checkpoints, args.weights)
    out = save_model(model, cfg, args.out, metadata={"averaged": " + ".join(map(str, args.checkpoints))})
    print(f"wrote {out} (mean of {len(args.checkpoints)} checkpoints)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
