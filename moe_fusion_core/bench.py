"""``moe-fusion bench``: latency and throughput per stage, FLOPs, memory, and achieved fraction of peak.

Stages are timed with forward hooks on the model's own modules (CUDA events on GPU, wall clock on CPU), so
the benchmark measures exactly the code that serves requests:

- ``preprocess`` / ``postprocess``: the engine's host-side conversion (numpy ↔ tensors, uint8, boxes);
- ``backbones_attention``: both detector backbones + FPNs, the mixing conv and the attention modules;
- ``encoders``, ``mole`` (fg + bg), ``moge``: the fusion head;
- ``detection_heads``: RPN + RoI heads of both detectors (skipped in ``fused_only``);
- ``end_to_end``: ``FusionEngine.fuse_batch`` with detections; ``fused_only``: without;

``--path eager,deploy,onnxruntime,onnxruntime_int8`` times the eager model, the static deploy graph (CUDA graphs on
GPU), the exported graph under ONNX Runtime and its INT8 quantization (calibrated on ``--calibrate DIR``, training
pairs); ``--checkpoint default,fast`` times several models. Every (model, path) row is timed interleaved with all
the others (one call of each per iteration), so their ratios hold on a machine shared with other work:
``speedup_vs_eager`` (the same model's eager p50 over the row's) and, with several models,
``speedup_vs_ref_best`` (the first model's fastest path over the row's, same stage). Stage rows come from each
model's eager path.

FLOPs are counted with ``torch.utils.flop_counter`` on one forward pass of each torch path's own graph (not
estimated); ONNX Runtime rows have no FLOP count (the counter sees torch graphs only; the exported graph's count is
not borrowed from the torch graph). The achieved fraction compares FLOPs/latency with the throughput of a large
3×3 convolution measured on the same device/precision.

Memory, named for what it measures: ``cuda_peak_mb_stage`` (CUDA) is the most memory allocated during the stage's
timed iterations, all paths of the run together (they are interleaved); ``process_max_rss_mb`` (CPU) is the
process's peak resident memory since it started (what the OS reports), not the row's own.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .embedded import CHECKPOINT_KINDS

PATHS = ("eager", "deploy", "onnxruntime", "onnxruntime_int8")
STAGE_MODULES = {
    "backbones_attention": ("detectors.backbone_vis", "detectors.backbone_ir", "detectors.mixing",
                            "detectors.attention_vis", "detectors.attention_ir"),
    "encoders": ("fusion.encoder_vis", "fusion.encoder_ir"),
    "mole": ("fusion.mole_fg", "fusion.mole_bg", "fusion.local_fg", "fusion.local_bg"),
    "moge": ("fusion.moge", "fusion.decoder"),
    "detection_heads": ("detectors.head_vis", "detectors.head_ir"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="named config to benchmark with its initial weights "
                   "(timing does not depend on the weights' values); default: the embedded model's checkpoint")
    p.add_argument("--checkpoint", default=None,
                   help=f"comma-separated, each a {CHECKPOINT_KINDS} (timed interleaved; rows labelled by it as "
                        "given; the first is the reference of speedup_vs_ref_best); default: the embedded default "
                        "model")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N")
    p.add_argument("--sizes", default="640x480", help="comma-separated WxH list")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes")
    p.add_argument("--precision", default="fp32", help="comma-separated: fp32, fp16, bf16")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--path", default="eager",
                   help=f"comma-separated: {', '.join(PATHS)} (timed interleaved when several)")
    p.add_argument("--moe", default="auto", choices=["auto", "gather", "dense"],
                   help="deploy path: gathered top-K expert kernels or all experts (dense)")
    p.add_argument("--calibrate", type=Path, default=None, metavar="DIR",
                   help="onnxruntime_int8 (required there): folder of training pairs, DIR/ir + DIR/vis paired by "
                        "stem, to calibrate the INT8 graphs at the first --sizes; never validation pairs (the "
                        "repository's sample/pairs are mostly validation frames)")
    p.add_argument("--calibrate-pairs", type=int, default=4, metavar="N",
                   help="onnxruntime_int8: calibrate on N pairs of DIR (the timing does not depend on the ranges)")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--json", type=Path, default=None, help="write the rows as a JSON list")
    p.add_argument("--pair-dir", type=Path, default=None,
                   help="dataset folder with ir/ and vis/ whose first pair is timed (default ../shared/data/msrs)")


class StageTimer:
    """Forward hooks that accumulate time per stage over one call (CUDA events or wall clock)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.handles = []
        self.records: dict[str, list[Any]] = defaultdict(list)
        names = dict(model.named_modules())
        for stage, mods in STAGE_MODULES.items():
            for m in mods:
                if m in names:
                    self.handles.append(names[m].register_forward_pre_hook(self._pre(stage)))
                    self.handles.append(names[m].register_forward_hook(self._post(stage)))
        self._open: dict[str, Any] = {}

    def _now(self) -> Any:
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def _pre(self, stage: str):
        def hook(module, args):
            self._open[stage] = self._now()
        return hook

    def _post(self, stage: str):
        def hook(module, args, out):
            self.records[stage].append((self._open.pop(stage), self._now()))
        return hook

    def collect(self) -> dict[str, float]:
        """Milliseconds per stage since the last collect (synchronises CUDA once)."""
        if self.cuda:
            torch.cuda.synchronize()
        out = {}
        for stage, spans in self.records.items():
            if self.cuda:
                out[stage] = sum(a.elapsed_time(b) for a, b in spans)
            else:
                out[stage] = sum(b - a for a, b in spans) * 1e3
        self.records = defaultdict(list)
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def peak_conv_tflops(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Measured throughput of a large 3×3 convolution (the fusion head's dominant op), TFLOP/s."""
    n, c, hw = (8, 128, 128) if device.type == "cuda" else (1, 64, 96)
    x = torch.randn(n, c, hw, hw, device=device, dtype=dtype)
    conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(device=device, dtype=dtype)
    flops = 2 * n * c * c * 9 * hw * hw
    with torch.inference_mode():
        for _ in range(2):
            conv(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t, it = time.perf_counter(), 0
        while time.perf_counter() - t < seconds:
            conv(x)
            it += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
        dt = time.perf_counter() - t
    return flops * it / dt / 1e12


def count_flops(engine, ir: np.ndarray, vis: np.ndarray, detections: bool) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    graphs = getattr(engine, "cuda_graphs", False)
    engine.cuda_graphs = False  # a CUDA graph replay hides its kernels from the counter
    try:
        with FlopCounterMode(display=False) as fc:
            engine.fuse(ir, vis, detections=detections)
    finally:
        engine.cuda_graphs = graphs
    return float(fc.get_total_flops())


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def real_pair(size: tuple[int, int], root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first real pair of ``root`` (default: ../shared/data/msrs beside the repo, else the checkout's
    sample/pairs), resized to ``size``."""
    import cv2

    from .image_io import pair_by_stem, read_ir, read_vis

    if root is None:
        repo = Path(__file__).resolve().parents[1]
        root = next((d for d in (repo.parent / "shared" / "data" / "msrs", repo / "sample" / "pairs")
                     if (d / "ir").is_dir()), repo.parent / "shared" / "data" / "msrs")
    if not (root / "ir").is_dir():
        raise FileNotFoundError(f"benchmark pair folder {root} not found (needs ir/ and vis/; use --pair-dir)")
    _, (ir_path, vis_path) = pair_by_stem([root / "ir", root / "vis"]).pairs[0]
    return cv2.resize(read_ir(ir_path), size), cv2.resize(read_vis(vis_path), size)


def _loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class GraphPerVariant:
    """ONNX Runtime engines on one graph each, with detections (key ``True``) and fused only (``False``), used as
    one engine: ``fuse_batch`` runs the graph of the variant asked for; the rest is the detection graph's."""

    def __init__(self, engines: dict[bool, Any]) -> None:
        self.engines = engines

    def fuse_batch(self, pairs: list[tuple[np.ndarray, np.ndarray]], *, detections: bool = True, **kw: Any
                   ) -> list[Any]:
        eng = self.engines[True] if detections and True in self.engines else self.engines[False]
        return eng.fuse_batch(pairs, detections=detections, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engines[True] if True in self.engines else self.engines[False], name)


def int8_engine(checkpoint: str | None, pairs: list[tuple[Path, Path]], size: tuple[int, int], **kw: Any
                ) -> GraphPerVariant:
    """The INT8 graphs of a checkpoint (each variant: the cached fp32 export quantized once, calibrated on
    ``pairs`` at ``size``) under ONNX Runtime; ``kw`` goes to each :class:`~moe_fusion_core.engine.FusionEngine`."""
    from .checkpoint import read_config
    from .embedded import resolve_checkpoint
    from .engine import FusionEngine
    from .onnx_export import cached_exports, cached_quantized

    path = resolve_checkpoint(checkpoint)
    moe = kw.pop("moe", "auto")
    variants = (True, False) if read_config(path).model.detector is not None else (True,)
    graphs = cached_exports(path, variants, moe="gather" if moe == "auto" else moe)  # as the engine exports
    return GraphPerVariant({not fused_only: FusionEngine(cached_quantized(g, pairs, size), backend="onnxruntime",
                                                         **kw) for fused_only, g in graphs.items()})


def bench_model(engines: dict[tuple[str, str], Any], size: tuple[int, int], batch: int, iters: int, warmup: int,
                label: dict[str, Any], pair_dir: Path | None = None) -> list[dict[str, Any]]:
    """Time each engine ((model, path) → FusionEngine) on one real pair, all interleaved; stage rows from each
    model's eager path (the module docstring has the columns)."""
    ir, vis = real_pair(size, pair_dir)
    pairs = [(ir, vis)] * batch
    first = next(iter(engines.values()))
    dev = first.device
    models = list(dict.fromkeys(m for m, _ in engines))
    timers = {m: StageTimer(engines[m, "eager"].model, dev) for m in models if (m, "eager") in engines}
    rows = []
    peak = peak_conv_tflops(dev, torch.float32 if first.precision == "fp32" else first.autocast_dtype)
    for mode, det in (("end_to_end", True), ("fused_only", False)):
        active = {k: e for k, e in engines.items() if e.has_detectors or not det}
        if not active:
            continue
        for eng in active.values():
            for _ in range(warmup):
                eng.fuse_batch(pairs, detections=det)
        for timer in timers.values():
            timer.collect()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        e2e: dict[tuple[str, str], list[float]] = {k: [] for k in active}
        stages: dict[str, dict[str, list[float]]] = {m: defaultdict(list) for m in timers}
        load = [_loadavg()]
        for _ in range(iters):
            for (model, path), eng in active.items():  # interleaved: every row sees the same machine load
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                res = eng.fuse_batch(pairs, detections=det)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                e2e[model, path].append((time.perf_counter() - t) * 1e3)
                if path == "eager":
                    for k, v in timers[model].collect().items():
                        stages[model][k].append(v)
                    stages[model]["preprocess"].append(res[0].timings_ms["preprocess"] * batch)
                    stages[model]["postprocess"].append(res[0].timings_ms["postprocess"] * batch)
        load.append(_loadavg())
        mem = ({"cuda_peak_mb_stage": torch.cuda.max_memory_allocated(dev) / 2**20} if dev.type == "cuda"
               else {"process_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
        flops = {k: count_flops(e, ir, vis, det) for k, e in active.items() if e.backend == "torch"}
        p50s = {k: _pct(v, 50) for k, v in e2e.items()}
        ref_best = min((v for (m, _), v in p50s.items() if m == models[0]), default=None)
        for (model, path), eng in active.items():
            p50 = p50s[model, path]
            f = flops.get((model, path))  # this path's own graph; none for ONNX Runtime
            row = {**label, "config": eng.config.model.name, "model": model, "path": path, "stage": mode,
                   "p50_ms": p50, "p95_ms": _pct(e2e[model, path], 95), "pairs_per_s": batch * 1e3 / p50, **mem}
            if f is not None:
                row.update(gflops_per_pair=f / 1e9, achieved_fraction=(f * batch / (p50 / 1e3)) / (peak * 1e12))
            if (model, "eager") in p50s and path != "eager":
                row["speedup_vs_eager"] = p50s[model, "eager"] / p50
            if len(models) > 1 and ref_best is not None:
                row["speedup_vs_ref_best"] = ref_best / p50
            if dev.type == "cpu" and None not in load:
                row["loadavg_1min"] = max(load)
            rows.append(row)
        for model, by_stage in stages.items():
            eager = engines[model, "eager"]
            if mode == "end_to_end" or not eager.has_detectors:
                for k, v in by_stage.items():
                    p50 = _pct(v, 50)
                    rows.append({**label, "config": eager.config.model.name, "model": model, "path": "eager",
                                 "stage": k, "p50_ms": p50, "p95_ms": _pct(v, 95),
                                 "pairs_per_s": batch * 1e3 / p50 if p50 > 0 else float("inf")})
    for timer in timers.values():
        timer.remove()
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = ["model", "config", "device", "size", "batch", "precision", "path", "stage", "p50_ms", "p95_ms",
            "pairs_per_s", "gflops_per_pair", "achieved_fraction", "speedup_vs_eager", "speedup_vs_ref_best",
            "cuda_peak_mb_stage", "process_max_rss_mb", "loadavg_1min"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        print("| " + " | ".join(cells) + " |")


def run(args: argparse.Namespace) -> int:
    from .engine import FusionEngine

    sizes = []
    for s in args.sizes.split(","):
        w, h = s.lower().split("x")
        sizes.append((int(w), int(h)))
    batches = [int(b) for b in args.batch.split(",")]
    precisions = args.precision.split(",")
    paths = args.path.split(",")
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise ValueError(f"--path: unknown {', '.join(unknown)} ({' | '.join(PATHS)})")
    calibration = None
    if "onnxruntime_int8" in paths:
        if args.calibrate is None:
            raise ValueError("--path onnxruntime_int8 needs --calibrate DIR: a folder of training pairs (DIR/ir, "
                             "DIR/vis; never validation pairs) to calibrate the INT8 graphs on")
        from .onnx_export import calibration_pairs

        calibration = calibration_pairs(args.calibrate, args.calibrate_pairs)  # a wrong folder fails first
    elif args.calibrate is not None:
        raise ValueError("--calibrate DIR is for --path onnxruntime_int8 (the other paths need no calibration)")
    ckpts: list[str | None] = args.checkpoint.split(",") if args.checkpoint else [None]
    names = [c if c is not None else "default" for c in ckpts]
    if len(set(names)) < len(names):
        raise ValueError(f"--checkpoint: a model is listed twice ({args.checkpoint})")
    tmp_dir = None
    if args.config is not None and args.checkpoint is None:
        import tempfile

        from .checkpoint import save_model
        from .config import load_config
        from .model import build_model

        cfg = load_config(args.config)
        tmp_dir = tempfile.TemporaryDirectory()
        ckpts, names = [str(save_model(build_model(cfg.model), cfg, Path(tmp_dir.name) / "ckpt"))], [args.config]
    rows: list[dict[str, Any]] = []
    failed: list[str] = []  # a row asked for that cannot run is an error, not a skip: the exit code says so
    for prec in precisions:
        engines: dict[tuple[str, str], Any] = {}
        for ckpt, name in zip(ckpts, names):
            for path in paths:
                kw = dict(device=args.device, precision=prec, score_threshold=0.05, moe=args.moe)
                try:
                    if path == "onnxruntime_int8":
                        engines[name, path] = int8_engine(ckpt, calibration, sizes[0], **kw)
                    else:
                        engines[name, path] = FusionEngine(
                            ckpt, compile=args.compile, deploy=path == "deploy",
                            backend="onnxruntime" if path == "onnxruntime" else "torch", **kw)
                except (ValueError, OSError, RuntimeError) as e:
                    failed.append(f"{name} {path} at precision {prec}")
                    print(f"error: cannot run {name} {path} at precision {prec}: {e}", file=sys.stderr)
        if not engines:
            continue
        dev = next(iter(engines.values())).device
        dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu×{torch.get_num_threads()}"
        for size in sizes:
            for b in batches:
                label = {"device": dev_name, "size": f"{size[0]}x{size[1]}", "batch": b, "precision": prec}
                rows += bench_model(engines, size, b, args.iters, args.warmup, label, args.pair_dir)
    print_table(rows)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    if tmp_dir is not None:
        tmp_dir.cleanup()
    if failed:
        print(f"error: {len(failed)} of the rows asked for could not run: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0
