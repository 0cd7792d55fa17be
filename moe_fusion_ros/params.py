"""Node parameters: declarations (name, default, type, description, range) and validation, ROS-free.

``config/fusion.yaml`` mirrors :data:`DECLARATIONS` under ``/**:`` → ``ros__parameters:`` (a test keeps them in
sync). The node declares each entry with a ``ParameterDescriptor`` built from it and reads them once into the
frozen :class:`FusionParams`; live changes go through :func:`check_change` (model and device are read-only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moe_fusion_core.embedded import CHECKPOINT_KINDS
from moe_fusion_core.preprocess import MODES, ThermalNormalization

TYPES = {"bool": bool, "int": int, "double": float, "string": str, "double_array": list, "string_array": list}
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter."""

    name: str
    default: Any
    type: str  # bool | int | double | string | double_array | string_array
    description: str
    range: tuple[float, float] | None = None  # inclusive bounds for int/double
    choices: tuple[str, ...] | None = None
    read_only: bool = False

    @property
    def attr(self) -> str:
        """Field name in :class:`FusionParams` (dots become underscores)."""
        return self.name.replace(".", "_")


DECLARATIONS: tuple[ParamSpec, ...] = (
    ParamSpec("model.checkpoint", "", "string", f"{CHECKPOINT_KINDS}; empty = the embedded default model",
              read_only=True),
    ParamSpec("model.device", "cuda:0", "string", "torch device: cuda:N or cpu", read_only=True),
    ParamSpec("model.allow_cpu_fallback", False, "bool", "run on CPU when the CUDA device is unavailable",
              read_only=True),
    ParamSpec("model.precision", "fp32", "string", "inference precision", choices=("fp32", "fp16", "bf16"),
              read_only=True),
    ParamSpec("model.backend", "torch", "string", "inference backend; onnxruntime runs the exported ONNX graph "
              "(model.checkpoint may be a .onnx file)", choices=("torch", "onnxruntime"), read_only=True),
    ParamSpec("model.deploy", True, "bool", "torch backend: static-shape deploy graph (CUDA graphs on GPU); "
              "false = the eager model", read_only=True),
    ParamSpec("model.warmup_iters", 3, "int", "warm-up passes at 640x480 before the first frame", range=(0, 100),
              read_only=True),
    ParamSpec("model.max_side", 0, "int", "scale inputs so the longer side is at most this (0 = native size)",
              range=(0, 8192), read_only=True),
    ParamSpec("model.detections", True, "bool", "run the auxiliary detectors and publish detections"),
    ParamSpec("model.score_threshold", -1.0, "double",
              "minimum detection score, one for every class; negative = the model's own, per class (chosen on its "
              "validation split; `moe-fusion info` lists them)", range=(-1.0, 1.0)),
    ParamSpec("detections.classes", [], "string_array",
              "classes published on fused/detections and drawn on fused/debug_image; empty = every class the "
              "model has (names the model does not have are refused)"),
    ParamSpec("detections.tracking", True, "bool",
              "Detection2D.id carries a track ID kept while the object stays in view (false: empty id)"),
    ParamSpec("sync.slop", 0.02, "double", "max |stamp difference| of a thermal/RGB pair, seconds",
              range=(0.0001, 1.0)),
    ParamSpec("sync.queue_size", 5, "int", "undecided messages kept per input", range=(1, 100)),
    ParamSpec("sync.thermal_offset", 0.0, "double", "seconds added to thermal stamps before matching",
              range=(-10.0, 10.0)),
    ParamSpec("sync.time_jump_s", 0.25, "double",
              "a stamp this much older than its input's newest resets pairing (bag replayed or looped, sim time "
              "reset); smaller backward steps are dropped as out_of_order", range=(0.001, 3600.0)),
    ParamSpec("sync.idle_flush_s", 0.5, "double",
              "when no input message arrived for this long (node clock; also when a bag's /clock stops), the "
              "pairs still waiting are published", range=(0.01, 60.0)),
    ParamSpec("inputs.missing_timeout_s", 0.5, "double",
              "an input silent this long (or 3 of its recent frame intervals, if longer) while the other "
              "streams is reported missing (diagnostics WARN, fused/status)", range=(0.01, 60.0)),
    ParamSpec("inputs.single_modality", True, "bool",
              "while one input is missing, fuse the other alone with the missing image blank (false: publish "
              "nothing until both stream)"),
    ParamSpec("registration.homography", list(IDENTITY), "double_array",
              "3x3 thermal-to-RGB pixel homography, row-major (identity: resize the thermal image to the RGB "
              "size); estimate it with 'moe-fusion register'"),
    ParamSpec("registration.auto", False, "bool",
              "estimate the homography from the incoming pairs and apply it once confident (a low-confidence "
              "estimate is never applied); set it to true again to re-estimate"),
    ParamSpec("registration.auto_max_frames", 10, "int", "registration.auto: pairs tried before giving up",
              range=(1, 1000)),
    ParamSpec("registration.auto_timeout_s", 120.0, "double", "registration.auto: seconds before giving up",
              range=(1.0, 3600.0)),
    ParamSpec("thermal.norm.mode", "percentile", "string", "16-bit/float thermal to 8-bit window",
              choices=MODES),
    ParamSpec("thermal.norm.lo", 0.0, "double", "fixed window low end (raw units)"),
    ParamSpec("thermal.norm.hi", 65535.0, "double", "fixed window high end (raw units)"),
    ParamSpec("thermal.norm.p_lo", 1.0, "double", "percentile window low end", range=(0.0, 100.0)),
    ParamSpec("thermal.norm.p_hi", 99.0, "double", "percentile window high end", range=(0.0, 100.0)),
    ParamSpec("thermal.norm.ema", 0.9, "double", "weight of previous frames' window (0 = per frame)",
              range=(0.0, 0.999)),
    ParamSpec("thermal.invert", False, "bool", "invert thermal grey levels (black-hot to white-hot)"),
    ParamSpec("thermal.max_invalid_fraction", 0.01, "double",
              "a float thermal frame with more NaN/inf pixels than this fraction is skipped (fewer: they are "
              "filled)", range=(0.0, 1.0)),
    ParamSpec("qos.input_reliability", "auto", "string", "input QoS reliability; auto copies the publisher",
              choices=("auto", "best_effort", "reliable"), read_only=True),
    ParamSpec("qos.input_depth", 5, "int", "input subscription history depth", range=(1, 100), read_only=True),
    ParamSpec("processing.mode", "latest", "string", "latest: newest pair only (drops counted); all: every pair",
              choices=("latest", "all"), read_only=True),
    ParamSpec("output.color", False, "bool", "publish the fused image as rgb8 with the visible colours"),
    ParamSpec("output.frame_id", "", "string", "frame_id used when the RGB input's frame_id is empty"),
    ParamSpec("output.debug_image", True, "bool", "publish fused/debug_image (only while subscribed)"),
    ParamSpec("output.gates", True, "bool", "publish the gate weights on fused/gates"),
    ParamSpec("output.class_id", "name", "string", "Detection2D class_id: class name or index",
              choices=("name", "index")),
    ParamSpec("output.camera_info", True, "bool",
              "republish rgb/camera_info as fused/camera_info with each fused image's header"),
    ParamSpec("diagnostics.expected_thermal_hz", 30.0, "double", "expected thermal input rate",
              range=(0.1, 1000.0)),
    ParamSpec("diagnostics.expected_rgb_hz", 25.0, "double", "expected RGB input rate", range=(0.1, 1000.0)),
    ParamSpec("diagnostics.no_pair_warn_s", 1.0, "double", "warn when inputs flow but no pair for this long",
              range=(0.1, 60.0)),
    ParamSpec("autostart", True, "bool", "configure and activate the lifecycle node at start", read_only=True),
    ParamSpec("exit_on_configure_failure", True, "bool",
              "with autostart: a failed configure (e.g. a wrong model.checkpoint) ends the process with exit code "
              "1 after reporting ERROR on /diagnostics (a supervisor or launch respawn sees it); false: stay "
              "unconfigured, reporting the ERROR, and wait for a retry (ros2 lifecycle set ... configure)",
              read_only=True),
)
SPECS: dict[str, ParamSpec] = {s.name: s for s in DECLARATIONS}


@dataclass(frozen=True)
class FusionParams:
    """Validated parameter values (field = parameter name with dots replaced by underscores)."""

    model_checkpoint: str
    model_device: str
    model_allow_cpu_fallback: bool
    model_precision: str
    model_backend: str
    model_deploy: bool
    model_warmup_iters: int
    model_max_side: int
    model_detections: bool
    model_score_threshold: float
    detections_classes: tuple[str, ...]
    detections_tracking: bool
    sync_slop: float
    sync_queue_size: int
    sync_thermal_offset: float
    sync_time_jump_s: float
    sync_idle_flush_s: float
    inputs_missing_timeout_s: float
    inputs_single_modality: bool
    registration_homography: tuple[float, ...]
    registration_auto: bool
    registration_auto_max_frames: int
    registration_auto_timeout_s: float
    thermal_norm_mode: str
    thermal_norm_lo: float
    thermal_norm_hi: float
    thermal_norm_p_lo: float
    thermal_norm_p_hi: float
    thermal_norm_ema: float
    thermal_invert: bool
    thermal_max_invalid_fraction: float
    qos_input_reliability: str
    qos_input_depth: int
    processing_mode: str
    output_color: bool
    output_frame_id: str
    output_debug_image: bool
    output_gates: bool
    output_class_id: str
    output_camera_info: bool
    diagnostics_expected_thermal_hz: float
    diagnostics_expected_rgb_hz: float
    diagnostics_no_pair_warn_s: float
    autostart: bool
    exit_on_configure_failure: bool

    def thermal_normalization(self) -> ThermalNormalization:
        return ThermalNormalization(mode=self.thermal_norm_mode, lo=self.thermal_norm_lo, hi=self.thermal_norm_hi,
                                    p_lo=self.thermal_norm_p_lo, p_hi=self.thermal_norm_p_hi,
                                    ema=self.thermal_norm_ema, invert=self.thermal_invert)

    def score_threshold(self) -> float | None:
        """The detection score threshold, or ``None``: the model's own."""
        return None if self.model_score_threshold < 0 else self.model_score_threshold

    def engine_options(self) -> dict[str, Any]:
        """The ``FusionEngine`` keyword arguments these parameters select, all but the device (the node may fall
        back to the CPU)."""
        return {"checkpoint": self.model_checkpoint, "precision": self.model_precision,
                "detections": self.model_detections, "score_threshold": self.score_threshold(),
                "max_side": self.model_max_side or None, "backend": self.model_backend, "deploy": self.model_deploy}

    def homography(self) -> tuple[float, ...] | None:
        """The registration homography, or ``None`` for the identity (resize only)."""
        return None if self.registration_homography == IDENTITY else self.registration_homography

    def as_dict(self) -> dict[str, Any]:
        return {s.name: _plain(getattr(self, s.attr)) for s in DECLARATIONS}


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def check_value(name: str, value: Any) -> Any:
    """Type- and range-check one value; returns it (ints accepted for doubles are converted)."""
    spec = SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown parameter {name!r}")
    if spec.type == "double_array":
        return _check_homography(name, value)
    if spec.type == "string_array":
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"parameter {name!r} must be a list of strings, got {value!r}")
        return tuple(v for v in value if v.strip())  # ['']: the ros2 CLI's way to send an empty list
    want = TYPES[spec.type]
    if spec.type == "double" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise ValueError(f"parameter {name!r} must be a {spec.type}, got {type(value).__name__} {value!r}"
                         + (" (write 1.0, not 1)" if spec.type == "double" else ""))
    if spec.range is not None and not (spec.range[0] <= value <= spec.range[1]):
        raise ValueError(f"parameter {name!r} = {value} is outside [{spec.range[0]}, {spec.range[1]}]")
    if spec.choices is not None and value not in spec.choices:
        raise ValueError(f"parameter {name!r} must be one of {', '.join(spec.choices)}, got {value!r}")
    return value


def _check_homography(name: str, value: Any) -> tuple[float, ...]:
    """Nine finite numbers of an invertible 3×3 matrix, scaled so that its last element is 1."""
    from moe_fusion_core.registration import as_matrix

    try:
        return tuple(float(x) for x in as_matrix(list(value)).ravel())
    except (TypeError, ValueError) as e:
        raise ValueError(f"parameter {name!r}: {e} (give 9 numbers, a row-major 3x3 matrix; got {value!r})") from e


def validate(values: Mapping[str, Any] | None = None) -> FusionParams:
    """Defaults overridden by ``values`` (dotted names), checked one by one and together."""
    merged = {s.name: check_value(s.name, s.default) for s in DECLARATIONS}
    for k, v in (values or {}).items():
        merged[k] = check_value(k, v)
    p = FusionParams(**{SPECS[k].attr: v for k, v in merged.items()})
    if p.thermal_norm_p_lo >= p.thermal_norm_p_hi:
        raise ValueError(f"thermal.norm.p_lo ({p.thermal_norm_p_lo}) must be below thermal.norm.p_hi "
                         f"({p.thermal_norm_p_hi})")
    if p.thermal_norm_mode == "fixed" and p.thermal_norm_lo >= p.thermal_norm_hi:
        raise ValueError(f"thermal.norm.lo ({p.thermal_norm_lo}) must be below thermal.norm.hi "
                         f"({p.thermal_norm_hi})")
    dev = p.model_device
    if not (dev == "cpu" or dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ValueError(f"model.device must be cpu, cuda or cuda:N, got {dev!r}")
    return p


def check_change(name: str, value: Any, current: FusionParams) -> FusionParams:
    """Validate a live change of one of :data:`DECLARATIONS`; read-only parameters cannot change after start.

    Parameters this module does not declare (``use_sim_time``, ``qos_overrides.*``, ``diagnostic_updater.*``)
    belong to rclpy and are not checked here: see :func:`is_ours`."""
    spec = SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown parameter {name!r}")
    if spec.read_only and _plain(check_value(name, value)) != _plain(getattr(current, spec.attr)):
        raise ValueError(f"parameter {name!r} is read-only while the node is configured: deactivate and clean up "
                         "the node (ros2 lifecycle set), set it, then configure again")
    return validate({**current.as_dict(), name: value})


def is_ours(name: str) -> bool:
    """Whether ``name`` is one of this package's parameters (others belong to rclpy or its helpers)."""
    return name in SPECS


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested YAML mapping → dotted names."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def load_params_file(path: str | Path) -> dict[str, Any]:
    """The dotted parameters of a ROS 2 params YAML under ``/**:`` → ``ros__parameters:``."""
    import yaml

    p = Path(path)
    data = yaml.safe_load(p.read_text())
    if not isinstance(data, Mapping) or "/**" not in data:
        raise ValueError(f"{p}: expected a top-level '/**:' key (matches any node name and namespace)")
    node = data["/**"]
    if not isinstance(node, Mapping) or not isinstance(node.get("ros__parameters"), Mapping):
        raise ValueError(f"{p}: expected '/**:' → 'ros__parameters:' mapping")
    return flatten(node["ros__parameters"])


def params_yaml() -> str:
    """``config/fusion.yaml`` text generated from :data:`DECLARATIONS` (defaults, with descriptions)."""
    lines = ["/**:", "  ros__parameters:"]
    tree: dict[str, Any] = {}
    for s in DECLARATIONS:
        node = tree
        *parents, leaf = s.name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = s

    def emit(node: dict[str, Any], indent: int) -> None:
        for k, v in node.items():
            pad = " " * indent
            if isinstance(v, ParamSpec):
                val = {True: "true", False: "false"}.get(v.default, v.default) if v.type == "bool" else v.default
                if v.type == "string":
                    val = f'"{v.default}"'
                elif v.type == "double_array":
                    val = "[" + ", ".join(f"{x:.1f}" for x in v.default) + "]"
                elif v.type == "string_array":
                    val = "[" + ", ".join(f'"{x}"' for x in v.default) + "]"
                extra = f" [{v.range[0]}, {v.range[1]}]" if v.range else ""
                extra += f" ({' | '.join(v.choices)})" if v.choices else ""
                extra += "; read-only" if v.read_only else ""
                lines.append(f"{pad}{k}: {val}  # {v.description}{extra}")
            else:
                lines.append(f"{pad}{k}:")
                emit(v, indent + 2)

    emit(tree, 4)
    return "\n".join(lines) + "\n"

