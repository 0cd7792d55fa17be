"""training/warm_start.py: a retraining run starts from a trained model (new classes, cloned experts, reset gates)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from warm_start import clone_experts, reset_gates, transfer, transfer_detectors, transfer_heads

from moe_fusion_core.config import named_config
from moe_fusion_core.model import build_model


def _model(classes: list[str], seed: int):
    torch.manual_seed(seed)
    cfg = named_config("embedded").model
    cfg.class_names = classes
    cfg.moge.input_norm = "unit"
    return build_model(cfg)


def test_new_class_keeps_the_known_rows_and_every_other_weight():
    src, dst = _model(["person"], 0), _model(["person", "car"], 1)
    fresh_car = {k: v.clone() for k, v in dst.state_dict().items()}
    fresh = transfer(src, dst)
    s, d = src.state_dict(), dst.state_dict()
    cls = "detectors.head_ir.roi_heads.box_predictor.cls_score.weight"
    reg = "detectors.head_ir.roi_heads.box_predictor.bbox_pred.weight"
    assert cls in fresh and reg in fresh and len(fresh) == 8  # weight + bias of 2 layers × 2 detectors
    torch.testing.assert_close(d[cls][:2], s[cls])  # background, person
    torch.testing.assert_close(d[cls][2], fresh_car[cls][2])  # car: its fresh initialisation
    torch.testing.assert_close(d[reg][:8], s[reg])
    assert all(torch.equal(d[k], s[k]) for k in s if k not in fresh)


def test_cloned_experts_start_near_the_source_expert_and_gates_start_at_zero():
    src, dst = _model(["person"], 0), _model(["person"], 1)
    transfer(src, dst)
    experts = dst.fusion.moge.experts
    experts[0].load_state_dict(src.fusion.moge.experts[3].state_dict())
    clone_experts(experts, 0, 0.01, torch.Generator().manual_seed(0))
    ref = src.fusion.moge.experts[3].state_dict()
    for e in experts:
        for k, v in e.state_dict().items():
            spread = ref[k].std() if ref[k].numel() > 1 else torch.tensor(0.0)  # one-value tensors are copied as is
            assert (v - ref[k]).abs().max() <= 0.06 * spread
    assert not torch.equal(experts[0].body[0].weight, experts[1].body[0].weight)  # noise breaks the tie
    names = reset_gates(dst)
    assert len(names) == 6 and not dst.fusion.moge.gate.w_gate.any()


def test_detector_heads_come_from_another_run_and_nothing_else_does():
    a, b = _model(["person", "car"], 0), _model(["person", "car"], 1)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    names = transfer_heads(b, a)
    assert names and all(k.startswith(("detectors.head_vis.", "detectors.head_ir.")) for k in names)
    after = a.state_dict()
    assert all(torch.equal(after[k], b.state_dict()[k]) for k in names)
    assert all(torch.equal(after[k], before[k]) for k in before if k not in names)


def test_fusion_head_of_one_model_on_the_detectors_of_another_of_other_widths():
    """--detectors-from: the default model's fusion head on the fast model's 64-wide detectors: every fusion tensor
    from the first, every detector tensor from the second; a detector config of other widths is refused."""
    import pytest

    torch.manual_seed(0)
    fast_cfg = named_config("fast").model
    fast_cfg.class_names = ["person", "bicycle", "car"]
    fast = build_model(fast_cfg)
    default = _model(["person", "car"], 1)
    hybrid_cfg = named_config("embedded").model
    hybrid_cfg.class_names, hybrid_cfg.moge.input_norm = ["person", "bicycle", "car"], "unit"
    hybrid_cfg.detector.fpn_channels, hybrid_cfg.detector.attention_channels = 64, 32
    hybrid = build_model(hybrid_cfg)
    transfer(default, hybrid, "fusion.")
    names = transfer_detectors(fast, hybrid)
    h, f, d = hybrid.state_dict(), fast.state_dict(), default.state_dict()
    assert set(names) == {k for k in h if k.startswith("detectors.")}
    assert all(torch.equal(h[k], f[k]) for k in names)
    assert all(torch.equal(h[k], d[k]) for k in h if k.startswith("fusion."))
    with pytest.raises(ValueError, match="another shape in the detectors checkpoint"):
        transfer_detectors(fast, _model(["person", "bicycle", "car"], 2))
