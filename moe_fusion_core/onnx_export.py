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
  checkpoint beside the file.

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
        import onnx

        proto = onnx.load(str(tmp))
        meta = proto.metadata_props.add()
        meta.key, meta.value = CONFIG_KEY, json.dumps(cfg.to_dict())
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
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
        config = self.session.get_modelmeta().custom_metadata_map.get(CONFIG_KEY)
        if config is None:
            raise ValueError(f"{path}: no {CONFIG_KEY} metadata (not exported by `moe-fusion export --onnx`)")
        self.config = Config.from_dict(json.loads(config))
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
