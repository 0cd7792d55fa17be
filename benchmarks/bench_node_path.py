"""Time the node path per pair without the model: pairing, message decode + thermal normalisation, registration,
building every outgoing message (image, detections, gates, status, camera_info) as plain data, and, when the ROS 2
message packages are importable (a sourced ROS 2), converting them into the rclpy messages the node publishes
(:func:`moe_fusion_ros.convert.to_ros`, as the node does before ``publish``).

Usage: ``python benchmarks/bench_node_path.py [--sizes 640x480,640x512] [--iters 200] [--pair-dir DIR]``.
Prints a Markdown table (milliseconds per pair; ``rclpy_msgs`` says whether the conversion was timed; ``failed``
counts pairs the pipeline refused, which are not timed; any failure makes the exit code 1). The model is replaced
by :class:`NoModel`, a stand-in that returns the infrared image as the "fused" image with two fixed boxes, so only
the node's own work is timed. Publishing itself (serialisation, DDS) is not included.
"""

from __future__ import annotations

import argparse
import statistics
import sys
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


ROS_TYPES = {"image": "sensor_msgs/msg/Image", "detections": "vision_msgs/msg/Detection2DArray",
             "gates": "std_msgs/msg/Float32MultiArray", "status": "diagnostic_msgs/msg/DiagnosticArray",
             "camera_info": "sensor_msgs/msg/CameraInfo"}


def ros_classes() -> dict[str, type] | None:
    """The rclpy message classes of the node's outputs, or ``None`` without ROS 2."""
    from moe_fusion_ros.convert import ConversionError, message_class

    try:
        return {k: message_class(t) for k, t in ROS_TYPES.items()}
    except ConversionError:
        return None


def node_path_ms(ir: np.ndarray, vis: np.ndarray, iters: int, ros: dict[str, type] | None = None
                 ) -> tuple[list[float], int]:
    """(milliseconds per fused pair, pairs that failed) over ``iters`` pairs (``ir``: H×W uint8/uint16, ``vis``:
    H×W×3 RGB uint8); with ``ros`` (:func:`ros_classes`) the outgoing messages are also built as rclpy messages."""
    from moe_fusion_ros.convert import to_ros

    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    pipe = FusionPipeline(NoModel(), keep_history=False)
    info = SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=0, nanosec=0), frame_id="camera"),
                           width=vis.shape[1], height=vis.shape[0], distortion_model="plumb_bob", d=np.zeros(5),
                           k=np.eye(3).reshape(-1), r=np.eye(3).reshape(-1), p=np.zeros(12), binning_x=0,
                           binning_y=0, roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0,
                                                            do_rectify=False))
    pipe.set_camera_info(info)  # so that camera_info goes out, as with a calibrated camera
    out: list[float] = []
    failed = 0
    for i in range(iters + 2):
        th = image_from_array(ir, T0 + i * PERIOD + 5_000_000, "thermal")
        rgb = image_from_array(vis, T0 + i * PERIOD, "camera")
        t = time.perf_counter()
        done = ok = 0
        for p in pipe.add(THERMAL, th) + pipe.add(RGB, rgb):
            res = pipe.process(p.thermal, p.rgb)
            done += 1
            if res is None:
                failed += 1
                continue
            ok += 1
            if ros is not None:
                for key, cls in ros.items():
                    data = getattr(res, key)
                    if data is not None:
                        to_ros(cls, data)
        if i > 1 and ok and ok == done:  # the first message primes the synchroniser, the first pair the imports
            out.append((time.perf_counter() - t) * 1e3)
    return out, failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="640x480,640x512")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--pair-dir", type=Path, default=None,
                    help="folder with ir/ and vis/ (default: ../shared/data/msrs)")
    args = ap.parse_args(argv)
    ros = ros_classes()
    print("| size | thermal | rclpy_msgs | p50_ms | p95_ms | pairs_per_s | failed |")
    print("|---|---|---|---|---|---|---|")
    failures = 0
    for s in args.sizes.split(","):
        w, h = (int(v) for v in s.lower().split("x"))
        ir, vis = real_pair((w, h), args.pair_dir)
        for name, thermal in (("mono8", ir), ("mono16", ir.astype(np.uint16) * 257)):
            t, failed = node_path_ms(thermal, vis, args.iters, ros)
            failures += failed
            if not t:
                print(f"| {w}x{h} | {name} | {'yes' if ros else 'no'} | - | - | - | {failed} |")
                continue
            p50 = statistics.median(t)
            print(f"| {w}x{h} | {name} | {'yes' if ros else 'no'} | {p50:.2f} | {np.percentile(t, 95):.2f} | "
                  f"{1e3 / p50:.0f} | {failed} |")
    if failures:
        print(f"error: {failures} pair(s) failed in the pipeline (see the failed column)", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
