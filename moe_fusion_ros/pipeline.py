"""The one fusion pipeline shared by the ROS node and bag replay (ROS-free).

messages → :mod:`sync` (pairs) → :mod:`thermal` (arrays: thermal decode + normalise, RGB decode) → registration
(the thermal image in the RGB image's pixels) → ``FusionEngine.fuse`` → :mod:`messages` (outgoing plain data).
Each stage is timed; counters record what was received, paired, left unpaired (and why) and which frames failed
(and why). A failed frame is counted and skipped; processing goes on. RGB ``CameraInfo`` messages offered with
:meth:`FusionPipeline.set_camera_info` go out with the fused images: the one with the RGB image's stamp (as
image_transport's camera subscriber pairs them), else the latest; one that does not fit the image is counted and
not published.

A message whose partner input is missing (:class:`~moe_fusion_ros.inputs.Single`) is fused on its own with the
missing image blank (:meth:`FusionPipeline.process_single`): the output stays in the RGB camera's pixels (the
last RGB size and frame_id seen), carries the surviving message's stamp, and its ``status`` says which input
was missing.

Published detections: the classes of ``classes`` (empty = all), each with a track ID unless ``tracking`` is off
(:mod:`moe_fusion_core.tracking`; a frame stamped more than the pairing's ``time_jump`` before the previous one
starts new tracks, as it resets the pairing).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from moe_fusion_core.preprocess import ThermalNormalization, ThermalNormalizer
from moe_fusion_core.registration import as_matrix, check_resizable, warp_to_rgb
from moe_fusion_core.report import latency_table
from moe_fusion_core.tracking import DetectionTracker, check_classes, select_classes

from . import messages as M
from .inputs import Single
from .sync import RGB, THERMAL, Pair, PairSynchronizer, Unpaired
from .thermal import ImageDecodeError, decode_visible, stamp_ns, thermal_array

CAMERA_INFO_KEEP = 64
FAILURES_KEEP = 100  # without keep_history (the node): the last failures and timings, counters for the rest
TIMINGS_KEEP = 1000
STAGES = ("sync", "decode", "preprocess", "inference", "postprocess", "messages", "total")


@dataclass
class FrameFailure:
    """A pair (or single message) that could not be fused."""

    thermal_stamp_ns: int | None
    rgb_stamp_ns: int | None
    reason: str
    kind: str = "ValueError"  # exception class name: UnsupportedEncoding, MalformedImage, InvalidThermal, ...


class InvalidThermal(ValueError):
    """A float thermal frame with too many NaN/inf pixels."""


class FusionPipeline:
    """Pairs, decodes, registers, fuses and builds the outgoing messages of one thermal + RGB camera pair.

    ``keep_history`` (bag replay, for its report) keeps every unpaired message, failure and stage timing; without
    it (the node, which runs for days) only counters, the last failures and the last timings are kept."""

    def __init__(self, engine: Any, *, slop: float = 0.02, queue_size: int = 5, thermal_offset: float = 0.0,
                 time_jump: float = 0.25, normalization: ThermalNormalization | None = None,
                 color: bool = False, detections: bool = True, gates: bool = True, layout: str = "jazzy",
                 class_id: str = "name", frame_id: str = "", keep_history: bool = True, camera_info: bool = True,
                 homography: Sequence[float] | None = None, max_invalid_fraction: float = 0.01,
                 classes: Sequence[str] = (), tracking: bool = True) -> None:
        if layout not in M.LAYOUTS:
            raise ValueError(f"detection layout must be one of {', '.join(M.LAYOUTS)}, got {layout!r}")
        if class_id not in M.CLASS_ID_MODES:
            raise ValueError(f"class_id must be 'name' or 'index', got {class_id!r}")
        if not (0.0 <= max_invalid_fraction <= 1.0):
            raise ValueError(f"max_invalid_fraction must be in [0, 1], got {max_invalid_fraction}")
        self.engine = engine
        self.normalizer = ThermalNormalizer(normalization or ThermalNormalization())
        self.color = color
        self.detections = detections
        self.gates = gates
        self.layout = layout
        self.class_id = class_id
        self.frame_id = frame_id
        self.keep_history = keep_history
        self.camera_info = camera_info
        self.set_homography(homography)
        self.max_invalid_fraction = max_invalid_fraction
        self.tracker = DetectionTracker()
        self.tracking = tracking
        self.set_classes(classes)
        self._camera_infos: OrderedDict[int, Any] = OrderedDict()  # by stamp, oldest first, the last CAMERA_INFO_KEEP
        self.camera_info_errors: Counter = Counter()
        self.unpaired: list[Unpaired] = []
        self.unpaired_counts: Counter = Counter()
        self.failures: list[FrameFailure] | deque[FrameFailure] = [] if keep_history else deque(maxlen=FAILURES_KEEP)
        self.failure_counts: Counter = Counter()  # by exception class name
        self.fused = 0
        self.singles: Counter = Counter()  # missing input -> frames fused without it
        self.resized = 0
        self.timings: dict[str, list[float]] | dict[str, deque[float]] = (
            defaultdict(list) if keep_history else defaultdict(lambda: deque(maxlen=TIMINGS_KEEP)))
        self.last: tuple[np.ndarray, np.ndarray, Any] | None = None  # thermal, visible, engine result of the last fuse
        self.last_rgb: tuple[int, int, str] | None = None  # (width, height, frame_id) of the last RGB image fused
        self.sync = PairSynchronizer(slop, queue_size, thermal_offset, on_unpaired=self._on_unpaired,
                                     time_jump=time_jump)

    # ------------------------------------------------------------------ pairing
    def _on_unpaired(self, u: Unpaired) -> None:
        self.unpaired_counts[u.reason] += 1
        if self.keep_history:
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
    def set_classes(self, classes: Sequence[str]) -> None:
        """Publish only these classes (empty = all); a name the model does not have is a ``ValueError``."""
        self.classes = check_classes(classes, self.engine.class_names) if classes else ()

    def set_tracking(self, on: bool) -> None:
        """Track IDs on or off; turned back on, tracks start afresh."""
        if on and not self.tracking:
            self.tracker.reset()
        self.tracking = on

    def set_homography(self, homography: Sequence[float] | None) -> None:
        """Thermal → RGB pixel homography (9 numbers, row-major), or ``None``: resize only."""
        self.homography = None if homography is None else as_matrix(homography)

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

    def thermal_unit(self, thermal_msg: Any) -> np.ndarray:
        """H×W uint8 thermal image of a message: decoded, NaN/inf checked, normalised (in its own pixels)."""
        raw = thermal_array(thermal_msg)
        if raw.dtype.kind == "f":
            bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
            if bad == raw.size:
                raise InvalidThermal("thermal frame has no finite pixel (all NaN/inf)")
            if bad > self.max_invalid_fraction * raw.size:
                raise InvalidThermal(f"thermal frame has {bad} NaN/inf pixels ({bad / raw.size:.1%} > "
                                     f"thermal.max_invalid_fraction {self.max_invalid_fraction:.1%})")
        return self.normalizer(raw)

    def register(self, ir: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """The thermal image in RGB pixels of ``size`` (w, h): the homography if set, else a checked resize."""
        if self.homography is not None:
            return warp_to_rgb(ir, self.homography, size)
        if ir.shape != (size[1], size[0]):
            check_resizable(ir.shape, (size[1], size[0]))
            self.resized += 1  # the engine resizes it
        return ir

    def arrays(self, thermal_msg: Any, rgb_msg: Any) -> tuple[np.ndarray, np.ndarray]:
        """(thermal H×W uint8 in the RGB image's pixels, visible H×W×3 RGB uint8) of a pair."""
        ir = self.thermal_unit(thermal_msg)
        vis = decode_visible(rgb_msg)
        return self.register(ir, (vis.shape[1], vis.shape[0])), vis

    def process(self, thermal_msg: Any, rgb_msg: Any, debug: bool = False) -> M.Outgoing | None:
        """Fuse one pair into its outgoing messages; ``None`` (and a recorded failure) when the frame is bad."""
        t0 = time.perf_counter()
        try:
            ir, vis = self.arrays(thermal_msg, rgb_msg)
        except (ImageDecodeError, ValueError) as e:
            return self.record_failure(stamp_ns(thermal_msg), stamp_ns(rgb_msg), e)
        hdr = M.header(stamp_ns(rgb_msg), str(rgb_msg.header.frame_id) or self.frame_id)
        self.last_rgb = (vis.shape[1], vis.shape[0], hdr["frame_id"])
        return self._fuse(ir, vis, hdr, t0, debug, {THERMAL: M.INPUT_OK, RGB: M.INPUT_OK}, (stamp_ns(thermal_msg),
                                                                                           stamp_ns(rgb_msg)))

    def process_single(self, item: Single, debug: bool = False) -> M.Outgoing | None:
        """Fuse one message whose partner input is missing, with the missing image blank (zeros)."""
        t0 = time.perf_counter()
        stamps = (item.stamp_ns, None) if item.stream == THERMAL else (None, item.stamp_ns)
        try:
            if item.stream == RGB:
                vis = decode_visible(item.msg)
                ir = np.zeros(vis.shape[:2], np.uint8)
                frame = str(item.msg.header.frame_id) or self.frame_id
                self.last_rgb = (vis.shape[1], vis.shape[0], frame)
            else:
                ir = self.thermal_unit(item.msg)
                if self.last_rgb is not None:  # the blank visible image at the last RGB size (the engine resizes)
                    w, h, frame = self.last_rgb
                    ir = self.register(ir, (w, h))
                    vis = np.zeros((h, w, 3), np.uint8)
                else:  # no RGB image seen yet: the thermal image's own pixels
                    frame = self.frame_id or str(item.msg.header.frame_id)
                    vis = np.zeros((*ir.shape, 3), np.uint8)
        except (ImageDecodeError, ValueError) as e:
            return self.record_failure(*stamps, e)
        hdr = M.header(item.stamp_ns, frame)
        status = {item.stream: M.INPUT_OK, item.missing: M.INPUT_MISSING}
        out = self._fuse(ir, vis, hdr, t0, debug, status, stamps)
        if out is not None:
            self.singles[item.missing] += 1
        return out

    def record_failure(self, thermal_stamp: int | None, rgb_stamp: int | None, e: Exception) -> None:
        """Count a frame that could not be fused, by the exception's class name, and keep its reason."""
        kind = type(e).__name__
        self.failure_counts[kind] += 1
        self.failures.append(FrameFailure(thermal_stamp, rgb_stamp, f"{kind}: {e}", kind))
        return None

    def _fuse(self, ir: np.ndarray, vis: np.ndarray, hdr: dict[str, Any], t0: float, debug: bool,
              status: dict[str, str], stamps: tuple[int | None, int | None]) -> M.Outgoing | None:
        t1 = time.perf_counter()
        try:
            res = self.engine.fuse(ir, vis, color=self.color, detections=self.detections)
        except ValueError as e:
            return self.record_failure(*stamps, e)
        res.detections = select_classes(res.detections, self.classes)
        if self.tracking:  # a stamp far older than the last starts new tracks, as it resets the pairing
            self.tracker.update(res.detections, M.header_stamp_ns(hdr), self.sync.time_jump_ns)
        t2 = time.perf_counter()
        self.last = (ir, vis, res)
        image = res.color if (self.color and res.color is not None) else res.fused
        h, w = res.fused.shape[:2]
        debug_image = None
        if debug:  # detections drawn on the visible image, or on the fused one when the visible input is missing
            base = vis if status.get(RGB) == M.INPUT_OK else np.repeat(res.fused[:, :, None], 3, axis=2)
            debug_image = M.image_message(M.debug_image(base, res.detections), hdr)
        out = M.Outgoing(
            header=hdr,
            image=M.image_message(image, hdr),
            detections=M.detection_array(res.detections, hdr, image_size=(w, h), layout=self.layout,
                                         class_id=self.class_id),
            gates=M.gates_message(res.gates) if self.gates else M.gates_message({}),
            debug_image=debug_image,
            camera_info=self._camera_info(hdr, (w, h)),
            status=M.status_message(hdr, status, stamps[0]),
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
        return latency_table(self.timings)
