"""ONNX export of the deploy graph (:class:`~moe_fusion_core.model.deploy.DeployFusion`) and its runtime session.

Graph contract (opset 17):

- inputs ``ir`` and ``vis``: float32 N×1×H×W in [0, 1], the visible image as BT.601 luma; ``vis_rgb`` N×3×H×W
  only for configs whose visible detector reads RGB (``detector.rgb_visible``);
- outputs ``fused`` (N×1×H×W, raw: clamp to [0, 1] to save), ``gates_mole_fg``, ``gates_mole_bg``,
  ``gates_moge`` (N×experts, fp32; those the config has) and, unless fused-only, ``boxes`` (D×4, x1 y1 x2 y2 in
  input pixels), ``scores`` (D) and ``labels`` (D, 1-based class index): both detectors' detections (each
  detector's own class-wise NMS applied), D varying per image; N must be 1 with detections. The published set,
  one box per object, is these merged by :func:`~moe_fusion_core.model.merge.merge_detections` with the
  config's ``detector.merge_iou_thresh`` / ``merge_containment_thresh`` (a greedy loop over boxes, kept out of
  the graph: ONNX has no op for it). :class:`~moe_fusion_core.engine.FusionEngine` applies it; a TensorRT
  runtime applies it on the host.
- the model's config is stored in the ONNX metadata (``moe_fusion_config``, JSON), so a runtime needs no
  checkpoint beside the file. An INT8 graph (:func:`quantize_onnx`) has the same contract and also
  ``moe_fusion_quantization`` (e.g. ``int8-qdq-per-channel-w7-fp32tail``, :func:`quant_label`).

The TorchScript-based exporter is used: torchvision's RPN and RoI heads (proposal filtering, NMS) export through
it, not through ``torch.export`` (their box counts are data-dependent). ``dynamic=True`` leaves height and width
free (any size; inputs are padded to a multiple of 32 inside the graph); the batch size is fixed at export.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config
from .model.deploy import DeployFusion

OPSET = 17
CONFIG_KEY = "moe_fusion_config"
QUANT_KEY = "moe_fusion_quantization"
GRAPH_VERSION = 2  # 2: detections before the cross-detector merge (the cache key changes with it)
GATE_OUTPUTS = ("mole_fg", "mole_bg", "moge")


class ExportGraph(nn.Module):
    """Tensor-in / tensor-out wrapper of :class:`DeployFusion` with the graph contract of the module docstring."""

    def __init__(self, deploy: DeployFusion, detections: bool) -> None:
        super().__init__()
        self.deploy = deploy
        self.detections = detections
        self.gate_names = [k for k in GATE_OUTPUTS if _has_gate(deploy, k)]

    def forward(self, ir: torch.Tensor, vis: torch.Tensor, vis_rgb: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, ...]:
        out = self.deploy(ir, vis, vis_rgb, features=self.detections)
        res = (out.fused, *(out.gates[k] for k in self.gate_names))
        if self.detections:
            det = self.deploy.detect(out.features, (ir.shape[-2], ir.shape[-1]), merge=False)[0]
            res += (det["boxes"], det["scores"], det["labels"])
        return res


def _has_gate(deploy: DeployFusion, name: str) -> bool:
    return (name == "moge" and hasattr(deploy, "moge")) or (name != "moge" and deploy.local_mode == "mole")


def export_onnx(model: nn.Module, cfg: Config, out: str | Path, *, fused_only: bool = False,
                size: tuple[int, int] = (640, 480), batch: int = 1, dynamic: bool = False,
                moe: str = "gather") -> Path:
    """Write the deploy graph of ``model`` (eval, fp32) as ONNX to ``out`` atomically; returns the path.

    ``size`` is (width, height) of the traced example (the graph's fixed size unless ``dynamic``).
    """
    out = Path(out)
    detections = not fused_only and getattr(model, "detectors", None) is not None
    if detections and batch != 1:
        raise ValueError(f"an ONNX graph with detections takes one pair per call (batch 1), got batch {batch}; "
                         "use --fused-only for batched graphs")
    w, h = size
    if w < 32 or h < 32:
        raise ValueError(f"export size must be at least 32x32, got {w}x{h}")
    model = model.float().eval().cpu()
    deploy = DeployFusion(model, moe=moe)
    deploy.export = "dynamic" if dynamic else "static"
    graph = ExportGraph(deploy, detections).eval()
    gen = torch.Generator().manual_seed(0)
    ir, vis = torch.rand(batch, 1, h, w, generator=gen), torch.rand(batch, 1, h, w, generator=gen)  # two tensors:
    args: tuple[torch.Tensor, ...] = (ir, vis)  # an exporter would merge one tensor passed twice into one input
    inputs = ["ir", "vis"]
    if cfg.model.detector is not None and cfg.model.detector.rgb_visible:
        args += (torch.rand(batch, 3, h, w, generator=gen),)
        inputs.append("vis_rgb")
    outputs = ["fused", *(f"gates_{k}" for k in graph.gate_names)]
    if detections:
        outputs += ["boxes", "scores", "labels"]
    axes = {name: {2: "height", 3: "width"} for name in [*inputs, "fused"]} if dynamic else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on torchvision's shape arithmetic
            torch.onnx.export(graph, args, str(tmp), input_names=inputs, output_names=outputs,
                              opset_version=OPSET, dynamic_axes=axes, dynamo=False)
        _set_metadata(tmp, {CONFIG_KEY: json.dumps(cfg.to_dict())})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _set_metadata(path: Path, values: dict[str, str]) -> None:
    """Set (or replace) metadata entries of the ONNX file at ``path`` in place."""
    import onnx

    proto = onnx.load(str(path))
    kept = [(m.key, m.value) for m in proto.metadata_props if m.key not in values]
    del proto.metadata_props[:]
    for key, value in [*kept, *values.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def calibration_pairs(folder: Path, limit: int) -> list[tuple[Path, Path]]:
    """Up to ``limit`` (infrared, visible) files of ``folder`` (``ir/`` + ``vis/``, paired by stem as
    ``moe-fusion fuse`` pairs them), evenly spaced over the sorted stems."""
    from .image_io import pair_by_stem

    if limit < 1:
        raise ValueError(f"--calibrate-pairs must be at least 1, got {limit}")
    if not folder.is_dir():
        raise FileNotFoundError(f"--calibrate {folder}: not a folder")
    for side in ("ir", "vis"):
        if not (folder / side).is_dir():
            raise FileNotFoundError(f"--calibrate {folder}: no {side}/ folder (expected ir/ and vis/ images "
                                    "paired by file stem)")
    pairs = pair_by_stem([folder / "ir", folder / "vis"], ["ir", "vis"]).pairs
    if not pairs:
        raise ValueError(f"--calibrate {folder}: no ir/vis pairs (files in ir/ and vis/ pair by stem)")
    return [(ir, vis) for _, (ir, vis) in pairs[::max(1, len(pairs) // limit)][:limit]]


def calibration_feeds(graph: Path, pairs: Sequence[tuple[Path, Path]], size: tuple[int, int]
                      ) -> list[dict[str, Any]]:
    """The inputs of ``graph`` for each (infrared, visible) file pair, resized to ``size`` (W, H) and prepared
    as :class:`~moe_fusion_core.engine.FusionEngine` prepares a pair for ``graph``."""
    import cv2

    from .engine import FusionEngine
    from .image_io import read_ir, read_vis

    engine = FusionEngine(graph, device="cpu", backend="onnxruntime", detections=False)
    feeds = []
    for ir_path, vis_path in pairs:
        ir, vis = (cv2.resize(read(f), size, interpolation=cv2.INTER_AREA)
                   for read, f in ((read_ir, ir_path), (read_vis, vis_path)))
        feeds.append(engine.feeds([(ir, vis)]))
    return feeds


def quant_options(per_channel: bool = True) -> dict[str, Any]:
    """The ``quantize_static`` arguments of :func:`quantize_onnx` but the calibration reader and the excluded
    nodes (:func:`output_tail`); :func:`cached_quantized` hashes them, so a change here re-quantizes cached graphs."""
    from onnxruntime.quantization import QuantFormat, QuantType

    return {"quant_format": QuantFormat.QDQ, "per_channel": per_channel, "reduce_range": True,
            "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8,
            "extra_options": {"WeightSymmetric": True, "ActivationSymmetric": False}}


def quant_label(per_channel: bool = True) -> str:
    """The ``moe_fusion_quantization`` metadata of a graph from :func:`quantize_onnx`: 8-bit QDQ, 7-bit weights
    (``w7``), the fused image's tail in fp32. Graphs quantized before the 7-bit weights say
    ``int8-qdq[-per-channel]``."""
    return f"int8-qdq{'-per-channel' if per_channel else ''}-w7-fp32tail"


WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def output_tail(graph: Path, output: str = "fused") -> list[str]:
    """Names of the nodes that compute ``output`` from the last weighted layers (convolutions, matmuls) of
    ``graph``: MoGE's expert combination and the crop, element-wise work on a few channels. Quantizing their
    outputs to 8 bits coarsens the fused image itself (a step of 1.6 grey levels over its calibrated range, EN −11 %),
    so they stay fp32."""
    import onnx

    proto = onnx.load(str(graph), load_external_data=False)
    producer = {o: n for n in proto.graph.node for o in n.output}
    tail: list[str] = []
    todo, seen = [output], set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen or node.op_type in WEIGHTED_OPS:
            continue
        seen.add(node.name)
        tail.append(node.name)
        todo.extend(node.input)
    return tail


def quantize_onnx(graph: Path, out: Path, feeds: Sequence[dict[str, Any]], per_channel: bool = True) -> Path:
    """ONNX Runtime static quantization of an exported fp32 ``graph`` into ``out`` (atomically): QDQ format,
    8-bit activations (asymmetric, MinMax ranges over ``feeds``) and weights (symmetric, per output channel when
    ``per_channel``) in 7 bits (``reduce_range``): x86 CPUs with AVX2 but without VNNI multiply u8 × s8 pairs
    into saturating 16-bit sums, which full 8-bit weights overflow (on such a CPU the default model's graph was
    off by 5–11 grey levels on average, with stripes at the borders; with 7-bit weights ≤ 1.3 on four of the five
    sample pairs, docs/benchmarks.md, INT8). The fused image's last element-wise steps stay fp32
    (:func:`output_tail`). The config metadata is kept and ``moe_fusion_quantization`` added."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.items, None)

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        quantize_static(str(graph), str(tmp), Reader(), nodes_to_exclude=output_tail(graph),
                        **quant_options(per_channel))
        _set_metadata(tmp, {QUANT_KEY: quant_label(per_channel)})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def cached_quantized(graph: Path, pairs: Sequence[tuple[Path, Path]], size: tuple[int, int]) -> Path:
    """The INT8 graph (:func:`quantize_onnx`) of an exported fp32 ``graph`` calibrated on ``pairs`` at ``size``
    (W, H), quantized once and kept beside ``graph``: its name holds a hash of the calibration files' contents and
    order, the size and the onnxruntime version, so other calibration data quantizes again."""
    import onnxruntime

    settings = f"{sorted(quant_options().items())} {quant_label()}"
    digest = hashlib.sha256(f"{size} {onnxruntime.__version__} {settings}".encode())
    for ir, vis in pairs:
        digest.update(ir.read_bytes())
        digest.update(vis.read_bytes())
    out = graph.with_name(f"{graph.stem}-int8-{digest.hexdigest()[:16]}.onnx")
    if not out.is_file():
        quantize_onnx(graph, out, calibration_feeds(graph, pairs, size))
    return out


EXPORT_DEFAULTS: dict[str, Any] = {"size": (640, 480), "batch": 1, "dynamic": True, "moe": "gather"}


def cache_paths(checkpoint: Path, variants: Sequence[bool], cache_dir: Path | None = None, **options: Any
                ) -> dict[bool, Path]:
    """Where :func:`cached_exports` keeps each graph: the name holds the weights' hash, the variant and a hash of
    everything else the graph depends on: the checkpoint's config (it rides in the graph's metadata), every
    :func:`export_onnx` option (``options`` over :data:`EXPORT_DEFAULTS`), the graph version, opset and torch."""
    from .checkpoint import MODEL_FILE, read_config

    unknown = set(options) - set(EXPORT_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown export option(s) {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(EXPORT_DEFAULTS)}")
    opts = {**EXPORT_DEFAULTS, **options}
    weights = checkpoint / MODEL_FILE if checkpoint.is_dir() else checkpoint
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    root = cache_dir or Path(os.environ.get("MOE_FUSION_CACHE", Path.home() / ".cache" / "moe_fusion")) / "onnx"
    cfg = read_config(checkpoint).to_dict()
    paths = {}
    for fused_only in variants:
        spec = json.dumps({"config": cfg, "fused_only": fused_only, "options": opts, "graph": GRAPH_VERSION,
                           "opset": OPSET, "torch": torch.__version__}, sort_keys=True, default=list)
        key = hashlib.sha256(spec.encode()).hexdigest()[:16]
        paths[fused_only] = root / f"{digest}-{'fused' if fused_only else 'det'}-{key}.onnx"
    return paths


def cached_exports(checkpoint: Path, variants: Sequence[bool], cache_dir: Path | None = None, **options: Any
                   ) -> dict[bool, Path]:
    """The ONNX graphs (by default dynamic height/width) of a checkpoint, fused-only (``True``) and/or with
    detections (``False``) as ``variants`` asks, exported once into a cache folder (``$MOE_FUSION_CACHE`` or
    ``~/.cache/moe_fusion/onnx``) under :func:`cache_paths`' names: a change of the weights, the config or any
    export option exports again instead of reusing a stale graph."""
    from .checkpoint import load_model

    paths = cache_paths(checkpoint, variants, cache_dir, **options)
    missing = [f for f, p in paths.items() if not p.is_file()]
    if missing:
        model, cfg = load_model(checkpoint)
        for fused_only in missing:
            export_onnx(model, cfg, paths[fused_only], fused_only=fused_only, **{**EXPORT_DEFAULTS, **options})
    return paths


class OnnxSession:
    """An ONNX Runtime session on an exported graph: numpy in, dict of numpy outputs by name."""

    def __init__(self, path: str | Path, device: torch.device, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ValueError("backend 'onnxruntime' needs the onnxruntime package (pip install onnxruntime, or "
                             "onnxruntime-gpu for CUDA)") from e
        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError("backend 'onnxruntime' on CUDA needs onnxruntime-gpu (CUDAExecutionProvider is "
                                 f"not available; have {ort.get_available_providers()})")
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        config = meta.get(CONFIG_KEY)
        if config is None:
            raise ValueError(f"{path}: no {CONFIG_KEY} metadata (not exported by `moe-fusion export --onnx`)")
        self.config = Config.from_dict(json.loads(config))
        self.quantization = meta.get(QUANT_KEY)  # None: the fp32 graph
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.has_detections = "boxes" in self.outputs
        dim = self.session.get_inputs()[0].shape[0]
        self.batch = dim if isinstance(dim, int) else None  # fixed batch size of the graph, None = free

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        values = self.session.run(None, {k: v for k, v in feeds.items() if k in self.inputs})
        return dict(zip(self.outputs, values))


# ---------------------------------------------------------------- ``moe-fusion export --onnx``
def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` → (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size expects WIDTHxHEIGHT (e.g. 640x480), got {text!r}") from None
    return w, h
