"""Routing: the gates of a model trained on real pairs keep mixing experts (no collapse onto one expert).

The collapse this guards against (docs/design.md, "Gate collapse"): with the paper's un-normalised 48,000-wide
MoGE gate input, Adam moves every gate logit by about lr·‖s‖₁ per step, the top-K softmax saturates within a few
dozen steps, the importance/load losses lose their gradient, and one expert takes every pair with weight 1.0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from moe_fusion_core.model.gate import NoisyTopKGate, normalize_gate_input


@pytest.fixture(autouse=True)
def one_thread():
    """Small convolutions: one thread is as fast as two, and unaffected by other jobs on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(tmp_path: Path, data_dir: Path, input_norm: str, gate_lr_scale: float) -> tuple[list[dict], object]:
    """25 steps of the embedded fusion head (no detectors, narrow global experts) on real MSRS crops at the
    learning rate that collapsed the first default model's gates (5e-4)."""
    from moe_fusion_core.config import load_config
    from moe_fusion_core.train import Trainer

    cfg = {"base": "embedded",
           "model": {"detector": None, "global_channels": [8, 8, 8],
                     "mole": {"input_norm": input_norm}, "moge": {"input_norm": input_norm}},
           "loss": {"unlabelled_target": "max"},
           "train": {"input_size": None, "crop": [32, 32], "batch_size": 4, "num_workers": 0, "lr": 5e-4,
                     "gate_lr_scale": gate_lr_scale, "keep_unlabelled": True, "steps": 25, "checkpoint_every": 25,
                     "log_every": 1, "val_fraction": 0.0, "seed": 5}}
    p = tmp_path / f"{input_norm}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    trainer = Trainer(load_config(p), [data_dir / "msrs"], tmp_path / input_norm, device="cpu", progress=False)
    trainer.train()
    rows = [json.loads(x) for x in (tmp_path / input_norm / "metrics.jsonl").read_text().splitlines()]
    return rows, trainer


def _eval_shares(trainer, data_dir: Path) -> np.ndarray:
    """Mean MoGE gate vector (each expert's share of the gate mass) over the 16 MSRS pairs at 64×48."""
    from moe_fusion_core.data import PairDataset, read_dataset

    records, _ = read_dataset(data_dir / "msrs", ["person"])
    cfg = trainer.cfg.train
    cfg.input_size = (48, 64)
    ds = PairDataset(records, cfg, train=False)
    model = trainer.model.eval()
    with torch.no_grad():
        gates = [model(ds[i]["ir"][None], ds[i]["vis"][None]).gates["moge"].gates[0] for i in range(len(ds))]
    return torch.stack(gates).mean(0).numpy()


def test_gates_with_normalised_inputs_keep_mixing_experts_on_real_pairs(tmp_path, data_dir):
    rows, trainer = _train(tmp_path, data_dir, "unit", 0.1)
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs[1] == pytest.approx(0.1 * lrs[0])  # the gate matrices learn at train.gate_lr_scale of the rate
    assert all(".gate.w_" in n for n, p in trainer.model.named_parameters()
               if any(p is q for q in trainer.optimizer.param_groups[1]["params"]))
    gaps = [r["logit_gap_moge"] for r in rows]
    assert max(gaps) < 2.0, gaps  # logits stay where the top-K softmax and the balancing losses have a gradient
    # in training, no step routes every sample to one expert with all its weight
    assert all(max(r["gates_moge"]) < 0.95 * 4 for r in rows)
    share = _eval_shares(trainer, data_dir)
    assert (share >= 0.10).sum() >= 2, share


def test_paper_gate_settings_collapse_in_the_same_run(tmp_path, data_dir):
    """The control: the same run with the paper's raw gate input saturates (so the guard above can fail)."""
    rows, trainer = _train(tmp_path, data_dir, "none", 1.0)
    assert max(r["logit_gap_moge"] for r in rows) > 10.0
    assert _eval_shares(trainer, data_dir).max() > 0.9  # one expert takes (nearly) all the gate mass


def test_unit_input_norm_makes_the_gate_scale_invariant():
    torch.manual_seed(0)
    gate = NoisyTopKGate(64, 4, 2, input_norm="unit").eval()
    with torch.no_grad():
        gate.w_gate.normal_()
    s = torch.randn(3, 64)
    a, b = gate(s), gate(50.0 * s + 7.0)  # a brighter, offset feature map routes identically
    torch.testing.assert_close(a.clean_logits, b.clean_logits, rtol=1e-4, atol=1e-4)
    u = normalize_gate_input(s, "unit")
    torch.testing.assert_close(u.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(u.mean(1), torch.zeros(3), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="input_norm"):
        NoisyTopKGate(64, 4, 2, input_norm="layer")
