"""Noisy top-K gate (spec §4.2) and the combination of the selected experts' outputs (§4.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moe_fusion_core.model.experts import combine
from moe_fusion_core.model.gate import NoisyTopKGate, cv_squared, gate_input


def random_gate(d: int = 12, n: int = 4, k: int = 2, seed: int = 0, scale: float = 0.5) -> NoisyTopKGate:
    torch.manual_seed(seed)
    gate = NoisyTopKGate(d, n, k)
    with torch.no_grad():
        gate.w_gate.normal_(0, scale)
        gate.w_noise.normal_(0, scale)
    return gate


@pytest.mark.parametrize(("n", "k"), [(4, 2), (4, 1), (6, 3), (3, 3)])
@pytest.mark.parametrize("train", [True, False])
def test_each_row_has_exactly_k_nonzero_gates_summing_to_one(n, k, train):
    gate = random_gate(n=n, k=k).train(train)
    s = torch.randn(16, 12)
    out = gate(s)
    assert ((out.gates > 0).sum(1) == k).all()
    torch.testing.assert_close(out.gates.sum(1), torch.ones(16))
    # the reported top-K indices and weights are the non-zero entries, highest first
    torch.testing.assert_close(out.gates.gather(1, out.top_k_indices), out.top_k_gates)
    assert (out.top_k_gates[:, :-1] >= out.top_k_gates[:, 1:]).all()
    torch.testing.assert_close(out.importance, out.gates.sum(0))


def test_eval_mode_is_deterministic_and_uses_the_clean_logits():
    gate = random_gate().eval()
    s = torch.randn(8, 12)
    a, b = gate(s), gate(s)
    torch.testing.assert_close(a.gates, b.gates, rtol=0, atol=0)
    clean = s @ gate.w_gate.detach()
    vals, idx = clean.topk(2, dim=1)
    torch.testing.assert_close(a.top_k_indices, idx)
    torch.testing.assert_close(a.top_k_gates, torch.softmax(vals, 1))
    # in eval the load is the number of samples routed to each expert
    torch.testing.assert_close(a.load, (a.gates > 0).sum(0).float())


def test_training_mode_adds_noise_and_noisy_false_switches_it_off():
    gate = random_gate().train()
    s = torch.randn(64, 12)
    assert not torch.equal(gate(s).gates, gate(s).gates)
    quiet = random_gate()
    quiet.noisy = False
    quiet.train()
    torch.testing.assert_close(quiet(s).gates, quiet(s).gates, rtol=0, atol=0)


def test_zero_initialised_gate_gives_equal_logits_and_equal_weights():
    gate = NoisyTopKGate(50, 4, 2).eval()
    assert not gate.w_gate.any() and not gate.w_noise.any()
    out = gate(torch.randn(5, 50))
    torch.testing.assert_close(out.top_k_gates, torch.full((5, 2), 0.5))
    # every sample ties, so the loads are maximally unbalanced but well defined
    assert out.load.sum().item() == 10


def test_cv_squared_uses_the_unbiased_variance_and_is_zero_for_one_expert():
    x = torch.tensor([1.0, 2.0, 4.0, 9.0])
    a = x.numpy().astype(np.float64)
    assert cv_squared(x).item() == pytest.approx(a.var(ddof=1) / a.mean() ** 2, rel=1e-6)
    assert cv_squared(torch.tensor([3.0])).item() == 0.0
    assert cv_squared(torch.full((4,), 2.5)).item() == 0.0
    # all-zero input does not divide by zero
    assert cv_squared(torch.zeros(4)).item() == 0.0


def test_aux_loss_is_coef_times_cv2_of_importance_plus_load():
    gate = random_gate()
    gate.loss_coef = 0.02
    out = gate.train()(torch.randn(4, 12))
    expected = 0.02 * (cv_squared(out.importance) + cv_squared(out.load))
    torch.testing.assert_close(out.loss, expected)


def test_load_is_the_probability_of_staying_in_the_top_k_under_fresh_noise():
    """Spec §10: Monte-Carlo estimate, resampling only expert i's noise with the others held fixed."""
    n, k, b = 4, 2, 6
    gate = random_gate(n=n, k=k, seed=3, scale=0.3).train()
    s = torch.randn(b, 12)
    torch.manual_seed(123)
    out = gate(s)
    torch.manual_seed(123)
    eps = torch.randn(b, n)  # the noise the forward pass drew (first random call of the forward)
    with torch.no_grad():
        clean = s @ gate.w_gate
        std = torch.nn.functional.softplus(s @ gate.w_noise) + 0.01
        noisy = clean + eps * std
        # the drawn noise is what chose the experts
        assert torch.equal(out.top_k_indices.sort(1).values, noisy.topk(k, 1).indices.sort(1).values)
        m = 40_000
        g = torch.Generator().manual_seed(7)
        mc = torch.zeros(n)
        for i in range(n):
            trials = noisy.unsqueeze(0).repeat(m, 1, 1)  # m×b×n
            trials[:, :, i] = clean[:, i] + torch.randn(m, b, generator=g) * std[:, i]
            in_top = (trials.topk(k, dim=2).indices == i).any(2).float()  # m×b
            mc[i] = in_top.mean(0).sum()
    np.testing.assert_allclose(out.load.detach().numpy(), mc.numpy(), atol=0.03)
    # and it is differentiable with respect to the noise weights (the point of the smooth estimate)
    out.loss.backward()
    assert gate.w_noise.grad is not None and gate.w_noise.grad.abs().sum() > 0


def test_top_k_outside_one_to_n_is_rejected():
    with pytest.raises(ValueError, match="top_k"):
        NoisyTopKGate(4, 4, 5)
    with pytest.raises(ValueError, match="top_k"):
        NoisyTopKGate(4, 4, 0)


def test_logsumexp_combine_equals_log_of_gate_weighted_exp_sum():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(3, 2, 5, 7, 9, generator=g, dtype=torch.float64) * 3
    w = torch.softmax(torch.randn(3, 2, generator=g, dtype=torch.float64), 1)
    direct = torch.log((w.view(3, 2, 1, 1, 1) * e.exp()).sum(1))
    torch.testing.assert_close(combine(e, w, "logsumexp").double(), direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(combine(e, w, "linear").double(), (w.view(3, 2, 1, 1, 1) * e).sum(1),
                               rtol=1e-5, atol=1e-5)
    # logsumexp is a soft maximum: never below the linear mean (Jensen)
    assert (combine(e, w, "logsumexp") >= combine(e, w, "linear") - 1e-5).all()


def test_combine_reduces_to_the_expert_whose_gate_is_one():
    e = torch.randn(2, 1, 3, 4, 4)
    for mode in ("logsumexp", "linear"):
        torch.testing.assert_close(combine(e, torch.ones(2, 1), mode), e[:, 0])
    # two selected experts, all the weight on the first one
    e2 = torch.randn(2, 2, 3, 4, 4)
    torch.testing.assert_close(combine(e2, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), "logsumexp"), e2[:, 0])


def test_logsumexp_combine_is_stable_where_plain_exp_overflows():
    e = torch.full((1, 2, 1, 2, 2), 120.0)  # exp(120) overflows fp32
    e[:, 1] = 119.0
    w = torch.tensor([[0.5, 0.5]])
    y = combine(e, w, "logsumexp")
    assert torch.isfinite(y).all()
    expected = 120.0 + np.log(0.5 + 0.5 * np.exp(-1.0))
    torch.testing.assert_close(y, torch.full((1, 1, 2, 2), expected, dtype=torch.float32))
    with pytest.raises(ValueError, match="combine"):
        combine(e, w, "max")


def test_fixed_gate_grid_equals_the_authors_scale_factors_at_480x640():
    """Spec §9.2: resizing to the fixed grid is bit-identical to the code's ¼ / ⅛ scale factors at 640×480."""
    x = torch.rand(2, 3, 480, 640)
    ref_local = F.interpolate(x, scale_factor=0.25, mode="bilinear", align_corners=True)
    ref_global = F.interpolate(x, scale_factor=0.125, mode="bilinear", align_corners=True)
    torch.testing.assert_close(gate_input(x, (120, 160), "bilinear"), ref_local.flatten(1), rtol=0, atol=0)
    torch.testing.assert_close(gate_input(x, (60, 80), "bilinear"), ref_global.flatten(1), rtol=0, atol=0)
    # any other size still gives the same gate dimension
    assert gate_input(torch.rand(1, 3, 333, 517), (120, 160), "bilinear").shape == (1, 3 * 120 * 160)
    area = gate_input(torch.rand(1, 3, 333, 517), (15, 20), "area")
    assert area.shape == (1, 3 * 15 * 20)
    with pytest.raises(ValueError, match="unknown gate pool"):
        gate_input(x, (8, 8), "nearest")
