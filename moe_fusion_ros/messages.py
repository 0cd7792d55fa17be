"""Outgoing messages as plain data (nested dicts keyed by the ROS field names), independent of ROS.

The node copies these into rclpy messages and bag replay into rosbags messages, so both publish the same bytes.

- ``fused/image`` (``sensor_msgs/Image``): ``mono8`` (grey fused) or ``rgb8`` (colour fused), header = the RGB
  input's header (stamp and frame_id, ros2_conventions §2.5); ``data`` is a flat ``uint8`` numpy array.
- ``detections`` (``vision_msgs/Detection2DArray``): the same header on the array and on every detection; boxes in
  the published image's pixels; ``class_id`` is the class name (or its index as a string); one array per frame,
  empty when nothing was found. Layouts (§2.6): ``humble``/``jazzy`` (vision_msgs 4.x,
  ``bbox.center.position.x``) and ``galactic`` (3.x, ``bbox.center.x``). ``id`` is the track ID (decimal text,
  :mod:`moe_fusion_core.tracking`), empty when tracking is off.
- ``fused/gates`` (``std_msgs/Float32MultiArray``): the gate weights of every gate, concatenated in the order
  ``mole_fg, mole_bg, moge``; ``layout.dim[i]`` names gate *i* (``label``) and its number of experts (``size`` =
  ``stride``), so gate *i* is ``data[sum(size[:i]) : sum(size[:i+1])]``.
- ``fused/debug_image``: the RGB input with boxes, class names and scores drawn (``rgb8``).
- ``fused/status`` (``diagnostic_msgs/DiagnosticArray``): one per fused image, same header; one status named
  ``moe_fusion: inputs`` with level OK when both inputs were fused and WARN when one was missing, message
  ``fused`` / ``rgb only (thermal missing)`` / ``thermal only (rgb missing)``, and values ``thermal`` and
  ``rgb`` = ``ok`` or ``missing``, and ``thermal_stamp_ns``, the header stamp of the thermal image that was
  fused (message_filters can pair it with ``fused/image`` by stamp).
- ``fused/camera_info`` (``sensor_msgs/CameraInfo``): the RGB camera's calibration with the fused image's header.
  The fused pixels are the RGB image's pixels (same size, no resampling), so K, D, R, P, binning and ROI are
  copied unchanged; image_pipeline consumers pair it with ``fused/image`` by stamp (ros2_conventions §2.5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LAYOUTS = ("humble", "jazzy", "galactic")
INPUT_OK, INPUT_MISSING = "ok", "missing"
STATUS_NAME = "moe_fusion: inputs"
LEVEL_OK, LEVEL_WARN = 0, 1  # diagnostic_msgs/DiagnosticStatus levels
CLASS_ID_MODES = ("name", "index")
GATE_ORDER = ("mole_fg", "mole_bg", "moge")


def header(stamp_ns: int, frame_id: str) -> dict[str, Any]:
    """``std_msgs/Header`` from a stamp in nanoseconds."""
    stamp_ns = int(stamp_ns)
    if stamp_ns < 0:
        raise ValueError(f"negative stamp {stamp_ns} ns")
    return {"stamp": {"sec": stamp_ns // 1_000_000_000, "nanosec": stamp_ns % 1_000_000_000}, "frame_id": frame_id}


def header_stamp_ns(h: Mapping[str, Any]) -> int:
    return int(h["stamp"]["sec"]) * 1_000_000_000 + int(h["stamp"]["nanosec"])


def image_message(arr: np.ndarray, hdr: Mapping[str, Any]) -> dict[str, Any]:
    """``sensor_msgs/Image`` from an H×W (``mono8``) or H×W×3 RGB (``rgb8``) ``uint8`` array."""
    a = np.asarray(arr)
    if a.dtype != np.uint8:
        raise ValueError(f"output image must be uint8, got {a.dtype}")
    if a.ndim == 2:
        encoding, ch = "mono8", 1
    elif a.ndim == 3 and a.shape[2] == 3:
        encoding, ch = "rgb8", 3
    else:
        raise ValueError(f"output image must be H×W or H×W×3, got shape {a.shape}")
    h, w = a.shape[:2]
    return {"header": dict(hdr), "height": h, "width": w, "encoding": encoding, "is_bigendian": 0,
            "step": w * ch, "data": np.ascontiguousarray(a).reshape(-1)}


CAMERA_INFO_ARRAYS = {"d": None, "k": 9, "r": 9, "p": 12}


class CameraInfoMismatch(ValueError):
    """A camera_info that does not describe the image it would be published with."""


def camera_info_message(info: Any, hdr: Mapping[str, Any], image_size: tuple[int, int]) -> dict[str, Any]:
    """``sensor_msgs/CameraInfo`` for the fused image: ``info`` (the RGB camera's, an rclpy or rosbags message or
    an object with the same fields) with header ``hdr``. ``image_size`` (w, h) is the fused image's size.

    Raises :class:`CameraInfoMismatch` when ``info`` cannot describe that image: its own size is set, it uses no
    binning or ROI, and it differs from ``image_size`` (a calibration for another resolution)."""
    w, h = image_size
    width, height = int(info.width), int(info.height)
    bx, by = int(info.binning_x), int(info.binning_y)
    roi = info.roi
    roi_d = {"x_offset": int(roi.x_offset), "y_offset": int(roi.y_offset), "height": int(roi.height),
             "width": int(roi.width), "do_rectify": bool(roi.do_rectify)}
    plain = bx <= 1 and by <= 1 and roi_d["width"] in (0, width) and roi_d["height"] in (0, height)
    if plain and width > 0 and height > 0 and (width, height) != (w, h):
        raise CameraInfoMismatch(f"RGB camera_info is for {width}x{height} but the image is {w}x{h}")
    out: dict[str, Any] = {"header": dict(hdr), "height": height, "width": width,
                           "distortion_model": str(info.distortion_model), "binning_x": bx, "binning_y": by,
                           "roi": roi_d}
    for name, n in CAMERA_INFO_ARRAYS.items():
        a = np.asarray(getattr(info, name), np.float64).reshape(-1)
        if n is not None and a.size != n:
            raise CameraInfoMismatch(f"camera_info.{name} has {a.size} values, expected {n}")
        out[name] = a.copy()
    return out


def _box_dict(cx: float, cy: float, w: float, h: float, layout: str) -> dict[str, Any]:
    if layout == "galactic":
        center: dict[str, Any] = {"x": cx, "y": cy, "theta": 0.0}
    else:
        center = {"position": {"x": cx, "y": cy}, "theta": 0.0}
    return {"center": center, "size_x": w, "size_y": h}


def detection_array(detections: Sequence[Any], hdr: Mapping[str, Any], image_size: tuple[int, int] | None = None,
                    scale: tuple[float, float] = (1.0, 1.0), layout: str = "jazzy",
                    class_id: str = "name") -> dict[str, Any]:
    """``vision_msgs/Detection2DArray`` from objects with ``box`` (x1, y1, x2, y2), ``class_id``, ``class_name``,
    ``score``. ``scale`` maps the boxes' pixels to the published image's; ``image_size`` (w, h) clips them."""
    if layout not in LAYOUTS:
        raise ValueError(f"detection layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if class_id not in CLASS_ID_MODES:
        raise ValueError(f"class_id mode must be 'name' or 'index', got {class_id!r}")
    out = []
    for d in detections:
        x1, y1, x2, y2 = (float(v) for v in d.box)
        x1, x2 = x1 * scale[0], x2 * scale[0]
        y1, y2 = y1 * scale[1], y2 * scale[1]
        if image_size is not None:
            w, h = image_size
            x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
            y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
        cid = d.class_name if class_id == "name" else str(d.class_id)
        out.append({
            "header": dict(hdr),
            "results": [{"hypothesis": {"class_id": cid, "score": float(d.score)}}],
            "bbox": _box_dict((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, layout),
            "id": "" if getattr(d, "track_id", None) is None else str(d.track_id),
        })
    return {"header": dict(hdr), "detections": out}


def box_of(det: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) of a plain ``Detection2D`` dict in either layout."""
    c = det["bbox"]["center"]
    cx, cy = (c["position"]["x"], c["position"]["y"]) if "position" in c else (c["x"], c["y"])
    w, h = det["bbox"]["size_x"], det["bbox"]["size_y"]
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def gates_message(gates: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``std_msgs/Float32MultiArray`` with every gate's weights (layout in the module docstring)."""
    names = [g for g in GATE_ORDER if g in gates] + sorted(set(gates) - set(GATE_ORDER))
    dims, data = [], []
    for g in names:
        v = np.asarray(gates[g], np.float32).reshape(-1)
        dims.append({"label": g, "size": int(v.size), "stride": int(v.size)})
        data.append(v)
    flat = np.concatenate(data) if data else np.zeros(0, np.float32)
    return {"layout": {"dim": dims, "data_offset": 0}, "data": flat}


def status_message(hdr: Mapping[str, Any], inputs: Mapping[str, str], thermal_stamp_ns: int | None = None
                   ) -> dict[str, Any]:
    """``diagnostic_msgs/DiagnosticArray`` saying which inputs went into one fused image (layout above)."""
    missing = [k for k in ("thermal", "rgb") if inputs.get(k) != INPUT_OK]
    if not missing:
        level, text = LEVEL_OK, "fused"
    else:
        alive = [k for k in ("thermal", "rgb") if k not in missing]
        level, text = LEVEL_WARN, f"{alive[0] if alive else 'nothing'} only ({', '.join(missing)} missing)"
    values = [{"key": k, "value": str(inputs.get(k, INPUT_MISSING))} for k in ("thermal", "rgb")]
    if thermal_stamp_ns is not None:
        values.append({"key": "thermal_stamp_ns", "value": str(int(thermal_stamp_ns))})
    return {"header": dict(hdr), "status": [{"level": level, "name": STATUS_NAME, "message": text,
                                             "hardware_id": "", "values": values}]}


def debug_image(rgb: np.ndarray, detections: Sequence[Any]) -> np.ndarray:
    """The RGB image with boxes, class names and scores drawn (a copy)."""
    from moe_fusion_core.report import draw_detections

    return draw_detections(rgb, list(detections))


@dataclass
class Outgoing:
    """Everything published for one pair."""

    header: dict[str, Any]
    image: dict[str, Any]
    detections: dict[str, Any]
    gates: dict[str, Any]
    debug_image: dict[str, Any] | None = None
    camera_info: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
