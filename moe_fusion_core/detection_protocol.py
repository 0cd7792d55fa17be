"""``moe-fusion detection-protocol``: the paper's Table 3 protocol on a labelled infrared/visible dataset.

One detector (torchvision Faster R-CNN, MobileNetV3-Large FPN, trained from scratch: ``weights=None``,
``weights_backbone=None``, nothing is ever downloaded) is trained on the infrared *and* the visible images of a
labelled dataset (same boxes for both, registered pairs), then evaluated with mAP@0.5 (VOC all-point
interpolation, :mod:`moe_fusion_core.metrics.detection`) on infrared-only, visible-only and — with
``--fused DIR`` — fused images of the same frames. The three results are printed side by side (``--json``: also
written). Fused images are fed like infrared ones (grey replicated to 3 channels) and must have the source size.

Dataset layout (``--data DIR``, as in ``../shared/data/llvip_det``): ``ir/<stem>.png``, ``vis/<stem>.<png|jpg>``,
``labels/<stem>.txt`` (YOLO ``class cx cy w h``, normalised), ``classes.txt``. Frames without a label file are
unlabelled and left out.

Honesty note: the paper trains on thousands of frames with a pretrained backbone. On the 11-frame LLVIP dev
subset this is a **smoke-level protocol**: it checks that the pipeline (training on both modalities, evaluating
each input type with the same detector) runs end to end; its numbers say nothing about the paper's claims. By
default the detector is evaluated on the frames it was trained on (a measure of fit, not of generalisation);
``--holdout K`` keeps the last K frames out of training and evaluates on them only.

Exit codes: 0 every labelled frame evaluated; 1 some frames skipped (missing fused image, size mismatch,
unreadable file); 2 usage error or nothing to train/evaluate.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .image_io import IMAGE_SUFFIXES, ImageReadError, pair_by_stem, read_image, read_ir, read_vis, to_8bit
from .metrics.detection import Box, mean_average_precision, read_class_names, read_yolo_labels

MODALITIES = ("ir", "vis", "fused")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="dataset folder with ir/, vis/, labels/, classes.txt")
    p.add_argument("--fused", type=Path, default=None, help="fused images of the same frames (evaluated too)")
    p.add_argument("--steps", type=int, default=300, help="training iterations")
    p.add_argument("--batch", type=int, default=2, help="images per iteration")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate")
    p.add_argument("--size", type=int, default=320, help="shorter image side inside the detector (pixels)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--holdout", type=int, default=0,
                   help="keep the last K frames out of training and evaluate on them (default 0: train = test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write settings and results as JSON")
    p.add_argument("--no-progress", action="store_true")


def build_detector(num_classes: int, size: int) -> torch.nn.Module:
    """Faster R-CNN MobileNetV3-Large FPN from scratch; ``num_classes`` without background."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    return fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=num_classes + 1,
                                             min_size=size, max_size=2 * size, box_score_thresh=0.001,
                                             box_detections_per_img=100)


def _tensor(img: np.ndarray) -> torch.Tensor:
    """H×W grey or H×W×3 RGB ``uint8`` → 3×H×W float in [0,1]."""
    t = torch.from_numpy(np.ascontiguousarray(img)).float().div_(255.0)
    return t.unsqueeze(0).expand(3, -1, -1).contiguous() if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def _target(boxes: list[Box]) -> dict[str, torch.Tensor]:
    b = torch.tensor([x.box for x in boxes], dtype=torch.float32).reshape(-1, 4)
    return {"boxes": b, "labels": torch.tensor([x.class_id + 1 for x in boxes], dtype=torch.int64)}


def _fused_index(folder: Path) -> dict[str, Path]:
    return {f.relative_to(folder).with_suffix("").as_posix(): f for f in sorted(folder.rglob("*"))
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES}


def load_frames(data: Path, fused: Path | None) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Labelled frames ``{"stem", "ir", "vis", "fused"?, "boxes"}``, class names and the skipped-frame reasons."""
    classes = data / "classes.txt"
    if not classes.is_file():
        raise FileNotFoundError(f"{classes}: class list not found")
    names = read_class_names(classes)
    listing = pair_by_stem([data / "ir", data / "vis"], ["ir", "vis"])
    fused_files = _fused_index(fused) if fused is not None else {}
    frames: list[dict[str, Any]] = []
    skipped = [f"{s}: no partner in the other folder ({side} only)"
               for side, stems in listing.unpaired.items() for s in stems]
    for stem, (ip, vp) in listing.pairs:
        label = data / "labels" / f"{stem}.txt"
        if not label.is_file():
            continue  # unlabelled, not empty
        try:
            ir, vis = read_ir(ip), read_vis(vp)
            ir = to_8bit(ir)
            if ir.shape != vis.shape[:2]:
                raise ValueError(f"infrared {ir.shape[::-1]} and visible {vis.shape[1::-1]} differ in size")
            frame = {"stem": stem, "ir": ir, "vis": vis,
                     "boxes": read_yolo_labels(label, vis.shape[1], vis.shape[0])}
            if fused is not None:
                if stem not in fused_files:
                    raise ValueError(f"no fused image in {fused}")
                f = read_image(fused_files[stem])
                if f.shape[:2] != ir.shape:
                    raise ValueError(f"fused image is {f.shape[1]}×{f.shape[0]}, sources {ir.shape[1]}×{ir.shape[0]}")
                frame["fused"] = to_8bit(f)
        except (ImageReadError, ValueError) as e:
            skipped.append(f"{stem}: {e}")
            continue
        frames.append(frame)
    return frames, names, skipped


def train_detector(model: torch.nn.Module, frames: list[dict[str, Any]], steps: int, batch: int, lr: float,
                   device: torch.device, progress: bool = True) -> list[float]:
    """Train on the IR and visible images of ``frames`` (random horizontal flips); returns the loss per step."""
    samples = [(m, f) for f in frames for m in ("ir", "vis")]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    model.train().to(device)
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="train detector", unit="step", file=sys.stderr)
    losses = []
    for _ in it:
        imgs, tgts = [], []
        for m, f in random.sample(samples, min(batch, len(samples))):
            img, tgt = _tensor(f[m]), _target(f["boxes"])
            if random.random() < 0.5:
                w = img.shape[-1]
                img = img.flip(-1)
                tgt["boxes"] = torch.stack([w - tgt["boxes"][:, 2], tgt["boxes"][:, 1],
                                            w - tgt["boxes"][:, 0], tgt["boxes"][:, 3]], dim=1)
            imgs.append(img.to(device))
            tgts.append({k: v.to(device) for k, v in tgt.items()})
        loss = sum(model(imgs, tgts).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def evaluate_detector(model: torch.nn.Module, frames: list[dict[str, Any]], modality: str,
                      device: torch.device) -> dict[str, list[Box]]:
    """Detections of ``model`` on one input type of every frame, by stem."""
    model.eval().to(device)
    out: dict[str, list[Box]] = {}
    for f in frames:
        pred = model([_tensor(f[modality]).to(device)])[0]
        out[f["stem"]] = [Box(tuple(b), int(c) - 1, float(s)) for b, c, s in
                          zip(pred["boxes"].cpu().tolist(), pred["labels"].cpu().tolist(),
                              pred["scores"].cpu().tolist())]
    return out


def run(args: argparse.Namespace) -> int:
    from .engine import resolve_device

    if args.steps < 0 or args.batch < 1 or args.size < 32 or args.holdout < 0:
        raise ValueError("--steps ≥ 0, --batch ≥ 1, --size ≥ 32 and --holdout ≥ 0 are required")
    device = resolve_device(args.device)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    frames, names, skipped = load_frames(args.data, args.fused)
    if not frames:
        print(f"moe-fusion detection-protocol: error: no labelled frame in {args.data}", file=sys.stderr)
        return 2
    if args.holdout >= len(frames):
        raise ValueError(f"--holdout {args.holdout} leaves no training frame ({len(frames)} labelled frames)")
    train = frames[:len(frames) - args.holdout]
    test = frames[len(frames) - args.holdout:] if args.holdout else frames
    model = build_detector(len(names), args.size)
    t0 = time.perf_counter()
    losses = train_detector(model, train, args.steps, args.batch, args.lr, device, not args.no_progress)
    train_s = time.perf_counter() - t0
    gt = {f["stem"]: f["boxes"] for f in test}
    modalities = [m for m in MODALITIES if m != "fused" or args.fused is not None]
    results = {m: mean_average_precision(gt, evaluate_detector(model, test, m, device), len(names))
               for m in modalities}

    header = f"{'input':<10}{'mAP@0.5':>9}" + "".join(f"{n:>12}" for n in names)
    print(f"detector trained {args.steps} steps on {len(train)} frames × (IR + visible) in {train_s:.1f} s "
          f"(final loss {losses[-1] if losses else float('nan'):.3f}); evaluated on {len(test)} frames "
          f"({'held out' if args.holdout else 'the training frames'}); smoke-level protocol, see docs/evaluation.md")
    print(header)
    labels = {"ir": "infrared", "vis": "visible", "fused": "fused"}
    for m, r in results.items():
        print(f"{labels[m]:<10}{r.map50:>9.4f}" + "".join(f"{r.ap.get(c, float('nan')):>12.4f}"
                                                           for c in range(len(names))))
    for s in skipped:
        print(f"  skipped {s}", file=sys.stderr)
    if args.json is not None:
        out = {"settings": {"data": str(args.data), "fused": str(args.fused) if args.fused else None,
                            "steps": args.steps, "batch": args.batch, "lr": args.lr, "size": args.size,
                            "device": str(device), "seed": args.seed, "holdout": args.holdout,
                            "detector": "fasterrcnn_mobilenet_v3_large_fpn, from scratch"},
               "train_frames": [f["stem"] for f in train], "test_frames": [f["stem"] for f in test],
               "train_seconds": train_s, "final_loss": losses[-1] if losses else None,
               "results": {m: r.to_json(names) for m, r in results.items()}, "skipped": skipped,
               "note": "smoke-level protocol on a tiny dataset; not comparable with the paper's Table 3"}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 1 if skipped else 0
