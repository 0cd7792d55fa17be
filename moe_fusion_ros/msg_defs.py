"""vision_msgs 4.x definitions (Humble = Jazzy, ros2_conventions §2.6) for a rosbags typestore, and a builder that
turns the plain dicts of :mod:`moe_fusion_ros.messages` into rosbags message objects.

rosbags ships no vision_msgs, so bag replay registers these (written from the public ``.msg`` files of
ros-perception/vision_msgs 4.1.1) before writing ``/fused/detections``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

VISION_MSGS: dict[str, str] = {
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y\n",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "vision_msgs/msg/BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": (
        "vision_msgs/ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n"),
    "vision_msgs/msg/Detection2D": (
        "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
        "vision_msgs/BoundingBox2D bbox\nstring id\n"),
    "vision_msgs/msg/Detection2DArray": "std_msgs/Header header\nvision_msgs/Detection2D[] detections\n",
}

_NUMPY = {"bool": np.bool_, "byte": np.uint8, "char": np.uint8, "int8": np.int8, "uint8": np.uint8,
          "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32, "int64": np.int64,
          "uint64": np.uint64, "float32": np.float32, "float64": np.float64}


def register_vision_msgs(typestore: Any) -> Any:
    """Add the vision_msgs types to ``typestore`` (idempotent); returns it."""
    from rosbags.typesys import get_types_from_msg

    if all(name in typestore.types for name in VISION_MSGS):
        return typestore
    types: dict[str, Any] = {}
    for name, text in VISION_MSGS.items():
        types.update(get_types_from_msg(text, name))
    typestore.register(types)
    return typestore


def typestore_for(distro: str = "jazzy") -> Any:
    """A rosbags typestore for ``humble`` or ``jazzy`` with vision_msgs registered."""
    from rosbags.typesys import Stores, get_typestore

    stores = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}
    if distro not in stores:
        raise ValueError(f"distro must be 'humble' or 'jazzy', got {distro!r}")
    return register_vision_msgs(get_typestore(stores[distro]))


def _default_base(typ: str) -> Any:
    if typ == "string":
        return ""
    if typ == "bool":
        return False
    return _NUMPY[typ](0).item() if typ not in ("float32", "float64") else 0.0


def build(typestore: Any, msgtype: str, data: Mapping[str, Any] | None = None) -> Any:
    """A rosbags message of ``msgtype`` from a nested dict (missing fields get ROS defaults)."""
    from rosbags.typesys.base import Nodetype

    data = data or {}
    fields = typestore.fielddefs[msgtype][1]
    unknown = set(data) - {n for n, _ in fields}
    if unknown:
        raise ValueError(f"{msgtype} has no field(s) {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, (node, spec) in fields:
        value = data.get(name)
        if node == Nodetype.NAME:
            kwargs[name] = build(typestore, spec, value)
        elif node == Nodetype.BASE:
            kwargs[name] = _default_base(spec[0]) if value is None else value
        else:
            (sub_node, sub_spec), length = spec
            if sub_node == Nodetype.BASE and sub_spec[0] != "string":
                dtype = _NUMPY[sub_spec[0]]
                arr = np.zeros(length if node == Nodetype.ARRAY else 0, dtype) if value is None \
                    else np.asarray(value, dtype).reshape(-1)
                kwargs[name] = arr
            elif sub_node == Nodetype.BASE:
                kwargs[name] = list(value or ([""] * (length if node == Nodetype.ARRAY else 0)))
            else:
                items = list(value or [])
                if node == Nodetype.ARRAY and not items:
                    items = [{}] * length
                kwargs[name] = [build(typestore, sub_spec, v) for v in items]
    return typestore.types[msgtype](**kwargs)
