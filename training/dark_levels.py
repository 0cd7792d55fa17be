"""How a fusion model reproduces dark scenes: darken training pairs and compare the output with max(V, I).

    python training/dark_levels.py [--checkpoint DIR] [--gains 1 0.3 0.12]

For each gain, both images of a pair are scaled by it (8-bit, re-rounded) and fused; printed are the mean EN and
SD of the output minus those of max(V, I), and the mean error (fused − max, grey levels) for pixels binned by
max(V, I). A model that reproduces dark scenes has errors near 0 in the low bins. The pairs are training pairs
(RoadScene, TNO), so this probe never touches the validation set. Used for MODEL_CARD.md's stage-2 choice.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from moe_fusion_core.data.transforms import exposure
from moe_fusion_core.engine import FusionEngine
from moe_fusion_core.image_io import read_ir, read_vis, rgb_to_luma
from moe_fusion_core.metrics.fusion import entropy, standard_deviation

BINS = ((0, 8), (8, 16), (16, 32), (32, 64), (64, 128), (128, 256))
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pairs(roots: list[Path], every: int = 3, per_root: int = 8) -> list[tuple[Path, Path]]:
    out = []
    for root in roots:
        vis = {p.stem: p for p in (root / "vis").iterdir()}
        irs = sorted(p for p in (root / "ir").iterdir() if p.stem in vis)
        out += [(p, vis[p.stem]) for p in irs[::every][:per_root]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="model folder (default: the embedded model)")
    ap.add_argument("--gains", type=float, nargs="+", default=[1.0, 0.3, 0.12])
    ap.add_argument("--data", type=Path, nargs="+", default=[DATA / "roadscene", DATA / "tno"])
    args = ap.parse_args()
    engine = FusionEngine(args.checkpoint, device="cpu", detections=False)
    todo = pairs(args.data)
    for gain in args.gains:
        d_en, d_sd, err = [], [], {b: [] for b in BINS}
        for ir_path, vis_path in todo:
            vis = exposure(rgb_to_luma(read_vis(vis_path)), gain, 1.0)
            ir = read_ir(ir_path)
            ir = exposure(engine.thermal_normalizer(ir), gain, 1.0)
            if ir.shape != vis.shape:  # as the engine would, so that the reference sees the same infrared image
                ir = cv2.resize(ir, vis.shape[::-1], interpolation=cv2.INTER_LINEAR)
            fused = engine.fuse(ir, vis).fused.astype(int)
            ref = np.maximum(ir, vis).astype(int)
            d_en.append(entropy(fused) - entropy(ref))
            d_sd.append(standard_deviation(fused, "standard") - standard_deviation(ref, "standard"))
            for lo, hi in BINS:
                k = (ref >= lo) & (ref < hi)
                if k.any():
                    err[(lo, hi)].append(float((fused[k] - ref[k]).mean()))
        bins = " ".join(f"{lo}-{hi}: {np.mean(v):+.1f}" for (lo, hi), v in err.items() if v)
        print(f"gain {gain:g} ({len(todo)} pairs): EN {np.mean(d_en):+.3f}  SD {np.mean(d_sd):+.2f}  | {bins}")


if __name__ == "__main__":
    main()
