"""Checkpoints: weights as safetensors with the config beside them, written atomically; never unpickled.

A checkpoint is a folder ``<dir>/`` holding ``model.safetensors`` (tensors) and ``config.yaml``; training
checkpoints add ``train_state.safetensors`` (optimizer, scheduler, RNG states as tensors) and
``train_state.json`` (step, epoch, plain values). A path to a ``.safetensors`` file also loads, with its
config read from the file's metadata or the sibling ``config.yaml``. Wherever a checkpoint is read, the names of
the embedded models (``default``, ``fast``) work too (:func:`~moe_fusion_core.embedded.resolve_checkpoint`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .config import Config
from .embedded import CHECKPOINT_HELP, EMBEDDED_MODELS, resolve_checkpoint
from .model import MoEFusion, build_model

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not match its config."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_dir(target: Path, write: Any) -> None:
    """Write a folder atomically: ``write(tmp_dir)`` fills a temporary sibling that then replaces ``target``.

    A kill at any moment leaves either the old folder or the new one, never a mix.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed writer leaves no partial folder behind
        raise
    # safetensors writes 0600; give every file the mode the umask allows (read from the fresh folder, since
    # os.umask can only be read by changing it, process-wide), so a node running as another user can read it.
    file_mode = tmp.stat().st_mode & 0o666
    for f in tmp.iterdir():
        if f.is_file():
            os.chmod(f, file_mode)
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    _fsync_dir(target.parent)
    if old.exists():
        shutil.rmtree(old)


def state_dict_for_save(model: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Contiguous, non-shared copies of the model's tensors (optionally cast floating tensors)."""
    out = {}
    for k, v in model.state_dict().items():
        t = v.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[k] = t.clone().contiguous()
    return out


def save_model(model: MoEFusion, cfg: Config, path: str | Path, dtype: torch.dtype | None = None,
               metadata: dict[str, str] | None = None) -> Path:
    """Save weights + config into folder ``path`` atomically. ``dtype=torch.float16`` for deployment."""
    path = Path(path)
    meta = {"format": "moe-fusion", "config": json.dumps(cfg.to_dict()), **(metadata or {})}

    def write(tmp: Path) -> None:
        save_file(state_dict_for_save(model, dtype), str(tmp / MODEL_FILE), metadata=meta)
        (tmp / CONFIG_FILE).write_text(cfg.to_yaml())

    atomic_write_dir(path, write)
    return path


def _config_from_yaml(cfg_file: Path) -> Config:
    try:
        return Config.from_dict(yaml.safe_load(cfg_file.read_text()))
    except (yaml.YAMLError, ValueError, TypeError) as e:
        raise CheckpointError(f"{cfg_file}: invalid config ({e})") from e


def read_config(path: str | Path | None) -> Config:
    """The config stored with a checkpoint (folder, .safetensors file or embedded model name)."""
    path = resolve_checkpoint(path)
    if path.is_dir():
        cfg_file = path / CONFIG_FILE
        if cfg_file.is_file():
            return _config_from_yaml(cfg_file)
        path = path / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here (expected a folder with {MODEL_FILE} + {CONFIG_FILE}, "
                              f"a .safetensors file, or an embedded model: {', '.join(EMBEDDED_MODELS)})")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # not a safetensors file (e.g. a pickle): never fall back to unpickling
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    if "config" in meta:
        try:
            return Config.from_dict(json.loads(meta["config"]))
        except (json.JSONDecodeError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: invalid config in the file's metadata ({e})") from e
    sib = path.with_name(CONFIG_FILE)
    if sib.is_file():
        return _config_from_yaml(sib)
    raise CheckpointError(f"{path}: no config in the file's metadata and no {CONFIG_FILE} beside it")


def load_model(path: str | Path | None, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[MoEFusion, Config]:
    """Build the model from the checkpoint's config and load its weights (strict; safetensors only).

    ``path``: a checkpoint folder, a .safetensors file or an embedded model name; ``None``: the default model."""
    path = resolve_checkpoint(path)
    cfg = read_config(path)
    weights = path / MODEL_FILE if path.is_dir() else path
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{weights}: cannot read weights ({e})") from e
    model = build_model(cfg.model)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:

        def first(names: list[str]) -> str:
            return f"{names[:5]}{'…' if len(names) > 5 else ''}"

        raise CheckpointError(f"{weights}: weights do not match the config (missing {first(missing)}, "
                              f"unexpected {first(unexpected)}, shape mismatch (file vs config) {first(mismatched)})")
    model.load_state_dict(state)
    return model.to(device=device, dtype=dtype), cfg


def average_models(paths: list[str | Path], weights: list[float] | None = None) -> tuple[MoEFusion, Config]:
    """Weight averaging of checkpoints of one architecture (e.g. points of one training run's trajectory).

    Floating tensors become the weighted mean (``weights`` default: equal), computed in fp32; integer buffers
    (counters) must agree and are kept. Returns the model (fp32) and the first checkpoint's config. Checkpoints
    whose model configs differ are refused, as are fewer than two paths and weights that do not match them."""
    if len(paths) < 2:
        raise ValueError(f"weight averaging needs at least two checkpoints, got {len(paths)}")
    if weights is None:
        weights = [1.0] * len(paths)
    if len(weights) != len(paths) or any(not w > 0 for w in weights):
        raise ValueError(f"need one positive weight per checkpoint: {len(paths)} checkpoints, weights {weights}")
    total = float(sum(weights))
    model, cfg = load_model(paths[0])
    acc = {k: v.float() * (weights[0] / total) if v.is_floating_point() else v.clone()
           for k, v in model.state_dict().items()}
    for path, w in zip(paths[1:], weights[1:]):
        other, other_cfg = load_model(path)
        if other_cfg.model != cfg.model:
            raise CheckpointError(f"{path}: its model config differs from {paths[0]}'s; only checkpoints of one "
                                  "architecture can be averaged")
        for k, v in other.state_dict().items():
            if v.is_floating_point():
                acc[k] += v.float() * (w / total)
            elif not torch.equal(v, acc[k]):
                raise CheckpointError(f"{path}: integer buffer {k} differs from {paths[0]}'s")
    model.load_state_dict(acc)
    return model, cfg


# ---------------------------------------------------------------- ``moe-fusion export``
def add_arguments(p: Any) -> None:
    p.add_argument("checkpoint", nargs="?", default=None,
                   help=f"checkpoint to export (e.g. RUN_DIR/final): {CHECKPOINT_HELP}")
    p.add_argument("out", type=Path, nargs="?", default=None,
                   help="output model folder (model.safetensors + config.yaml); not with --onnx")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16", help="stored precision")
    p.add_argument("--note", action="append", default=[], metavar="KEY=VALUE",
                   help="extra metadata stored in the safetensors header (repeatable)")
    p.add_argument("--onnx", type=Path, default=None, metavar="OUT.onnx",
                   help="write the deploy graph as ONNX (opset 17) instead: inputs ir, vis; outputs fused, "
                        "gates_*, and boxes, scores, labels unless --fused-only (docs/benchmarks.md: TensorRT)")
    p.add_argument("--fused-only", action="store_true", help="ONNX: fusion head + attention only, no detections")
    p.add_argument("--size", default="640x480", help="ONNX: WxH of the graph (the traced size with --dynamic)")
    p.add_argument("--dynamic", action="store_true", help="ONNX: height and width free (any input size)")
    p.add_argument("--batch", type=int, default=1, help="ONNX: batch size of the graph (1 with detections)")
    p.add_argument("--moe", choices=["gather", "dense"], default="gather",
                   help="ONNX: mixtures as gathered top-K expert kernels (sparse FLOPs) or all experts with "
                        "zero weights for the unselected ones (constant kernels)")
    p.add_argument("--int8", action="store_true",
                   help="ONNX: quantize to INT8 for CPUs (ONNX Runtime static quantization, QDQ, per-channel "
                        "weights) calibrated on --calibrate; runs as any .onnx. Experimental: for the embedded "
                        "model barely faster and off by up to 10 %% on the metrics (docs/benchmarks.md: INT8)")
    p.add_argument("--calibrate", type=Path, default=None, metavar="DIR",
                   help="--int8: folder of training pairs, DIR/ir + DIR/vis paired by file stem (as `moe-fusion "
                        "fuse`), each resized to --size; never validation pairs")
    p.add_argument("--calibrate-pairs", type=int, default=16, metavar="N",
                   help="--int8: calibrate on N pairs of DIR, evenly spaced over its sorted stems")


def _check_int8_arguments(args: Any) -> None:
    """``--int8`` needs ``--calibrate DIR`` and a batch-1 graph; ``--calibrate`` needs ``--int8``."""
    if not args.int8:
        if args.calibrate is not None:
            raise ValueError("--calibrate DIR is for --int8 (the float graph needs no calibration)")
        return
    if args.calibrate is None:
        raise ValueError("--int8 needs --calibrate DIR: a folder of training pairs (DIR/ir, DIR/vis) to measure "
                         "the activation ranges on")
    if args.batch != 1:
        raise ValueError(f"--int8 quantizes batch-1 graphs (calibration feeds one pair a call), got --batch "
                         f"{args.batch}")


def run(args: Any) -> int:
    """Re-save a checkpoint for deployment (weights only, in the asked precision), or export it as ONNX."""
    if args.onnx is not None:
        from .onnx_export import export_onnx, parse_size

        if args.out is not None:
            raise ValueError("give either OUT (a model folder) or --onnx OUT.onnx, not both")
        _check_int8_arguments(args)
        size = parse_size(args.size)
        if args.int8:  # a wrong calibration folder fails before the export
            from .onnx_export import calibration_feeds, calibration_pairs, quantize_onnx

            pairs = calibration_pairs(args.calibrate, args.calibrate_pairs)
        model, cfg = load_model(args.checkpoint)
        float_path = args.onnx.with_name(f".{args.onnx.name}.fp32-{os.getpid()}.onnx") if args.int8 else args.onnx
        try:
            path = export_onnx(model, cfg, float_path, fused_only=args.fused_only, size=size, batch=args.batch,
                               dynamic=args.dynamic, moe=args.moe)
            if args.int8:
                path = quantize_onnx(float_path, args.onnx, calibration_feeds(float_path, pairs, size))
        finally:
            if args.int8:
                float_path.unlink(missing_ok=True)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, opset 17, "
              f"{'fused only' if args.fused_only or model.detectors is None else 'with detections'}, "
              f"{'dynamic height/width' if args.dynamic else args.size}"
              f"{f', INT8 calibrated on {len(pairs)} pairs of {args.calibrate}' if args.int8 else ''})")
        return 0
    if args.int8 or args.calibrate is not None:
        raise ValueError("--int8 and --calibrate quantize an ONNX graph: add --onnx OUT.onnx")
    if args.out is None:
        raise ValueError("missing OUT (the model folder to write), or use --onnx OUT.onnx")
    model, cfg = load_model(args.checkpoint)
    meta = {}
    for item in args.note:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--note expects KEY=VALUE, got {item!r}")
        meta[key] = value
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    out = save_model(model, cfg, args.out, dtype=dtype, metadata=meta)
    size = (out / MODEL_FILE).stat().st_size / 2**20
    print(f"wrote {out / MODEL_FILE} ({size:.1f} MiB, {args.dtype}) and {out / CONFIG_FILE}")
    return 0
