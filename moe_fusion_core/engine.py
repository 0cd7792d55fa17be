"""``FusionEngine``: numpy images in, fused image + detections + gate weights out.

Input policy (what a robotics user can hand it):
- infrared: H×W (or H×W×1, or H×W×3 with equal channels: channel 0) as ``uint8`` (used as is), ``uint16`` or
  ``float32`` (radiometric / raw counts: normalised to 8 bits by :class:`~moe_fusion_core.preprocess.ThermalNormalizer`,
  default percentile 1–99 window, stateless per frame; pass your own normaliser for streams).
- visible: H×W×3 RGB (``vis_order="bgr"`` for OpenCV arrays) or H×W grey, ``uint8`` (``uint16`` is scaled down).
- sizes: outputs are at the visible image's size. An infrared image of another size is resized to the visible
  size (``mismatch="resize"``, bilinear; valid for registered cameras with the same field of view) or rejected
  (``mismatch="error"``). The network runs at the native size (padded to a multiple of 32, cropped back; the
  aspect ratio is never distorted); ``max_side`` optionally scales both down first, keeping the aspect ratio.
- empty, zero-size, NaN/inf-only or wrongly shaped inputs raise ``ValueError`` naming the problem.

Execution (same outputs within float tolerance; docs/benchmarks.md has the timings):
- ``backend="torch"``, ``deploy=True`` (default): the static-shape deploy graph
  (:class:`~moe_fusion_core.model.deploy.DeployFusion`: mixtures without host syncs, paired backbones and
  encoders, fused-only work cut to what the fused image needs); on CUDA it is captured in one CUDA graph per
  input size and replayed (``cuda_graphs``). ``deploy=False``: the eager training model.
- ``backend="onnxruntime"``: an exported graph (``checkpoint`` an ``.onnx`` file from ``moe-fusion export --onnx``,
  or a checkpoint that is exported once into a cache) run by ONNX Runtime; fp32 only. An INT8 graph
  (``moe-fusion export --onnx OUT --int8 --calibrate DIR``) is such a file too: the engine reads its quantization
  from the graph's metadata (``quantization``), nothing else changes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from .checkpoint import load_model
from .config import Config, check_score_thresholds
from .embedded import EMBEDDED_MODELS, resolve_checkpoint
from .image_io import rgb_to_luma, to_8bit

DEFAULT_MODEL_DIR = EMBEDDED_MODELS["default"]
BACKENDS = ("torch", "onnxruntime")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GATE_NAMES = ("mole_fg", "mole_bg", "moge")


@dataclass
class Detection:
    """One detected object, in the visible image's pixel frame."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    class_id: int  # 0-based index into FusionEngine.class_names
    class_name: str
    score: float
    track_id: int | None = None  # set by moe_fusion_core.tracking when tracking is on


@dataclass
class FusionResult:
    """Everything the engine produces for one pair."""

    fused: np.ndarray  # H×W uint8, the visible image's size
    color: np.ndarray | None  # H×W×3 uint8 RGB (visible chrominance, fused luminance) when asked for
    detections: list[Detection]
    gates: dict[str, np.ndarray]  # 'mole_fg', 'mole_bg', 'moge' -> (num_experts,) float32
    timings_ms: dict[str, float] = field(default_factory=dict)


def default_checkpoint() -> Path:
    """The embedded default model shipped inside the package."""
    return DEFAULT_MODEL_DIR


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` → CUDA when available, else CPU; an unavailable CUDA device is a clear error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available (torch {torch.__version__})")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return d


def color_fusion(fused: np.ndarray, vis_rgb: np.ndarray) -> np.ndarray:
    """Visible chrominance with the fused image as luminance (BT.601 YCrCb, spec §1.4)."""
    ycc = cv2.cvtColor(np.ascontiguousarray(vis_rgb), cv2.COLOR_RGB2YCrCb)
    ycc[:, :, 0] = fused
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)


def to_uint8(fused: torch.Tensor) -> np.ndarray:
    """Raw network output → saved image: clamp to [0,1], ×255, round."""
    return (fused.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


class FusionEngine:
    """Loads a checkpoint once and fuses infrared/visible pairs (see the module docstring for the input policy).

    ``checkpoint``: a model folder, a .safetensors (or, with onnxruntime, .onnx) file, or an embedded model's name
    (``default``, ``fast``); ``None``: the default model (:func:`~moe_fusion_core.embedded.resolve_checkpoint`)."""

    def __init__(self, checkpoint: str | Path | None = None, device: str | torch.device | None = None,
                 precision: str = "fp32", detections: bool = True, compile: bool = False, warmup: int = 0,
                 channels_last: bool = True, score_threshold: float | None = None, mismatch: str = "resize",
                 max_side: int | None = None, thermal_normalizer: object | None = None, backend: str = "torch",
                 deploy: bool = True, moe: str = "auto", cuda_graphs: bool = True) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if mismatch not in ("resize", "error"):
            raise ValueError(f"mismatch must be 'resize' or 'error', got {mismatch!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if moe not in ("auto", "gather", "dense"):
            raise ValueError(f"moe must be auto, gather or dense, got {moe!r}")
        self.device = resolve_device(device)
        if precision == "fp16" and self.device.type == "cpu":
            raise ValueError("fp16 needs a CUDA device; use fp32 or bf16 on CPU")
        if backend == "onnxruntime" and precision != "fp32":
            raise ValueError(f"backend 'onnxruntime' runs the exported fp32 graph; got precision {precision!r} "
                             "(for half precision build a TensorRT engine: docs/benchmarks.md)")
        path = resolve_checkpoint(checkpoint)
        self.checkpoint = path
        self.backend = backend
        self.precision = precision
        self.autocast_dtype = PRECISIONS[precision]
        self.mismatch = mismatch
        self.max_side = max_side
        if thermal_normalizer is None:
            from .preprocess import ThermalNormalizer, default_thermal_normalization

            thermal_normalizer = ThermalNormalizer(default_thermal_normalization())
        self.thermal_normalizer = thermal_normalizer
        self.model = None
        self.deploy = None
        self.quantization: str | None = None  # e.g. 'int8-qdq-per-channel-w7-fp32tail' for a quantized ONNX graph
        self._sessions: dict[bool, object] = {}
        self._graphs: dict[tuple, tuple] = {}
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda" and deploy and not compile
        # gathered top-K kernels: the sparse FLOPs without host syncs; faster than dense on CPU
        # (docs/benchmarks.md); on CUDA both are launch-equal and gather does half the expert FLOPs
        self.moe = "gather" if moe == "auto" else moe
        if backend == "onnxruntime":
            self._init_onnxruntime(path, detections)
        elif path.suffix == ".onnx":
            raise ValueError(f"{path} is an ONNX graph: run it with backend 'onnxruntime' (node: "
                             "model.backend:=onnxruntime)")
        else:
            self.model, self.config = load_model(path, self.device)
            self.model.eval()
            self.has_detectors = self.model.detectors is not None
            if channels_last and self.device.type == "cuda":
                self.model.to(memory_format=torch.channels_last)
            if deploy:
                from .model.deploy import DeployFusion

                self.deploy = DeployFusion(self.model, moe=self.moe)
                if channels_last and self.device.type == "cuda":
                    self.deploy.to(memory_format=torch.channels_last)
            target = self.deploy if deploy else self.model
            self._forward = torch.compile(target, dynamic=True) if compile else target
        self.path = "onnxruntime" if backend == "onnxruntime" else ("deploy" if deploy else "eager")
        self.detections = detections and self.has_detectors
        det_cfg = self.config.model.detector
        self.default_score_threshold = det_cfg.score_threshold if det_cfg is not None else 0.3
        self.score_thresholds = check_score_thresholds(det_cfg.score_thresholds if det_cfg is not None else {},
                                                       self.class_names)
        self.score_threshold = score_threshold  # None: the model's own, per class
        if warmup:
            self.warmup(warmup)

    def _init_onnxruntime(self, path: Path, detections: bool) -> None:
        from .onnx_export import OnnxSession, cached_exports

        if path.suffix == ".onnx":
            if not path.is_file():
                raise FileNotFoundError(f"ONNX model {path} not found")
            sess = OnnxSession(path, self.device)
            self._sessions = {sess.has_detections: sess}
        else:  # a torch checkpoint: export it once (dynamic height/width) into the cache
            from .checkpoint import read_config

            has_det = read_config(path).model.detector is not None
            graphs = cached_exports(path, (True, False) if detections and has_det else (True,), moe=self.moe)
            self._sessions = {not fused_only: OnnxSession(p, self.device) for fused_only, p in graphs.items()}
        self.config = next(iter(self._sessions.values())).config
        self.quantization = next(iter(self._sessions.values())).quantization
        self.has_detectors = any(self._sessions)

    @property
    def cfg(self) -> Config:
        return self.config

    @property
    def class_names(self) -> list[str]:
        return list(self.config.model.class_names)

    def threshold_for(self, class_name: str) -> float:
        """The published minimum score of a class: the caller's single threshold if set, else the model's own
        (``detector.score_thresholds``, else ``detector.score_threshold``)."""
        if self.score_threshold is not None:
            return self.score_threshold
        return self.score_thresholds.get(class_name, self.default_score_threshold)

    # ---------------------------------------------------------------- input handling
    def prepare(self, ir: np.ndarray, vis: np.ndarray, vis_order: str = "rgb"
                ) -> tuple[np.ndarray, np.ndarray]:
        """Validate and convert one pair to (IR uint8 H×W, visible RGB uint8 H×W×3) at the visible size."""
        vis = np.asarray(vis)
        ir = np.asarray(ir)
        if vis.size == 0 or ir.size == 0:
            raise ValueError(f"empty image (infrared {ir.shape}, visible {vis.shape})")
        if vis.ndim == 3 and vis.shape[2] == 4:
            vis = vis[:, :, :3]
        if vis.ndim == 2:
            vis = np.repeat(vis[:, :, None], 3, axis=2)
        if vis.ndim != 3 or vis.shape[2] != 3:
            raise ValueError(f"visible image must be H×W×3 or H×W, got shape {vis.shape}")
        if vis.dtype == np.uint16:
            vis = to_8bit(vis)
        elif vis.dtype != np.uint8:
            if not np.isfinite(vis).all():
                raise ValueError("visible image contains NaN or inf")
            vis = np.clip(np.asarray(vis, np.float32) * (255.0 if vis.max() <= 1.0 else 1.0) + 0.5, 0, 255
                          ).astype(np.uint8)
        if vis_order == "bgr":
            vis = vis[:, :, ::-1]
        elif vis_order != "rgb":
            raise ValueError(f"vis_order must be 'rgb' or 'bgr', got {vis_order!r}")
        vis = np.ascontiguousarray(vis)
        if ir.ndim == 3 and ir.shape[2] in (1, 3, 4):
            ir = ir[:, :, 0]
        if ir.ndim != 2:
            raise ValueError(f"infrared image must be H×W (or H×W×1/3), got shape {ir.shape}")
        if ir.dtype != np.uint8:
            if np.issubdtype(ir.dtype, np.floating) and not np.isfinite(ir).any():
                raise ValueError("infrared image has no finite pixel (all NaN/inf)")
            ir = self.thermal_normalizer(ir)
        if ir.shape != vis.shape[:2]:
            if self.mismatch == "error":
                raise ValueError(f"size mismatch: infrared {ir.shape[1]}×{ir.shape[0]} vs visible "
                                 f"{vis.shape[1]}×{vis.shape[0]} (mismatch='resize' resamples the infrared image)")
            ir = cv2.resize(ir, (vis.shape[1], vis.shape[0]), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(ir), vis

    def _scale(self, h: int, w: int) -> float:
        if self.max_side is None or max(h, w) <= self.max_side:
            return 1.0
        return self.max_side / max(h, w)

    def _tensors(self, irs: Sequence[np.ndarray], viss: Sequence[np.ndarray]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, w = viss[0].shape[:2]
        s = self._scale(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        ir_b, vis_b, rgb_b = [], [], []
        for ir, vis in zip(irs, viss):
            if s != 1.0:
                ir = cv2.resize(ir, size, interpolation=cv2.INTER_AREA)
                vis = cv2.resize(vis, size, interpolation=cv2.INTER_AREA)
            ir_b.append(ir)
            vis_b.append(rgb_to_luma(vis))
            rgb_b.append(vis)
        dev = self.device
        ir_t = torch.from_numpy(np.stack(ir_b)[:, None]).to(dev).float().div_(255)
        vis_t = torch.from_numpy(np.stack(vis_b)[:, None]).to(dev).float().div_(255)
        rgb_t = torch.from_numpy(np.stack(rgb_b)).to(dev).permute(0, 3, 1, 2).float().div_(255)
        return ir_t, vis_t, rgb_t

    # ---------------------------------------------------------------- inference
    @torch.inference_mode()
    def fuse_batch(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]], *, color: bool = False,
                   detections: bool | None = None, vis_order: str = "rgb") -> list[FusionResult]:
        """Fuse several pairs in one forward pass. All visible images must share one size."""
        if not pairs:
            return []
        want_det = self.detections if detections is None else (detections and self.has_detectors)
        t0 = time.perf_counter()
        prepared = [self.prepare(ir, vis, vis_order) for ir, vis in pairs]
        sizes = {v.shape[:2] for _, v in prepared}
        if len(sizes) != 1:
            raise ValueError(f"fuse_batch needs pairs of one visible size, got {sorted(sizes)}; call fuse() per pair")
        irs, viss = [p[0] for p in prepared], [p[1] for p in prepared]
        ir_t, vis_t, rgb_t = self._tensors(irs, viss)
        t1 = time.perf_counter()
        if self.backend == "onnxruntime":
            fused, gates, dets = self._run_onnxruntime(ir_t, vis_t, rgb_t, want_det)
        else:
            fused, gates, dets = self._run_torch(ir_t, vis_t, rgb_t, want_det)
        h, w = viss[0].shape[:2]
        if fused.shape[-2:] != (h, w):
            fused = torch.nn.functional.interpolate(fused.float(), size=(h, w), mode="bilinear", align_corners=False)
        fused_np = to_uint8(fused[:, 0])
        t2 = time.perf_counter()
        scale_back = w / ir_t.shape[-1], h / ir_t.shape[-2]
        results = []
        for b in range(len(prepared)):
            results.append(FusionResult(
                fused=fused_np[b],
                color=color_fusion(fused_np[b], viss[b]) if color else None,
                detections=self._detections(dets[b], scale_back, (w, h)) if dets is not None else [],
                gates={k: gates[k][b] for k in GATE_NAMES if k in gates},
            ))
        t3 = time.perf_counter()
        n = len(prepared)
        timings = {"preprocess": (t1 - t0) * 1e3 / n, "inference": (t2 - t1) * 1e3 / n,
                   "postprocess": (t3 - t2) * 1e3 / n}
        for r in results:
            r.timings_ms = dict(timings, total=sum(timings.values()))
        return results

    def _autocast(self, **kw: bool) -> torch.autocast:
        """Mixed precision on this engine's device for fp16/bf16 (a no-op context for fp32)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.precision != "fp32", **kw)

    def _run_torch(self, ir_t: torch.Tensor, vis_t: torch.Tensor, rgb_t: torch.Tensor, want_det: bool
                   ) -> tuple[torch.Tensor, dict[str, np.ndarray], list[dict[str, torch.Tensor]] | None]:
        if self.deploy is None:
            with self._autocast():
                out = self._forward(ir_t, vis_t, vis_rgb=rgb_t, need_detections=want_det)
            gates = {k: g.gates.float().cpu().numpy() for k, g in out.gates.items()}
            dets = out.detections if (want_det and out.detections is not None) else None
            fused = out.fused
        else:
            if self.cuda_graphs:
                out = self._graph_forward(ir_t, vis_t, rgb_t, want_det)
            else:
                with self._autocast():
                    out = self._forward(ir_t, vis_t, rgb_t, features=want_det)
            fused = out.fused.clone() if self.cuda_graphs else out.fused  # graph outputs are reused buffers
            gates = {k: g.float().cpu().numpy() for k, g in out.gates.items()}
            dets = None
            if want_det:
                with self._autocast():
                    dets = self.deploy.detect(out.features, tuple(ir_t.shape[-2:]))
        if dets is not None:
            dets = [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in d.items()} for d in dets]
        return fused, gates, dets

    def _graph_forward(self, ir_t: torch.Tensor, vis_t: torch.Tensor, rgb_t: torch.Tensor, features: bool):
        """The deploy graph captured once per (batch, size, features) in a CUDA graph, then replayed."""
        key = (tuple(ir_t.shape), features)
        entry = self._graphs.get(key)
        if entry is None:
            static = (ir_t.clone(), vis_t.clone(), rgb_t.clone())

            def run():
                # no autocast weight cache: a captured graph must not hold casts made outside it
                with self._autocast(cache_enabled=False):
                    return self.deploy(*static, features=features)

            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # cuDNN autotune and allocator warm-up outside the capture
                    run()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = run()
            entry = self._graphs[key] = (graph, static, out)
        graph, static, out = entry
        for dst, src in zip(static, (ir_t, vis_t, rgb_t)):
            dst.copy_(src)
        graph.replay()
        return out

    @staticmethod
    def _onnx_feeds(ir_t: torch.Tensor, vis_t: torch.Tensor, rgb_t: torch.Tensor) -> dict[str, np.ndarray]:
        return {"ir": ir_t.cpu().numpy(), "vis": vis_t.cpu().numpy(), "vis_rgb": rgb_t.cpu().numpy()}

    def feeds(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]], vis_order: str = "rgb") -> dict[str, np.ndarray]:
        """Pairs of one visible size as the network's inputs, by the ONNX graph's input names (float32 N×C×H×W
        in [0, 1]; on an ONNX Runtime engine only the inputs its graph has): what ONNX Runtime is fed, e.g. to
        calibrate."""
        prepared = [self.prepare(ir, vis, vis_order) for ir, vis in pairs]
        feeds = self._onnx_feeds(*self._tensors([p[0] for p in prepared], [p[1] for p in prepared]))
        if self._sessions:  # an ONNX Runtime engine: only its graph's inputs
            inputs = next(iter(self._sessions.values())).inputs
            feeds = {k: v for k, v in feeds.items() if k in inputs}
        return feeds

    def _run_onnxruntime(self, ir_t: torch.Tensor, vis_t: torch.Tensor, rgb_t: torch.Tensor, want_det: bool
                         ) -> tuple[torch.Tensor, dict[str, np.ndarray], list[dict[str, torch.Tensor]] | None]:
        sess = self._sessions.get(want_det) or self._sessions.get(True)
        feeds = self._onnx_feeds(ir_t, vis_t, rgb_t)
        batch = ir_t.shape[0]
        if sess.batch not in (None, 1, batch):
            raise ValueError(f"{sess.path} was exported for batch {sess.batch}, got {batch} pairs")
        per_pair = sess.batch == 1 and batch > 1  # e.g. graphs with detections take one pair per call
        runs = ([sess.run({k: v[b:b + 1] for k, v in feeds.items()}) for b in range(batch)] if per_pair
                else [sess.run(feeds)])
        fused = torch.from_numpy(np.concatenate([r["fused"] for r in runs]))
        gates = {k: np.concatenate([r[f"gates_{k}"] for r in runs]) for k in GATE_NAMES if f"gates_{k}" in runs[0]}
        dets = None
        if want_det:  # the graph returns both detectors' boxes; one box per object, as the torch path merges them
            from .model.merge import merge_detections

            c = self.config.model.detector
            dets = [merge_detections([{k: torch.from_numpy(r[k]) for k in ("boxes", "scores", "labels")}],
                                     c.merge_iou_thresh, c.merge_containment_thresh, c.box_detections_per_img)
                    for r in runs]
        return fused, gates, dets

    def fuse(self, ir: np.ndarray, vis: np.ndarray, *, color: bool = False, detections: bool | None = None,
             vis_order: str = "rgb") -> FusionResult:
        """Fuse one infrared/visible pair."""
        return self.fuse_batch([(ir, vis)], color=color, detections=detections, vis_order=vis_order)[0]

    def _detections(self, d: dict[str, torch.Tensor], scale: tuple[float, float], size: tuple[int, int]
                    ) -> list[Detection]:
        names = self.class_names
        out = []
        w, h = size
        thresholds = {name: self.threshold_for(name) for name in names}
        for box, label, score in zip(d["boxes"].tolist(), d["labels"].tolist(), d["scores"].tolist()):
            cid = int(label) - 1
            name = names[cid] if 0 <= cid < len(names) else str(cid)
            if score < thresholds.get(name, self.default_score_threshold):
                continue
            x1, y1, x2, y2 = box
            x1, x2 = min(max(x1 * scale[0], 0.0), w), min(max(x2 * scale[0], 0.0), w)
            y1, y2 = min(max(y1 * scale[1], 0.0), h), min(max(y2 * scale[1], 0.0), h)
            out.append(Detection((x1, y1, x2, y2), cid, name, float(score)))
        return out

    def warmup(self, iters: int = 3, size: tuple[int, int] = (480, 640)) -> float:
        """Run ``iters`` passes on a blank pair (CUDA context, cuDNN autotune, allocator); returns seconds."""
        t = time.perf_counter()
        ir = np.zeros(size, np.uint8)
        vis = np.zeros((*size, 3), np.uint8)
        for _ in range(iters):
            self.fuse(ir, vis)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t
