"""``moe-fusion info --config NAME|YAML | --checkpoint PATH [--json]``: parameter counts per component.

Lists every encoder, each local expert of MoLE-fg / MoLE-bg (with the modality it receives), each global
expert, each gate (with its input dimension), the attention parts, the fusion-head and detector totals, the
fp16 size of the weights, and the config. The model is built on PyTorch's ``meta`` device: no memory is
allocated and no weights are initialised, so even the 99 M-parameter paper config is counted instantly.
With ``--checkpoint`` the stored tensors are also counted from the safetensors header (nothing is unpickled).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config, load_config
from .embedded import CHECKPOINT_KINDS, resolve_checkpoint


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="named config (paper, embedded, embedded+wo_mole, …) or a YAML file")
    src.add_argument("--checkpoint", help=CHECKPOINT_KINDS)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def count(module: nn.Module | None) -> int:
    """Number of parameters of ``module`` (0 for ``None``)."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def build_meta_model(cfg: Config) -> nn.Module:
    """The model of ``cfg`` with shapes only (meta device): cheap to build at any size."""
    from .model import build_model

    with torch.device("meta"):
        return build_model(cfg.model)


def component_rows(model: nn.Module) -> list[dict[str, Any]]:
    """One row per component: ``name``, ``group`` (fusion | detectors), ``params`` and optional ``note``.

    Rows partition the model: their ``params`` sum to the model's total.
    """
    rows: list[dict[str, Any]] = []

    def add(name: str, group: str, module: nn.Module | None, note: str = "") -> None:
        if module is None:
            return
        row: dict[str, Any] = {"name": name, "group": group, "params": count(module)}
        if note:
            row["note"] = note
        rows.append(row)

    fusion = model.fusion
    add("encoder_vis", "fusion", fusion.encoder_vis, "visible encoder")
    add("encoder_ir", "fusion", fusion.encoder_ir, "infrared encoder")
    for mix in ("mole_fg", "mole_bg"):
        mole = getattr(fusion, mix, None)
        if mole is None:
            continue
        for i, expert in enumerate(mole.experts):
            add(f"{mix}.expert{i}", "fusion", expert, f"local expert, {mole.expert_modality(i)} input")
        add(f"{mix}.gate", "fusion", mole.gate, _gate_note(mole.gate))
    for name in ("local_fg", "local_bg"):
        add(name, "fusion", getattr(fusion, name, None), "att_local expert")
    moge = getattr(fusion, "moge", None)
    if moge is not None:
        for i, expert in enumerate(moge.experts):
            add(f"moge.expert{i}", "fusion", expert, "global expert")
        add("moge.gate", "fusion", moge.gate, _gate_note(moge.gate))
    add("decoder", "fusion", getattr(fusion, "decoder", None), "single global decoder (w/o MoGE)")
    add("att_combiner", "fusion", fusion.att, f"Att = {fusion.att.mode}(Att_V, Att_I)")
    det = model.detectors
    if det is not None:
        for m in ("vis", "ir"):
            add(f"detector_{m}.backbone", "detectors", getattr(det, f"backbone_{m}"), "backbone + FPN")
            add(f"detector_{m}.attention", "detectors", getattr(det, f"attention_{m}"), "spatial attention")
            add(f"detector_{m}.head", "detectors", getattr(det, f"head_{m}"), "RPN + RoI heads")
        add("detectors.mixing", "detectors", det.mixing, "cross-modal mixing conv (shared)")
    covered = sum(r["params"] for r in rows)
    if covered != count(model):
        rows.append({"name": "other", "group": "other", "params": count(model) - covered})
    return rows


def _gate_note(gate: nn.Module) -> str:
    return f"noisy top-{gate.top_k} of {gate.num_experts}, in_features {gate.w_gate.shape[0]:,}"


def model_info(cfg: Config, model: nn.Module | None = None, source: str | None = None) -> dict[str, Any]:
    """Everything ``info`` reports, as a JSON-ready dict (``source``: the config name/file or checkpoint)."""
    model = build_meta_model(cfg) if model is None else model
    rows = component_rows(model)
    fusion = count(model.fusion)
    detectors = count(model.detectors)
    sub: dict[str, int] = {}
    for r in rows:
        for m in ("vis", "ir"):
            if r["name"].startswith(f"detector_{m}."):
                sub[f"detector_{m}"] = sub.get(f"detector_{m}", 0) + r["params"]
    floats = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    others = sum(t.numel() * t.element_size() for t in model.state_dict().values() if not t.is_floating_point())
    gates = {}
    for name in ("mole_fg", "mole_bg", "moge"):
        mix = getattr(model.fusion, name, None)
        if mix is not None:
            g = mix.gate
            gates[name] = {"in_features": int(g.w_gate.shape[0]), "num_experts": g.num_experts,
                           "top_k": g.top_k, "grid": list(mix.cfg.grid), "pool": mix.cfg.pool}
    moles = [getattr(model.fusion, n, None) for n in ("mole_fg", "mole_bg")]
    local_experts = sum(count(e) for m in moles if m is not None for e in m.experts)
    moge = getattr(model.fusion, "moge", None)
    return {
        "config_name": cfg.model.name,
        "source": source or cfg.model.name,
        "components": rows,
        "totals": {
            "encoders": count(model.fusion.encoder_vis) + count(model.fusion.encoder_ir),
            "local_experts": local_experts,
            "global_experts": sum(count(e) for e in moge.experts) if moge is not None else 0,
            "gates": sum(count(getattr(model.fusion, n).gate) for n in gates),
            "fusion_head": fusion,
            **sub,
            "detectors": detectors,
            "total": count(model),
            "trainable": _trainable(model),
            "fp16_mb": round((2 * floats + others) / 1e6, 2),
        },
        "gates": gates,
        "score_thresholds": published_thresholds(cfg),
        "config": cfg.to_dict(),
    }


def published_thresholds(cfg: Config) -> dict[str, float]:
    """Each class's published minimum score: ``detector.score_thresholds``, else ``detector.score_threshold``."""
    det = cfg.model.detector
    if det is None:
        return {}
    return {name: det.score_thresholds.get(name, det.score_threshold) for name in cfg.model.class_names}


def checkpoint_info(path: Path) -> dict[str, Any]:
    """The stored tensors of a checkpoint, read from the safetensors header only."""
    from safetensors import safe_open

    from .checkpoint import MODEL_FILE, CheckpointError

    weights = path / MODEL_FILE if path.is_dir() else path
    if not weights.is_file():
        raise CheckpointError(f"{weights}: no such weights file")
    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
            n = 0
            dtypes: set[str] = set()
            for k in keys:
                sl = f.get_slice(k)
                shape = sl.get_shape()
                numel = 1
                for s in shape:
                    numel *= s
                n += numel
                dtypes.add(str(sl.get_dtype()))
    except Exception as e:  # safetensors' own error types for a corrupt header
        raise CheckpointError(f"{weights}: cannot read weights ({e})") from e
    return {"path": str(path), "file_mb": round(weights.stat().st_size / 1e6, 2), "tensors": len(keys),
            "stored_elements": n, "dtypes": sorted(dtypes)}


def format_table(info: dict[str, Any]) -> str:
    """The human-readable report: one line per component, the totals, then the config as YAML."""
    import yaml

    lines = [f"MoE-Fusion model '{info['config_name']}' (from {info['source']})"]
    if "checkpoint" in info:
        c = info["checkpoint"]
        lines.append(f"checkpoint {c['path']}: {c['file_mb']} MB, {c['tensors']} tensors "
                     f"({c['stored_elements']:,} values, {'/'.join(c['dtypes'])})")
    width = max(len(r["name"]) for r in info["components"]) + 2
    lines.append(f"{'component':<{width}}{'params':>13}  note")
    group = None
    for r in info["components"]:
        if r["group"] != group:
            group = r["group"]
            lines.append(f"-- {group}")
        lines.append(f"{r['name']:<{width}}{r['params']:>13,}  {r.get('note', '')}".rstrip())
    lines.append("-- totals")
    for k, v in info["totals"].items():
        lines.append(f"{k:<{width}}{v:>13,}" if k != "fp16_mb" else f"{'fp16 size (MB)':<{width}}{v:>13.2f}")
    if info.get("score_thresholds"):
        lines.append("-- published score thresholds (per class)")
        lines.extend(f"{name:<{width}}{t:>13.2f}" for name, t in info["score_thresholds"].items())
    lines.append("-- config")
    lines.append(yaml.safe_dump(info["config"], sort_keys=False).rstrip())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.checkpoint is not None:
        from .checkpoint import read_config

        path = resolve_checkpoint(args.checkpoint)
        info = model_info(read_config(path), source=str(path))
        info["checkpoint"] = checkpoint_info(path)
    else:
        info = model_info(load_config(args.config), source=str(args.config))
    if args.json:
        json.dump(info, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_table(info))
    return 0
