"""Build the warm-start checkpoint of a retraining run from a trained model (the v2 default model's stage 0).

    .venv/bin/python training/warm_start.py --from moe_fusion_core/default_model \
        --config training/shared_embedded_v2.yaml --out runs/v2_warm --clone-moge-expert 3

What it does, in order (MODEL_CARD.md, "Recipe"):

1. builds the model of ``--config`` (e.g. new classes, normalised gate inputs) and copies every weight of the
   source model whose name and shape match;
2. detector box predictors: rows of the classes both models know are copied (background and ``person``), rows
   of new classes (``car``) keep their fresh initialisation;
3. ``--clone-moge-expert E``: every global expert becomes a copy of the source's expert E plus Gaussian noise of
   ``--noise`` times each tensor's standard deviation (the source's MoGE had collapsed onto E: the other experts
   had stopped training early and are discarded);
4. every gate matrix (W_g, W_n of MoLE-fg, MoLE-bg, MoGE) is reset to zero, the paper's initialisation: routing
   starts from equal logits and is learnt again under the new gate settings (``--keep-gates``: not);
5. ``--fresh-fusion``: only the detectors are copied, the fusion head keeps its fresh initialisation (ablations);
   ``--backbones-only``: only the detectors' backbone bodies are copied (the fast model's stage 0: its other
   layers have other widths than the source's);
6. ``--detector-heads-from CKPT``: both detectors' RPN and box heads are taken from CKPT (a run of
   ``train.freeze_detector_features``, whose backbones and attention are those of ``--from``);
   ``--detectors-from CKPT``: both detectors whole (backbones, FPNs, mixing, attention, heads) are taken from CKPT
   and only the fusion head from ``--from`` (the default model's fusion head on the fast model's detectors; the
   config's detector section must be CKPT's).

Nothing else changes; the result is an ordinary checkpoint folder for ``moe-fusion train --init``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_fusion_core.checkpoint import load_model, save_model
from moe_fusion_core.config import load_config
from moe_fusion_core.model import MoEFusion, build_model

PREDICTOR_ROWS = {"box_predictor.cls_score": 1, "box_predictor.bbox_pred": 4}  # rows per class (incl. background)


def _class_rows(key: str, old: list[str], new: list[str]) -> list[tuple[int, int]] | None:
    """(new row, old row) pairs for a box-predictor tensor, or None when ``key`` is not one."""
    per = next((n for frag, n in PREDICTOR_ROWS.items() if frag in key), None)
    if per is None:
        return None
    old_idx = {c.lower(): i + 1 for i, c in enumerate(old)}
    pairs = [(0, 0)]  # background
    pairs += [(i + 1, old_idx[c.lower()]) for i, c in enumerate(new) if c.lower() in old_idx]
    return [(n * per + r, o * per + r) for n, o in pairs for r in range(per)]


def transfer(src: MoEFusion, dst: MoEFusion, prefix: str | tuple[str, ...] = "") -> list[str]:
    """Copy ``src``'s weights (those whose name starts with ``prefix``) into ``dst`` where names and shapes match
    (class rows of box predictors mapped by class name); returns the names of ``dst`` tensors left at their
    initialisation (fully or partly)."""
    s_state, d_state = src.state_dict(), dst.state_dict()
    old_cls, new_cls = list(src.cfg.class_names), list(dst.cfg.class_names)
    fresh = []
    with torch.no_grad():
        for k, v in d_state.items():
            if k not in s_state or not k.startswith(prefix):
                fresh.append(k)
                continue
            w = s_state[k]
            if w.shape == v.shape:
                v.copy_(w)
                continue
            rows = _class_rows(k, old_cls, new_cls)
            if rows is None or w.shape[1:] != v.shape[1:]:
                raise ValueError(f"{k}: shape {tuple(w.shape)} in the source, {tuple(v.shape)} in the target model")
            for n, o in rows:
                v[n] = w[o]
            fresh.append(k)
    return fresh


def _copy_all(src: MoEFusion, dst: MoEFusion, prefix: str | tuple[str, ...], source: str) -> list[str]:
    """Copy every ``dst`` tensor whose name starts with ``prefix`` from ``src``; each must exist there with the same
    shape (``source`` names the checkpoint in the error)."""
    s_state, d_state = src.state_dict(), dst.state_dict()
    names = [k for k in d_state if k.startswith(prefix)]
    with torch.no_grad():
        for k in names:
            if k not in s_state or s_state[k].shape != d_state[k].shape:
                raise ValueError(f"{k}: missing or of another shape in the {source}")
            d_state[k].copy_(s_state[k])
    return names


def transfer_heads(src: MoEFusion, dst: MoEFusion) -> list[str]:
    """Copy both detectors' RPN and box heads (``detectors.head_vis.*``, ``detectors.head_ir.*``) from ``src``."""
    return _copy_all(src, dst, ("detectors.head_vis.", "detectors.head_ir."), "detector-head checkpoint")


def transfer_detectors(src: MoEFusion, dst: MoEFusion) -> list[str]:
    """Copy every detector tensor (``detectors.*``) from ``src``; names and shapes must match."""
    return _copy_all(src, dst, "detectors.",
                     "detectors checkpoint (the config's detector section must be that checkpoint's)")


def clone_experts(experts: torch.nn.ModuleList, source: int, noise: float, generator: torch.Generator) -> None:
    """Every expert := expert ``source`` + N(0, (noise·std)²) per tensor (the source expert gets noise too)."""
    ref = {k: v.clone() for k, v in experts[source].state_dict().items()}
    with torch.no_grad():
        for e in experts:
            for k, p in e.state_dict().items():
                r = ref[k]
                scale = noise * float(r.float().std()) if r.numel() > 1 else 0.0
                p.copy_(r + torch.randn(r.shape, generator=generator) * scale)


def reset_gates(model: MoEFusion) -> list[str]:
    """Zero every gate matrix (the paper's initialisation); returns the parameter names."""
    names = []
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".gate.w_" in n:
                p.zero_()
                names.append(n)
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="source", required=True, type=Path, help="trained checkpoint folder")
    ap.add_argument("--config", required=True, help="config of the run to start (YAML or a named config)")
    ap.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    ap.add_argument("--clone-moge-expert", type=int, default=None,
                    help="initialise every global expert from this one of the source (plus noise)")
    ap.add_argument("--noise", type=float, default=0.01, help="relative noise added to cloned experts")
    ap.add_argument("--keep-gates", action="store_true", help="keep the source's gate matrices")
    ap.add_argument("--fresh-fusion", action="store_true",
                    help="take only the detectors from the source; the fusion head starts from scratch (ablations)")
    ap.add_argument("--backbones-only", action="store_true",
                    help="take only the detectors' backbone bodies from the source (a model of other widths, e.g. "
                         "the fast model from the default one); everything else starts from scratch")
    ap.add_argument("--detector-heads-from", type=Path, default=None,
                    help="take both detectors' RPN and box heads from this checkpoint (a detector-head stage)")
    ap.add_argument("--detectors-from", type=Path, default=None,
                    help="take both detectors whole from this checkpoint; only the fusion head comes from --from")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    torch.manual_seed(args.seed)
    src, _ = load_model(args.source)
    dst = build_model(cfg.model)
    prefix: str | tuple[str, ...] = "detectors." if args.fresh_fusion else ""
    if args.backbones_only:
        prefix = ("detectors.backbone_vis.body.", "detectors.backbone_ir.body.")
    if args.detectors_from is not None:
        if args.fresh_fusion or args.backbones_only or args.detector_heads_from:
            raise ValueError("--detectors-from takes the detectors whole: not with --fresh-fusion, "
                             "--backbones-only or --detector-heads-from")
        prefix = "fusion."
    fresh = transfer(src, dst, prefix)
    if args.clone_moge_expert is not None:
        if not hasattr(dst.fusion, "moge"):
            raise ValueError("--clone-moge-expert: the target model has no MoGE")
        n = len(src.fusion.moge.experts)
        if not 0 <= args.clone_moge_expert < n:
            raise ValueError(f"--clone-moge-expert must be in [0, {n - 1}], got {args.clone_moge_expert}")
        dst.fusion.moge.experts[0].load_state_dict(src.fusion.moge.experts[args.clone_moge_expert].state_dict())
        clone_experts(dst.fusion.moge.experts, 0, args.noise, torch.Generator().manual_seed(args.seed))
    gates = [] if args.keep_gates else reset_gates(dst)
    heads = transfer_heads(load_model(args.detector_heads_from)[0], dst) if args.detector_heads_from else []
    if args.detectors_from is not None:
        heads = transfer_detectors(load_model(args.detectors_from)[0], dst)
    taken = set(heads)  # left fresh by --from, then taken from the other checkpoint: not fresh
    fresh = [k for k in fresh if k not in taken]
    save_model(dst, cfg, args.out)
    experts = "as in the source" if args.clone_moge_expert is None else f"cloned from expert {args.clone_moge_expert}"
    print(f"wrote {args.out}: {len(fresh)} tensors (partly) fresh {fresh[:6]}{' …' if len(fresh) > 6 else ''}; "
          f"{len(gates)} gate matrices reset; MoGE experts {experts}; {len(heads)} detector tensors taken from "
          f"{args.detectors_from or args.detector_heads_from}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
