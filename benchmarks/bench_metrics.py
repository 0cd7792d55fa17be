"""Time each of the eight fusion metrics on one 640×480 msrs pair, on one core, in both modes.

Usage: ``python benchmarks/bench_metrics.py [--pair-dir ../shared/data/msrs] [--stem 00004N] [--repeat 10]``.
Prints a Markdown table (median milliseconds per call over ``--repeat`` runs; fused = max(IR, VIS)).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from moe_fusion_core.image_io import read_image, read_ir  # noqa: E402
from moe_fusion_core.metrics import fusion as fm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pair-dir", type=Path, default=REPO.parent / "shared" / "data" / "msrs")
    p.add_argument("--stem", default=None, help="pair to time (default: the first)")
    p.add_argument("--repeat", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    ir_file = (args.pair_dir / "ir" / f"{args.stem}.png") if args.stem else sorted((args.pair_dir / "ir").glob("*"))[0]
    vis_file = next((args.pair_dir / "vis").glob(ir_file.stem + ".*"))
    ir = read_ir(ir_file)
    vis = fm.to_grey_u8(read_image(vis_file))
    f = np.maximum(ir, vis)
    h, w = f.shape
    metrics: dict[str, Callable[[str], object]] = {
        "EN": lambda m: fm.entropy(f),
        "SF": lambda m: fm.spatial_frequency(f, m),
        "SD": lambda m: fm.standard_deviation(f, m),
        "MI": lambda m: fm.mutual_information(f, ir, vis, m),
        "VIF": lambda m: fm.visual_information_fidelity(f, ir, vis, m),
        "AG": lambda m: fm.average_gradient(f),
        "SCD": lambda m: fm.scd(f, ir, vis),
        "Qabf": lambda m: fm.qabf(f, ir, vis, m),
    }
    rows = {}
    for mode in fm.MODES:
        rows[mode] = {k: _median_ms(lambda fn=fn, mode=mode: fn(mode), args.repeat) for k, fn in metrics.items()}
        rows[mode]["score_all"] = _median_ms(lambda mode=mode: fm.score_all(f, ir, vis, mode), args.repeat)
    print(f"pair {ir_file.stem} ({w}×{h}), one thread, median of {args.repeat} runs, milliseconds; "
          f"{platform.processor() or platform.machine()}, numpy {np.__version__}, opencv {cv2.__version__}\n")
    print("| metric | paper | standard |")
    print("|---|---:|---:|")
    for k in [*metrics, "score_all"]:
        label = "**score_all (all eight)**" if k == "score_all" else k
        print(f"| {label} | {rows['paper'][k]:.1f} | {rows['standard'][k]:.1f} |")
    print(f"| sum of the eight | {sum(rows['paper'][k] for k in metrics):.1f} | "
          f"{sum(rows['standard'][k] for k in metrics):.1f} |")


if __name__ == "__main__":
    main()
