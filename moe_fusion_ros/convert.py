"""Plain data (:mod:`moe_fusion_ros.messages`) → rclpy message objects, without importing ROS.

The node builds every outgoing message with :func:`to_ros` from the same plain dicts that bag replay serialises
with rosbags, so both publish the same fields. The conversion is driven by the message class's own type
introspection (``get_fields_and_field_types()``, which every rclpy message class has), so it needs no per-type
code: nested messages recurse, sequences of messages look their element class up by name, and numpy arrays go
in as the buffers rclpy copies fastest (``array.array`` for sequences, float64 arrays for fixed-size arrays).
"""

from __future__ import annotations

import array
import importlib
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import numpy as np

# rosidl basic type -> array.array typecode, for sequences given as numpy arrays
TYPECODES = {"uint8": "B", "octet": "B", "char": "B", "int8": "b", "uint16": "H", "int16": "h", "uint32": "I",
             "int32": "i", "uint64": "Q", "int64": "q", "float": "f", "double": "d", "float32": "f",
             "float64": "d"}


class ConversionError(ValueError):
    """The plain data does not fit the message type."""


@cache
def message_class(type_name: str) -> type:
    """``pkg/Name`` or ``pkg/msg/Name`` → the generated rclpy class (imports ``pkg.msg``)."""
    parts = type_name.split("/")
    pkg, name = parts[0], parts[-1]
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except (ImportError, AttributeError) as e:
        raise ConversionError(f"message type {type_name!r} is not available ({e})") from e


def _element(type_str: str) -> tuple[str, bool, int | None]:
    """(element type, is a sequence/array, fixed size or None) of a field type string."""
    if type_str.startswith("sequence<"):
        return type_str[len("sequence<"):-1].split(",")[0].strip(), True, None
    if type_str.endswith("]") and "[" in type_str:
        base, n = type_str[:-1].split("[", 1)
        return base, True, int(n) if n.isdigit() else None
    return type_str, False, None


@cache
def _fields(cls: type) -> dict[str, tuple[str, bool, int | None]]:
    """Field name → :func:`_element` of its type, once per message class."""
    return {name: _element(t) for name, t in cls.get_fields_and_field_types().items()}


def fill(msg: Any, data: Mapping[str, Any], resolve: Callable[[str], type] = message_class) -> Any:
    """Set ``msg``'s fields from ``data`` (nested dicts keyed by field name); returns ``msg``."""
    fields = _fields(type(msg))
    for name, value in data.items():
        if name not in fields:
            raise ConversionError(f"{type(msg).__name__} has no field {name!r} (fields: {', '.join(fields)})")
        base, is_array, size = fields[name]
        if isinstance(value, Mapping):
            fill(getattr(msg, name), value, resolve)
        elif is_array and "/" in base:
            cls = resolve(base)
            setattr(msg, name, [fill(cls(), v, resolve) for v in value])
        elif is_array:
            setattr(msg, name, _array(value, base, size, name))
        elif base in ("byte", "octet") and isinstance(value, int):
            setattr(msg, name, bytes([value]))
        else:
            setattr(msg, name, value)
    return msg


def _array(value: Any, base: str, size: int | None, name: str) -> Any:
    code = TYPECODES.get(base)
    if code is None:  # strings, bools: a plain list
        return list(value)
    a = np.ascontiguousarray(np.asarray(value), dtype=np.dtype(code)).reshape(-1)
    if size is not None:
        if a.size != size:
            raise ConversionError(f"field {name!r} needs {size} values, got {a.size}")
        return a
    return array.array(code, a.tobytes())


def to_ros(cls: type, data: Mapping[str, Any], resolve: Callable[[str], type] = message_class) -> Any:
    """A new ``cls`` message filled from ``data``."""
    return fill(cls(), data, resolve)
