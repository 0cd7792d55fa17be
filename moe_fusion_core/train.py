"""Training: ``moe-fusion train --config CFG --data DIR [DIR ...] --out RUN_DIR [--resume] [--steps N]``.

- One Adam optimiser over every trainable parameter (fusion head and both detectors), global grad-norm clip,
  step LR schedule (spec §7). ``--steps`` overrides the schedule length; milestones scale with it.
- Checkpoints every ``train.checkpoint_every`` steps into ``RUN_DIR/checkpoints/step_NNNNNNN/`` (weights as
  safetensors + config.yaml + optimiser/RNG state), written atomically; ``RUN_DIR/latest`` names the newest.
  ``--resume`` continues from it exactly: same data order, same gate noise, identical weights at the next
  checkpoint as an uninterrupted run.
- ``RUN_DIR/metrics.jsonl``: one JSON object per logged step (step, loss, loss_pixel, loss_grad, loss_load,
  loss_det, lr, per-expert gate load); TensorBoard scalars in ``RUN_DIR/tb``; a progress bar.
- Multi-GPU: launch the same command with ``torchrun --nproc_per_node N``; each process trains on its own
  batches of ``train.batch_size`` (DistributedDataParallel; gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .checkpoint import MODEL_FILE, atomic_write_dir, load_model, save_model, state_dict_for_save
from .config import Config, load_config
from .losses import FusionLosses, fusion_loss
from .model import MoEFusion, build_model

TRAIN_STATE = "train_state.safetensors"
TRAIN_META = "train_state.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="named config (paper, embedded, paper+wo_moge, …) or YAML file")
    p.add_argument("--data", required=True, nargs="+", help="dataset root folder(s); layout detected per folder")
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, metrics.jsonl, tb/)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/latest")
    p.add_argument("--steps", type=int, default=None, help="override the schedule length (smoke runs)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=None, help="override train.batch_size")
    p.add_argument("--seed", type=int, default=None, help="override train.seed (a replicate of a recipe)")
    p.add_argument("--workers", type=int, default=None, help="override train.num_workers")
    p.add_argument("--checkpoint-every", type=int, default=None, help="override train.checkpoint_every")
    p.add_argument("--init", type=Path, default=None, help="start from this checkpoint's weights")
    p.add_argument("--detector-weights", type=Path, default=None,
                   help="torchvision checkpoint (.pth) to initialise both detector backbones; sha256-checked")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.steps is not None:
        cfg.train.steps = args.steps
    if args.batch_size is not None:
        cfg.train.batch_size = args.batch_size
    if args.seed is not None:
        cfg.train.seed = args.seed
    if args.workers is not None:
        cfg.train.num_workers = args.workers
    if args.checkpoint_every is not None:
        cfg.train.checkpoint_every = args.checkpoint_every
    if args.resume and cfg.train.attention_anchor > 0 and args.init is None:
        raise SystemExit("--resume with train.attention_anchor > 0 needs the run's --init again (the anchor model)")
    trainer = Trainer(cfg, [Path(d) for d in args.data], args.out, device=args.device,
                      progress=not args.no_progress, init=args.init, detector_weights=args.detector_weights)
    trainer.train(resume=args.resume)
    return 0


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _lr_factor(step: int, total: int, cfg: Config) -> float:
    t = cfg.train
    factor = 1.0
    for m in t.milestones:
        if step >= round(total * m / t.epochs):
            factor *= t.gamma
    return factor


def _logit_gap(gate: Any) -> float:
    """Mean over the batch of (largest − smallest clean gate logit): a collapsing gate shows it growing fast."""
    c = gate.clean_logits
    return float((c.max(1).values - c.min(1).values).mean())


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = dict(batch)
    for k in ("ir", "vis", "vis_rgb"):
        out[k] = batch[k].to(device, non_blocking=True)
    out["boxes"] = [b.to(device) for b in batch["boxes"]]
    out["labels"] = [lab.to(device) for lab in batch["labels"]]
    return out


class Trainer:
    """Runs one training job into a run folder; see the module docstring for the files it writes."""

    def __init__(self, cfg: Config, data_dirs: list[Path], out: Path, device: str | None = None,
                 progress: bool = True, init: Path | None = None, detector_weights: Path | None = None) -> None:
        from .data import build_datasets, collate_pairs  # imported here: the data package is heavier

        self.cfg = cfg
        self.out = Path(out)
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.distributed:
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if not dist.is_initialized():
                dist.init_process_group(backend)
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            if device.startswith("cuda"):
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        else:
            self.rank, self.world = 0, 1
        self.device = torch.device(device)
        self.progress = progress and self.rank == 0
        _seed_all(cfg.train.seed)
        self.train_set, self.val_set, class_names, self.split_info = build_datasets(data_dirs, cfg)
        if class_names:
            cfg.model.class_names = list(class_names)
        self.collate = collate_pairs
        if len(self.train_set) < cfg.train.batch_size:
            raise ValueError(f"training set has {len(self.train_set)} usable pairs, fewer than the batch size "
                             f"{cfg.train.batch_size} (labelled frames only unless train.keep_unlabelled)")
        self.model: MoEFusion = build_model(cfg.model).to(self.device)
        if init is not None:
            src, _ = load_model(init)
            self.model.load_state_dict(src.state_dict())
        if detector_weights is not None:
            from .pretrained import load_detector_backbones

            load_detector_backbones(self.model, detector_weights)
        t = cfg.train
        has_det = self.model.detectors is not None
        self.frozen_detectors = t.freeze_detectors and has_det
        self.frozen_features = t.freeze_detector_features and has_det and not self.frozen_detectors
        self.frozen_fusion = t.freeze_fusion
        if self.frozen_fusion and not has_det:
            raise ValueError("train.freeze_fusion leaves nothing to train in a model without detectors")
        if self.frozen_fusion and self.frozen_detectors:
            raise ValueError("train.freeze_fusion and train.freeze_detectors together leave nothing to train")
        self.train_detectors = has_det and not self.frozen_detectors
        if self.frozen_detectors:
            self.model.detectors.requires_grad_(False)
        for m in self._feature_modules():
            m.requires_grad_(False)
        if self.frozen_fusion:
            self.model.fusion.requires_grad_(False)
        self.anchor: MoEFusion | None = None
        if t.attention_anchor < 0:
            raise ValueError(f"train.attention_anchor must be >= 0, got {t.attention_anchor}")
        if t.attention_anchor > 0:
            if not self.train_detectors or self.frozen_features:
                raise ValueError("train.attention_anchor needs trainable detector features (not "
                                 "train.freeze_detectors / train.freeze_detector_features)")
            d = self.model.detectors
            for m in (d.mixing, d.attention_vis, d.attention_ir):
                m.requires_grad_(False)
            self.anchor = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.teacher: MoEFusion | None = None
        if (cfg.loss.distill_weight > 0) != (t.teacher is not None):
            raise ValueError("loss.distill_weight > 0 and train.teacher go together (got distill_weight "
                             f"{cfg.loss.distill_weight}, teacher {t.teacher!r})")
        if t.teacher is not None:
            if self.frozen_fusion:
                raise ValueError("train.teacher distils the fused image: it needs a trainable fusion head "
                                 "(not train.freeze_fusion)")
            self.teacher, _ = load_model(t.teacher, self.device)
            self.teacher.eval().requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if t.gate_lr_scale <= 0:
            raise ValueError(f"train.gate_lr_scale must be > 0, got {t.gate_lr_scale}")
        gate_ids = {id(p) for n, p in self.model.named_parameters() if ".gate.w_" in n}
        if t.gate_lr_scale == 1.0:
            groups: list[dict[str, Any]] = [{"params": self.params, "lr_scale": 1.0}]
        else:  # the gate matrices in their own group (docs/design.md: why the gates learn slower)
            groups = [{"params": [p for p in self.params if id(p) not in gate_ids], "lr_scale": 1.0},
                      {"params": [p for p in self.params if id(p) in gate_ids], "lr_scale": t.gate_lr_scale}]
        self.optimizer = torch.optim.Adam(groups, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        self.batches_per_epoch = len(self.train_set) // (t.batch_size * self.world)
        if t.steps is not None:
            self.total_steps = t.steps
        else:
            self.total_steps = t.epochs * t.repeat * self.batches_per_epoch
        self.step = 0
        self.use_amp = t.amp and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if (self.use_amp and torch.cuda.is_bf16_supported()) else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.net: torch.nn.Module = self.model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)

    def _feature_modules(self) -> list[torch.nn.Module]:
        """Detector parts that produce the attention maps (kept fixed by ``train.freeze_detector_features``)."""
        if not self.frozen_features:
            return []
        d = self.model.detectors
        return [d.backbone_vis, d.backbone_ir, d.mixing, d.attention_vis, d.attention_ir]

    # ---------------------------------------------------------------- data order (deterministic, resumable)
    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.cfg.train.seed * 100_003 + epoch)
        perm = torch.randperm(len(self.train_set), generator=g).tolist()
        bs = self.cfg.train.batch_size
        batches = [perm[i : i + bs] for i in range(0, self.batches_per_epoch * bs * self.world, bs)]
        return batches[self.rank :: self.world]

    def _loader(self, epoch: int, skip: int) -> DataLoader:
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        g = torch.Generator().manual_seed(self.cfg.train.seed * 7_919 + epoch)
        return DataLoader(self.train_set, batch_sampler=self._epoch_batches(epoch)[skip:],
                          num_workers=self.cfg.train.num_workers, collate_fn=self.collate, generator=g,
                          pin_memory=self.device.type == "cuda")

    # ---------------------------------------------------------------- one step
    def train_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        b = _to_device(batch, self.device)
        labelled = torch.as_tensor([bool(x) for x in b["labelled"]])
        targets = [{"boxes": bx.float(), "labels": lab.long() + 1} for bx, lab in zip(b["boxes"], b["labels"])]
        gates: dict[str, Any] = {}
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            out = self.net(b["ir"], b["vis"], targets=targets if self.train_detectors else None,
                           labelled=labelled, vis_rgb=b["vis_rgb"], run_fusion=not self.frozen_fusion,
                           return_det_att=self.anchor is not None)
            det_losses, gates = out.det_losses, out.gates  # train.freeze_fusion: the fusion head is not run
            if self.anchor is not None:
                with torch.no_grad():
                    ref = self.anchor(b["ir"], b["vis"], vis_rgb=b["vis_rgb"], run_fusion=False,
                                      return_det_att=True).det_att
                det_losses = {**det_losses, "att_anchor": self.cfg.train.attention_anchor * sum(
                    F.l1_loss(a.float(), r.float()) for a, r in zip(out.det_att, ref))}
        if self.frozen_fusion:
            zero = torch.zeros((), device=self.device)
            lf = FusionLosses(zero, zero, zero, zero)
        else:
            lf = fusion_loss(out.fused, b["vis"], b["ir"], b["boxes"], out.load_loss, self.cfg.loss,
                             labelled=labelled.tolist())
        loss_det = sum(det_losses.values()) if det_losses else torch.zeros((), device=self.device)
        loss = lf.total + self.cfg.loss.det_weight * loss_det
        loss_distill = None
        if self.teacher is not None:
            with torch.no_grad():
                ref = self.teacher(b["ir"], b["vis"], vis_rgb=b["vis_rgb"]).fused
            loss_distill = F.l1_loss(out.fused.float(), ref.float())
            loss = loss + self.cfg.loss.distill_weight * loss_distill
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {
            "loss": loss.item(), "loss_pixel": lf.pixel.item(), "loss_grad": lf.grad.item(),
            "loss_load": lf.load.item(), "loss_det": float(loss_det.detach()),
            **({"loss_att_anchor": float(det_losses["att_anchor"].detach())} if "att_anchor" in det_losses else {}),
            **({"loss_distill": float(loss_distill.detach())} if loss_distill is not None else {}),
            **({"loss_ssim": float(lf.ssim.detach())} if lf.ssim is not None else {}),
            "grad_norm": float(grad_norm),
            **{f"load_{k}": g.load.detach().cpu().tolist() for k, g in gates.items()},
            **{f"gates_{k}": g.importance.detach().cpu().tolist() for k, g in gates.items()},
            **{f"logit_gap_{k}": _logit_gap(g) for k, g in gates.items() if g.clean_logits is not None},
        }

    # ---------------------------------------------------------------- checkpoints
    def _train_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        np_state = np.random.get_state()
        tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
        opt = self.optimizer.state_dict()
        for pid, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().clone().contiguous() if torch.is_tensor(v) \
                    else torch.tensor(v)
        meta = {
            "step": self.step, "total_steps": self.total_steps, "param_groups": opt["param_groups"],
            "numpy_rng_pos": int(np_state[2]), "python_rng": repr(random.getstate()),
            "scaler": self.scaler.state_dict(),
        }
        return tensors, meta

    def save_checkpoint(self) -> Path:
        if self.rank != 0:
            return self.out
        tensors, meta = self._train_state()
        path = self.out / "checkpoints" / f"step_{self.step:07d}"

        def write(tmp: Path) -> None:
            save_file(state_dict_for_save(self.model), str(tmp / MODEL_FILE), metadata={"format": "moe-fusion"})
            (tmp / "config.yaml").write_text(self.cfg.to_yaml())
            save_file(tensors, str(tmp / TRAIN_STATE))
            (tmp / TRAIN_META).write_text(json.dumps(meta))

        atomic_write_dir(path, write)
        latest = self.out / "latest"
        tmp = latest.with_name("latest.tmp")
        tmp.write_text(path.name + "\n")
        os.replace(tmp, latest)
        ckpts = sorted((self.out / "checkpoints").glob("step_*"))
        for old in ckpts[:-2]:  # keep the two newest
            import shutil

            shutil.rmtree(old, ignore_errors=True)
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = load_file(str(path / MODEL_FILE))
        self.model.load_state_dict(state)
        tensors = load_file(str(path / TRAIN_STATE))
        meta = json.loads((path / TRAIN_META).read_text())
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, v in tensors.items():
            if key.startswith("opt."):
                _, pid, name = key.split(".", 2)
                opt_state.setdefault(int(pid), {})[name] = v
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
        if torch.cuda.is_available():
            states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
            if states:
                torch.cuda.set_rng_state_all(states)
        np.random.set_state(("MT19937", tensors["rng.numpy"].numpy().astype(np.uint32), meta["numpy_rng_pos"]))
        import ast

        random.setstate(ast.literal_eval(meta["python_rng"]))
        self.scaler.load_state_dict(meta["scaler"])
        self.step = int(meta["step"])

    # ---------------------------------------------------------------- loop
    def train(self, resume: bool = False) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        metrics_path = self.out / "metrics.jsonl"
        if resume:
            latest = self.out / "latest"
            if not latest.is_file():
                raise FileNotFoundError(f"--resume: {latest} not found (no checkpoint in {self.out} yet)")
            self.load_checkpoint(self.out / "checkpoints" / latest.read_text().strip())
            if metrics_path.is_file() and self.rank == 0:  # drop log lines past the checkpoint
                keep = [ln for ln in metrics_path.read_text().splitlines() if json.loads(ln)["step"] <= self.step]
                metrics_path.write_text("".join(ln + "\n" for ln in keep))
        elif self.rank == 0:
            (self.out / "config.yaml").write_text(self.cfg.to_yaml())
            (self.out / "split.json").write_text(json.dumps(self.split_info, indent=1))
            metrics_path.write_text("")
        writer = None
        if self.rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.out / "tb"), purge_step=self.step)
            except ImportError:  # tensorboard is optional at run time
                writer = None
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", file=sys.stderr)
        self.model.train()
        if self.frozen_detectors:
            self.model.detectors.eval()  # batch-norm statistics stay those the detectors were trained with
        for m in self._feature_modules():
            m.eval()  # the attention maps the fusion head was trained with stay exactly as they were
        if self.cfg.train.freeze_detector_bn and self.model.detectors is not None:
            for m in self.model.detectors.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        if self.frozen_fusion:
            self.model.fusion.eval()
        t_cfg = self.cfg.train
        log = open(metrics_path, "a") if self.rank == 0 else None  # noqa: SIM115
        t0 = time.time()
        try:
            while self.step < self.total_steps:
                epoch, skip = divmod(self.step, max(1, len(self._epoch_batches(0))))
                for batch in self._loader(epoch, skip):
                    factor = _lr_factor(self.step, self.total_steps, self.cfg)
                    for group in self.optimizer.param_groups:
                        group["lr"] = t_cfg.lr * factor * group.get("lr_scale", 1.0)
                    stats = self.train_step(batch)
                    self.step += 1
                    if not math.isfinite(stats["loss"]):
                        raise FloatingPointError(f"loss is {stats['loss']} at step {self.step}")
                    if self.rank == 0 and (self.step % t_cfg.log_every == 0 or self.step == self.total_steps):
                        rec = {"step": self.step, "epoch": epoch, "lr": t_cfg.lr * factor,
                               "time_s": round(time.time() - t0, 3), **stats}
                        log.write(json.dumps(rec) + "\n")
                        log.flush()
                        if writer is not None:
                            for k, v in stats.items():
                                if isinstance(v, float):
                                    writer.add_scalar(f"train/{k}", v, self.step)
                                else:
                                    for i, x in enumerate(v):
                                        writer.add_scalar(f"train/{k}/{i}", x, self.step)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{stats['loss']:.4f}", refresh=False)
                    if self.step % t_cfg.checkpoint_every == 0 or self.step == self.total_steps:
                        self.save_checkpoint()
                    if self.step >= self.total_steps:
                        break
        finally:
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
            if writer is not None:
                writer.close()
        final = self.out / "final"
        if self.rank == 0:
            save_model(self.model, self.cfg, final)
        if self.distributed:
            dist.barrier()
            dist.destroy_process_group()
        return final
