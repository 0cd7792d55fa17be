"""Score a pixel target itself, as a fixed fusion rule, on training pairs: max(V, I) with its local contrast raised.

    python training/detail_target.py [--data DIR ...] [--bands 0.3:16 0.5:1 ...] [--pairs 11]

Each band GAIN:SIGMA gives the rule max + GAIN·(max − GaussianBlur_SIGMA(max)) (SIGMA in pixels at the images'
own resolution; the loss's ``detail_sigma`` is in pixels of the rescaled training crop, about 0.57× this). Printed
per dataset: the paper-mode means of the eight metrics for the average and max baselines and each rule, and how
many metrics the rule wins against both baselines. The folders default to the training sets (TNO, RoadScene,
LLVIP), so this never touches the validation set. Used for MODEL_CARD.md's stage-3 choice.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from moe_fusion_core.evaluate import baseline_images
from moe_fusion_core.image_io import pair_by_stem, read_ir, read_vis
from moe_fusion_core.metrics.fusion import METRIC_NAMES, score_all, to_grey_u8

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def unsharp(m: np.ndarray, gain: float, sigma: float) -> np.ndarray:
    """max + gain·(max − blur_σ(max)) as uint8 (reflected borders, as the loss's blur)."""
    f = m.astype(np.float64)
    return np.clip(np.rint(f + gain * (f - cv2.GaussianBlur(f, (0, 0), sigma))), 0, 255).astype(np.uint8)


def score_folder(root: Path, bands: list[tuple[float, float]], n: int) -> dict[str, np.ndarray]:
    found = pair_by_stem([root / "ir", root / "vis"]).pairs
    rows: dict[str, list[list[float]]] = {}
    for _, (ip, vp) in found[:: max(1, len(found) // n)][:n]:
        ir = to_grey_u8(read_ir(ip))
        vis = to_grey_u8(read_vis(vp))
        if ir.shape != vis.shape:
            ir = cv2.resize(ir, vis.shape[::-1], interpolation=cv2.INTER_LINEAR)
        base = baseline_images(ir, vis)
        rules = {"average": base["average"], "max": base["max"]}
        for gain, sigma in bands:
            rules[f"max+{gain:g}·detail(σ={sigma:g})"] = unsharp(base["max"], gain, sigma)
        for name, img in rules.items():
            rows.setdefault(name, []).append(list(score_all(img, ir, vis, "paper").values()))
    return {k: np.nanmean(np.array(v), axis=0) for k, v in rows.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, nargs="+", default=[DATA / d for d in ("tno", "roadscene", "llvip_det")])
    p.add_argument("--bands", nargs="+", default=["0.3:2", "0.3:8", "0.3:16", "0.5:8"], help="GAIN:SIGMA")
    p.add_argument("--pairs", type=int, default=11, help="pairs per folder, spread evenly")
    args = p.parse_args()
    bands = [(float(b.split(":")[0]), float(b.split(":")[1])) for b in args.bands]
    for root in args.data:
        res = score_folder(root, bands, args.pairs)
        print(f"\n{root.name} (paper mode, mean of {args.pairs} pairs)")
        print(f"{'rule':32s}" + "".join(f"{k:>9s}" for k in METRIC_NAMES) + "  wins")
        avg, mx = res["average"], res["max"]
        for name, m in res.items():
            wins = int(((m > avg) & (m > mx)).sum())
            print(f"{name:32s}" + "".join(f"{x:9.4f}" for x in m) + f"  {wins}")


if __name__ == "__main__":
    main()
