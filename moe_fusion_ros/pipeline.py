"""The one fusion pipeline shared by the ROS node and bag replay (ROS-free).

messages → :mod:`sync` (pairs) → :mod:`thermal` (arrays: thermal decode + normalise, RGB decode) →
``FusionEngine.fuse`` → :mod:`messages` (outgoing plain data). Each stage is timed; counters record what was
received, paired, left unpaired (and why) and which frames failed (and why). A failed frame is counted and
skipped; processing goes on. RGB ``CameraInfo`` messages offered with :meth:`FusionPipeline.set_camera_info` go
out with the fused images: the one with the RGB image's stamp (as image_transport's camera subscriber pairs
them), else the latest; one that does not fit the image is counted and not published.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from moe_fusion_core.preprocess import ThermalNormalization, ThermalNormalizer

from . import messages as M
from .sync import RGB, THERMAL, Pair, PairSynchronizer, Unpaired
from .thermal import ImageDecodeError, decode_visible, stamp_ns, thermal_array

CAMERA_INFO_KEEP = 64
STAGES = ("sync", "decode", "preprocess", "inference", "postprocess", "messages", "total")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) if values else float("nan")


@dataclass
class FrameFailure:
    """A pair that could not be fused."""

    thermal_stamp_ns: int
    rgb_stamp_ns: int
    reason: str


class FusionPipeline:
    """Pairs, decodes, fuses and builds the outgoing messages; ``engine=None`` runs everything but the model."""

    def __init__(self, engine: Any | None = None, *, slop: float = 0.02, queue_size: int = 5,
                 thermal_offset: float = 0.0, normalization: ThermalNormalization | None = None,
                 color: bool = False, detections: bool = True, gates: bool = True, layout: str = "jazzy",
                 class_id: str = "name", frame_id: str = "", keep_unpaired: bool = True,
                 camera_info: bool = True) -> None:
        if layout not in M.LAYOUTS:
            raise ValueError(f"detection layout must be one of {', '.join(M.LAYOUTS)}, got {layout!r}")
        if class_id not in M.CLASS_ID_MODES:
            raise ValueError(f"class_id must be 'name' or 'index', got {class_id!r}")
        self.engine = engine
        self.normalizer = ThermalNormalizer(normalization or ThermalNormalization())
        self.color = color
        self.detections = detections
        self.gates = gates
        self.layout = layout
        self.class_id = class_id
        self.frame_id = frame_id
        self.keep_unpaired = keep_unpaired
        self.camera_info = camera_info
        self._camera_infos: OrderedDict[int, Any] = OrderedDict()  # by stamp, oldest first, the last CAMERA_INFO_KEEP
        self.camera_info_errors: Counter = Counter()
        self.unpaired: list[Unpaired] = []
        self.unpaired_counts: Counter = Counter()
        self.failures: list[FrameFailure] = []
        self.fused = 0
        self.resized = 0
        self.timings: dict[str, list[float]] = defaultdict(list)
        self.last_arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # fused, thermal, visible
        self.sync = PairSynchronizer(slop, queue_size, thermal_offset, on_unpaired=self._on_unpaired)

    # ------------------------------------------------------------------ pairing
    def _on_unpaired(self, u: Unpaired) -> None:
        self.unpaired_counts[u.reason] += 1
        if self.keep_unpaired:
            self.unpaired.append(Unpaired(u.stream, u.stamp_ns, u.reason))  # without the message (memory)

    def add(self, stream: str, msg: Any) -> list[Pair]:
        """Offer one Image message (``stream`` = ``thermal`` or ``rgb``); returns the pairs that became final."""
        t = time.perf_counter()
        pairs = self.sync.add(stream, stamp_ns(msg), msg)
        self.timings["sync"].append((time.perf_counter() - t) * 1e3)
        return pairs

    def flush(self) -> list[Pair]:
        """End of stream: the last pairs, and the rest reported unpaired."""
        return self.sync.flush()

    def set_camera_info(self, msg: Any) -> None:
        """Offer one RGB ``CameraInfo``; it goes out with the fused image of the same stamp (or later ones)."""
        stamp = stamp_ns(msg)
        self._camera_infos[stamp] = msg
        self._camera_infos.move_to_end(stamp)  # the last entry is always the latest offered
        while len(self._camera_infos) > CAMERA_INFO_KEEP:
            self._camera_infos.popitem(last=False)

    # ------------------------------------------------------------------ processing
    def _camera_info(self, hdr: dict[str, Any], size: tuple[int, int]) -> dict[str, Any] | None:
        if not self.camera_info or not self._camera_infos:
            return None
        info = self._camera_infos.get(M.header_stamp_ns(hdr))
        if info is None:
            info = next(reversed(self._camera_infos.values()))
        try:
            return M.camera_info_message(info, hdr, size)
        except M.CameraInfoMismatch as e:
            self.camera_info_errors[str(e)] += 1
            return None

    def arrays(self, thermal_msg: Any, rgb_msg: Any) -> tuple[np.ndarray, np.ndarray]:
        """(thermal H×W uint8, visible H×W×3 RGB uint8) of a pair."""
        raw = thermal_array(thermal_msg)
        if raw.dtype.kind == "f" and not np.isfinite(raw).any():
            raise ValueError("thermal frame has no finite pixel (all NaN/inf)")
        ir = self.normalizer(raw)
        vis = decode_visible(rgb_msg)
        return ir, vis

    def process(self, thermal_msg: Any, rgb_msg: Any, debug: bool = False) -> M.Outgoing | None:
        """Fuse one pair into its outgoing messages; ``None`` (and a recorded failure) when the frame is bad."""
        t0 = time.perf_counter()
        rgb_hdr = rgb_msg.header
        hdr = M.header(stamp_ns(rgb_msg), str(rgb_hdr.frame_id) or self.frame_id)
        try:
            ir, vis = self.arrays(thermal_msg, rgb_msg)
            t1 = time.perf_counter()
            if ir.shape != vis.shape[:2]:
                self.resized += 1
            if self.engine is not None:
                res = self.engine.fuse(ir, vis, color=self.color, detections=self.detections)
            else:
                res = _fake_result(ir, vis, self.color)
        except (ImageDecodeError, ValueError) as e:
            self.failures.append(FrameFailure(stamp_ns(thermal_msg), stamp_ns(rgb_msg), f"{type(e).__name__}: {e}"))
            return None
        t2 = time.perf_counter()
        self.last_arrays = (res.fused, ir, vis)
        image = res.color if (self.color and res.color is not None) else res.fused
        h, w = res.fused.shape[:2]
        out = M.Outgoing(
            header=hdr,
            image=M.image_message(image, hdr),
            detections=M.detection_array(res.detections, hdr, image_size=(w, h), layout=self.layout,
                                         class_id=self.class_id),
            gates=M.gates_message(res.gates) if self.gates else M.gates_message({}),
            debug_image=M.image_message(M.debug_image(vis, res.detections), hdr) if debug else None,
            camera_info=self._camera_info(hdr, (w, h)),
        )
        t3 = time.perf_counter()
        self.fused += 1
        tm = self.timings
        tm["decode"].append((t1 - t0) * 1e3)
        for k in ("preprocess", "inference", "postprocess"):
            if k in res.timings_ms:
                tm[k].append(res.timings_ms[k])
        tm["fuse"].append((t2 - t1) * 1e3)
        tm["messages"].append((t3 - t2) * 1e3)
        tm["total"].append((t3 - t0) * 1e3)
        return out

    # ------------------------------------------------------------------ reporting
    def latency_summary(self) -> dict[str, dict[str, float]]:
        """p50/p95/mean/max milliseconds and count per stage."""
        out = {}
        for k, v in self.timings.items():
            if v:
                out[k] = {"p50_ms": percentile(v, 50), "p95_ms": percentile(v, 95),
                          "mean_ms": float(np.mean(v)), "max_ms": float(np.max(v)), "count": len(v)}
        return out


def _fake_result(ir: np.ndarray, vis: np.ndarray, color: bool) -> SimpleNamespace:
    """Stand-in for a FusionResult when no model runs (benchmarks of the node path)."""
    from moe_fusion_core.engine import color_fusion

    if ir.shape != vis.shape[:2]:
        import cv2

        ir = cv2.resize(ir, (vis.shape[1], vis.shape[0]), interpolation=cv2.INTER_LINEAR)
    h, w = ir.shape
    dets = [SimpleNamespace(box=(w * 0.1, h * 0.2, w * 0.4, h * 0.6), class_id=0, class_name="person", score=0.9),
            SimpleNamespace(box=(w * 0.5, h * 0.5, w * 0.9, h * 0.8), class_id=1, class_name="car", score=0.7)]
    gates = {"mole_fg": np.full(4, 0.25, np.float32), "mole_bg": np.full(4, 0.25, np.float32),
             "moge": np.full(4, 0.25, np.float32)}
    return SimpleNamespace(fused=ir, color=color_fusion(ir, vis) if color else None, detections=dets, gates=gates,
                           timings_ms={})


def fake_image_message(arr: np.ndarray, stamp: int, frame_id: str, encoding: str | None = None) -> SimpleNamespace:
    """A ``sensor_msgs/Image``-shaped object (tests and benchmarks): mono8/mono16/32FC1/rgb8 by dtype and shape."""
    a = np.ascontiguousarray(arr)
    if encoding is None:
        encoding = {np.dtype(np.uint8): "mono8", np.dtype(np.uint16): "mono16",
                    np.dtype(np.float32): "32FC1"}[a.dtype] if a.ndim == 2 else "rgb8"
    h, w = a.shape[:2]
    hdr = SimpleNamespace(stamp=SimpleNamespace(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000),
                          frame_id=frame_id)
    return SimpleNamespace(header=hdr, height=h, width=w, encoding=encoding, is_bigendian=0,
                           step=a.nbytes // h, data=a.tobytes())


def node_path_benchmark(ir: np.ndarray, vis: np.ndarray, iters: int) -> list[float]:
    """Milliseconds per pair for the node path without the model: pairing + message decode/normalise + building
    the outgoing messages (image, detections, gates). ``ir``: H×W (uint8/uint16), ``vis``: H×W×3 RGB uint8."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    pipe = FusionPipeline(None, keep_unpaired=False)
    t0 = 1_700_000_000_000_000_000
    period = 40_000_000  # 25 Hz, thermal 5 ms later
    out: list[float] = []
    for i in range(iters + 1):
        th = fake_image_message(ir, t0 + i * period + 5_000_000, "thermal")
        rgb = fake_image_message(vis, t0 + i * period, "camera")
        t = time.perf_counter()
        pairs = pipe.add(THERMAL, th) + pipe.add(RGB, rgb)
        for p in pairs:
            pipe.process(p.thermal, p.rgb)
        if i > 0:  # the first iteration only primes the synchroniser
            out.append((time.perf_counter() - t) * 1e3)
    return out
