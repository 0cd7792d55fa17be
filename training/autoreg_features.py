"""Train the learned structure maps of automatic registration (``moe_fusion_core/autoreg_net.py``, issue #21).

Registered real pairs that the registration benchmark does not use (``benchmarks/bench_autoreg.py``: its tune and
test splits are held out) teach two small branches, one per modality, to make maps whose normalised correlation
peaks at the true alignment: for each random crop pair the aligned correlation must beat the same crops shifted
by 2–12 px in 8 directions (``--radii``) and the other pairs of the batch (softmax cross-entropy over the
correlations).

Training pairs: roadscene stems 20–156 (the benchmark uses 0–19 and 157+), tno, tno_more, llvip_det, m3fd, and
msrs_det_more with each pair's own misregistration (2–5 px, docs/registration.md) removed first by a translation
ECC of the gradient structure maps (pairs whose correction is above 8 px or fails are dropped). M3SVD, msrs,
msrs_more and llvip_more are not used (the benchmark's pairs).

    OMP_NUM_THREADS=1 python training/autoreg_features.py --data ../shared/data --out runs/autoreg_feat
    python training/autoreg_features.py ... --resume         # after a kill: from the last checkpoint
    # ship: runs/autoreg_feat/model.safetensors -> moe_fusion_core/autoreg_model/model.safetensors (fp16)

Checkpoints (``state.pt``: weights, optimiser, step, RNG) are written atomically every ``--checkpoint-every``
steps and read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from moe_fusion_core import autoreg
from moe_fusion_core.autoreg_net import StructureNets, branch_input
from moe_fusion_core.image_io import dataset_meta, read_dataset_pair

SHIFT_RADII = (2, 3, 5, 8, 12)
MARGIN = 12  # crop border that every shift stays inside


# options that shape the run: a resumed run must have the ones its checkpoint was written with (--steps may grow)
RESUME_MUST_MATCH = ("radii", "width", "tau", "crop", "batch", "lr", "seed")


def shifts(radii: tuple[int, ...]) -> list[tuple[int, int]]:
    """The negative shifts: each radius in the 8 directions."""
    if max(radii) > MARGIN or min(radii) < 1:
        raise ValueError(f"shift radii must lie in 1..{MARGIN}, got {radii}")
    return [(dx * r, dy * r) for r in radii for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (dx, dy) != (0, 0)]


def _msrs_offset(ir: np.ndarray, vis: np.ndarray) -> np.ndarray | None:
    """The translation (ECC on the gradient structure maps) that aligns an MSRS pair's IR image to its visible one."""
    size = (ir.shape[1], ir.shape[0])
    a, b = autoreg.structure_map(ir, size), autoreg.structure_map(vis, size)
    warp = np.eye(2, 3, dtype=np.float32)
    try:
        rho, warp = cv2.findTransformECC(b, a, warp, cv2.MOTION_TRANSLATION,
                                         (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5), None, 1)
    except cv2.error:
        return None
    return warp if rho >= 0.2 and float(np.abs(warp[:, 2]).max()) <= 8.0 else None


def training_pairs(data: Path, max_per_dataset: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(thermal grey, visible grey) uint8 pairs, registered, none of the registration benchmark's."""
    picks = [("roadscene", r["stem"]) for r in dataset_meta(data / "roadscene")[20:157][:max_per_dataset]]
    for ds in ("tno", "tno_more", "llvip_det", "m3fd", "msrs_det_more"):
        if (data / ds).is_dir():
            picks += [(ds, r["stem"]) for r in dataset_meta(data / ds)[:max_per_dataset]]
    pairs, dropped = [], 0
    for ds, stem in picks:
        ir, vis = (autoreg._gray(x) for x in read_dataset_pair(data / ds, stem))
        if vis.shape != ir.shape:
            vis = cv2.resize(vis, (ir.shape[1], ir.shape[0]), interpolation=cv2.INTER_AREA)
        if ds.startswith("msrs"):
            warp = _msrs_offset(ir, vis)
            if warp is None:
                dropped += 1
                continue
            ir = cv2.warpAffine(ir, warp, (ir.shape[1], ir.shape[0]), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
        pairs.append((ir.astype(np.uint8), vis.astype(np.uint8)))
    print(f"{len(pairs)} training pairs ({dropped} MSRS pairs dropped: offset not measurable or > 8 px)", flush=True)
    return pairs


def sample(pairs: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator, crop: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """One augmented crop pair: (2, crop, crop) branch inputs, thermal and visible, aligned."""
    ir, vis = pairs[int(rng.integers(len(pairs)))]
    h, w = ir.shape
    lo = min(1.0, 1.05 * crop / min(h, w))
    s = float(np.exp(rng.uniform(np.log(max(0.25, lo)), 0.0)))
    size = (max(crop, round(w * s)), max(crop, round(h * s)))
    a = cv2.resize(ir, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    b = cv2.resize(vis, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    if rng.random() < 0.5:  # a thermal camera of lower resolution than the RGB one
        f = rng.uniform(0.5, 0.8)
        small = cv2.resize(a, (max(8, round(size[0] * f)), max(8, round(size[1] * f))), interpolation=cv2.INTER_AREA)
        a = cv2.resize(small, size, interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.1:  # black-hot thermal cameras
        a = 255.0 - a
    a = 255.0 * np.clip(a / 255.0, 0.0, 1.0) ** rng.uniform(0.7, 1.4)
    b = 255.0 * np.clip(b / 255.0, 0.0, 1.0) ** rng.uniform(0.6, 1.6)
    b = np.clip(b + rng.normal(0, rng.uniform(0, 4), b.shape), 0, 255)
    if rng.random() < 0.5:
        a, b = a[:, ::-1], b[:, ::-1]
    xa, xb = branch_input(np.ascontiguousarray(a)), branch_input(np.ascontiguousarray(b))
    y, x = int(rng.integers(size[1] - crop + 1)), int(rng.integers(size[0] - crop + 1))
    return xa[:, y:y + crop, x:x + crop], xb[:, y:y + crop, x:x + crop]


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.flatten(1)
    x = x - x.mean(1, keepdim=True)
    return x / (x.norm(dim=1, keepdim=True) + 1e-6)


def contrastive_loss(ft: torch.Tensor, fv: torch.Tensor, tau: float,
                     negatives: Sequence[tuple[int, int]] = tuple(shifts(SHIFT_RADII))) -> tuple[torch.Tensor, float]:
    """Cross-entropy of the aligned correlation against shifted and cross-pair ones; (loss, share ranked first)."""
    m = MARGIN
    inner = ft.shape[-1] - 2 * m
    v = _unit(fv[..., m:m + inner, m:m + inner])
    t0 = _unit(ft[..., m:m + inner, m:m + inner])
    cols = [(t0 * v).sum(1, keepdim=True)]
    for dx, dy in negatives:
        ts = _unit(ft[..., m + dy:m + dy + inner, m + dx:m + dx + inner])
        cols.append((ts * v).sum(1, keepdim=True))
    cross = t0 @ v.T
    n = cross.shape[0]
    off = cross[~torch.eye(n, dtype=torch.bool)].view(n, n - 1)
    logits = torch.cat([*cols, off], 1) / tau
    target = torch.zeros(n, dtype=torch.long)
    return F.cross_entropy(logits, target), float((logits.argmax(1) == 0).float().mean())


def _atomic_torch_save(obj: object, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--tau", type=float, default=0.07)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--radii", default=",".join(map(str, SHIFT_RADII)),
                   help="negative shifts in px (each in 8 directions), comma-separated")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--resume", action="store_true", help="continue from OUT/state.pt")
    p.add_argument("--max-pairs", type=int, default=None, help="at most this many pairs per dataset (smoke runs)")
    a = p.parse_args()
    try:  # a bad list fails before the data loads
        negatives = shifts(tuple(int(r) for r in a.radii.split(",")))
    except ValueError as e:
        p.error(f"--radii {a.radii}: {e}")
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    nets = StructureNets(a.width)
    opt = torch.optim.Adam(nets.parameters(), lr=a.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(a.steps * 0.7), int(a.steps * 0.9)], 0.1)
    step = 0
    state_file = a.out / "state.pt"
    options = {k: str(getattr(a, k)) for k in RESUME_MUST_MATCH}
    if a.resume:
        st = torch.load(state_file, weights_only=True)
        saved = st.get("options", {})  # states written before 2026-12-06 carry none
        changed = [f"--{k} {saved[k]} (now {v})" for k, v in options.items() if k in saved and saved[k] != v]
        if changed:
            p.error(f"--resume: {state_file} was trained with " + ", ".join(changed) + "; resume with the same options")
        nets.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step = int(st["step"])
        rng.bit_generator.state = st["rng"]  # the same crops as an uninterrupted run
        print(f"resumed at step {step}", flush=True)
    pairs = training_pairs(a.data, a.max_pairs)
    t0, hist = time.time(), []
    while step < a.steps:
        batch = [sample(pairs, rng, a.crop) for _ in range(a.batch)]
        xt = torch.from_numpy(np.stack([b[0] for b in batch]))
        xv = torch.from_numpy(np.stack([b[1] for b in batch]))
        loss, acc = contrastive_loss(nets(xt, "thermal"), nets(xv, "rgb"), a.tau, negatives)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        hist.append((float(loss.detach()), acc))
        if step % 50 == 0:
            ls, ac = np.mean(hist, axis=0)
            hist = []
            print(f"step {step} loss {ls:.3f} aligned-first {ac:.2f} ({time.time() - t0:.0f} s)", flush=True)
        if step % a.checkpoint_every == 0 or step == a.steps:
            _atomic_torch_save({"model": nets.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                                "step": step, "rng": rng.bit_generator.state, "options": options}, state_file)
    weights = {k: v.detach().half().contiguous() for k, v in nets.state_dict().items()}
    tmp = a.out / "model.safetensors.tmp"
    save_file(weights, str(tmp), metadata={"steps": str(step), "radii": a.radii,
                                           "recipe": "training/autoreg_features.py"})
    os.replace(tmp, a.out / "model.safetensors")
    print(f"wrote {a.out / 'model.safetensors'}", flush=True)


if __name__ == "__main__":
    main()
