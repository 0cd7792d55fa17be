"""Time the ROS-free node path per pair without the model: pairing, message decode + thermal normalisation,
registration, and building every outgoing message (image, detections, gates, status, camera_info).

Usage: ``python benchmarks/bench_node_path.py [--sizes 640x480,640x512] [--iters 200] [--pair-dir DIR]``.
Prints a Markdown table (milliseconds per pair). The model is replaced by :class:`NoModel`, a stand-in that
returns the infrared image as the "fused" image with two fixed boxes, so only the node's own work is timed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np

from moe_fusion_core.bench import real_pair
from moe_fusion_ros.pipeline import FusionPipeline
from moe_fusion_ros.sync import RGB, THERMAL
from moe_fusion_ros.thermal import image_from_array

T0 = 1_700_000_000_000_000_000
PERIOD = 40_000_000  # 25 Hz, thermal 5 ms later


class NoModel:
    """Benchmark stand-in for ``FusionEngine``: no network, fixed outputs of the right shapes."""

    def fuse(self, ir: np.ndarray, vis: np.ndarray, *, color: bool = False, detections: bool = True
             ) -> SimpleNamespace:
        h, w = vis.shape[:2]
        if ir.shape != (h, w):
            ir = cv2.resize(ir, (w, h), interpolation=cv2.INTER_LINEAR)
        dets = [SimpleNamespace(box=(w * 0.1, h * 0.2, w * 0.4, h * 0.6), class_id=0, class_name="person",
                                score=0.9)] * (2 if detections else 0)
        gates = {g: np.full(4, 0.25, np.float32) for g in ("mole_fg", "mole_bg", "moge")}
        return SimpleNamespace(fused=ir, color=None, detections=dets, gates=gates, timings_ms={})


def node_path_ms(ir: np.ndarray, vis: np.ndarray, iters: int) -> list[float]:
    """Milliseconds per pair over ``iters`` pairs (``ir``: H×W uint8/uint16, ``vis``: H×W×3 RGB uint8)."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    pipe = FusionPipeline(NoModel(), keep_history=False)
    out: list[float] = []
    for i in range(iters + 1):
        th = image_from_array(ir, T0 + i * PERIOD + 5_000_000, "thermal")
        rgb = image_from_array(vis, T0 + i * PERIOD, "camera")
        t = time.perf_counter()
        for p in pipe.add(THERMAL, th) + pipe.add(RGB, rgb):
            pipe.process(p.thermal, p.rgb)
        if i > 0:  # the first pair only primes the synchroniser
            out.append((time.perf_counter() - t) * 1e3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="640x480,640x512")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--pair-dir", type=Path, default=None,
                    help="folder with ir/ and vis/ (default: ../shared/data/msrs)")
    args = ap.parse_args(argv)
    print("| size | thermal | p50_ms | p95_ms | pairs_per_s |")
    print("|---|---|---|---|---|")
    for s in args.sizes.split(","):
        w, h = (int(v) for v in s.lower().split("x"))
        ir, vis = real_pair((w, h), args.pair_dir)
        for name, thermal in (("mono8", ir), ("mono16", ir.astype(np.uint16) * 257)):
            t = node_path_ms(thermal, vis, args.iters)
            p50 = statistics.median(t)
            print(f"| {w}x{h} | {name} | {p50:.2f} | {np.percentile(t, 95):.2f} | {1e3 / p50:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
