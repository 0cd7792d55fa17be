"""Plain data → ROS messages through the message classes' own introspection (stand-in classes here; the real
rclpy classes in test_node_live.py)."""

from __future__ import annotations

import array
from typing import ClassVar

import numpy as np
import pytest

from moe_fusion_ros import messages as M
from moe_fusion_ros.convert import ConversionError, to_ros


class Msg:
    """A stand-in with rclpy's introspection API: ``get_fields_and_field_types()``."""

    FIELDS: ClassVar[dict[str, str]] = {}
    SUB: ClassVar[dict[str, type]] = {}

    def __init__(self) -> None:
        for name in self.FIELDS:
            setattr(self, name, self.SUB[name]() if name in self.SUB else None)

    @classmethod
    def get_fields_and_field_types(cls) -> dict[str, str]:
        return dict(cls.FIELDS)


class Time(Msg):
    FIELDS: ClassVar[dict[str, str]] = {"sec": "int32", "nanosec": "uint32"}


class Header(Msg):
    FIELDS: ClassVar[dict[str, str]] = {"stamp": "builtin_interfaces/Time", "frame_id": "string"}
    SUB: ClassVar[dict[str, type]] = {"stamp": Time}


class Image(Msg):
    FIELDS: ClassVar[dict[str, str]] = {
        "header": "std_msgs/Header", "height": "uint32", "width": "uint32", "encoding": "string",
        "is_bigendian": "uint8", "step": "uint32", "data": "sequence<uint8>"}
    SUB: ClassVar[dict[str, type]] = {"header": Header}


class KeyValue(Msg):
    FIELDS: ClassVar[dict[str, str]] = {"key": "string", "value": "string"}


class Status(Msg):
    FIELDS: ClassVar[dict[str, str]] = {"level": "byte", "name": "string", "message": "string", "hardware_id": "string",
              "values": "sequence<diagnostic_msgs/KeyValue>"}


class DiagnosticArray(Msg):
    FIELDS: ClassVar[dict[str, str]] = {"header": "std_msgs/Header",
                                        "status": "sequence<diagnostic_msgs/DiagnosticStatus>"}
    SUB: ClassVar[dict[str, type]] = {"header": Header}


class Info(Msg):
    FIELDS: ClassVar[dict[str, str]] = {"k": "double[9]", "d": "sequence<double>"}


CLASSES = {"diagnostic_msgs/KeyValue": KeyValue, "diagnostic_msgs/DiagnosticStatus": Status}
HDR = M.header(1_700_000_000_123_456_789, "camera")


def test_image_data_becomes_a_byte_buffer_and_header_nests():
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    m = to_ros(Image, M.image_message(arr, HDR), CLASSES.__getitem__)
    assert (m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id) == (1_700_000_000, 123_456_789, "camera")
    assert (m.height, m.width, m.encoding, m.step) == (3, 4, "mono8", 4)
    assert isinstance(m.data, array.array) and m.data.typecode == "B" and bytes(m.data) == arr.tobytes()


def test_sequences_of_messages_and_byte_fields():
    d = M.status_message(HDR, {"thermal": M.INPUT_MISSING, "rgb": M.INPUT_OK})
    m = to_ros(DiagnosticArray, d, CLASSES.__getitem__)
    (st,) = m.status
    assert isinstance(st, Status) and st.level == bytes([M.LEVEL_WARN]) and st.message == "rgb only (thermal missing)"
    assert [(v.key, v.value) for v in st.values] == [("thermal", "missing"), ("rgb", "ok")]


def test_fixed_and_variable_float_arrays():
    m = to_ros(Info, {"k": np.arange(9.0), "d": np.zeros(5)})
    assert isinstance(m.k, np.ndarray) and m.k.dtype == np.float64 and m.k[8] == 8.0
    assert m.d.typecode == "d" and len(m.d) == 5
    with pytest.raises(ConversionError, match="needs 9"):
        to_ros(Info, {"k": np.arange(4.0)})


def test_unknown_field_and_type_are_named():
    with pytest.raises(ConversionError, match="no field 'colour'"):
        to_ros(Image, {"colour": 1})
    with pytest.raises(ConversionError, match="not_a_pkg/Thing"):
        from moe_fusion_ros.convert import message_class

        message_class("not_a_pkg/Thing")
