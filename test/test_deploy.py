"""The static deploy path (``FusionEngine(deploy=True)``, :class:`DeployFusion`) answers as the eager model does,
for each embedded model (``default``, ``fast``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from real_pairs import msrs_pairs

from moe_fusion_core.embedded import EMBEDDED_MODELS
from moe_fusion_core.engine import FusionEngine
from moe_fusion_core.image_io import read_ir, read_vis
from moe_fusion_core.model.deploy import (
    DeployFusion,
    StackedExperts,
    area_pool_matrix,
    combine_pair,
    gate_features,
    interleaved_conv,
    modality_padded,
    pair_modules,
)
from moe_fusion_core.model.experts import LocalExpert, combine

STEMS = ("00081D", "01023N")  # MSRS validation pairs (day, night) the shipped models route to different experts
SIZE = (320, 240)


@pytest.fixture(scope="module")
def pairs(data_dir) -> list[tuple[np.ndarray, np.ndarray]]:
    return msrs_pairs(data_dir, STEMS, SIZE)


@pytest.fixture(scope="module", params=sorted(EMBEDDED_MODELS))
def eager(request) -> FusionEngine:
    return FusionEngine(request.param, device="cpu", deploy=False)  # a shipped model, by name


def _routes(res) -> tuple:
    return tuple(tuple(np.flatnonzero(g)) for g in res.gates.values())


def _assert_same(a, b) -> None:
    diff = np.abs(a.fused.astype(int) - b.fused.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999, (diff.max(), (diff == 0).mean())
    for k in b.gates:
        np.testing.assert_allclose(a.gates[k], b.gates[k], atol=1e-5)
    assert len(a.detections) == len(b.detections)
    for x, y in zip(a.detections, b.detections):
        assert x.class_id == y.class_id and abs(x.score - y.score) < 1e-4
        np.testing.assert_allclose(x.box, y.box, atol=0.05)


def test_deploy_path_matches_the_eager_model_on_real_pairs_in_one_batch(eager, pairs):
    """A batch whose samples route to different experts: per-sample gathered expert kernels give the eager
    model's fused image, gates and detections; so do odd sizes and the fused-only graph."""
    ref = eager.fuse_batch(pairs)
    assert len(set(map(_routes, ref))) > 1, "the chosen pairs must route to different experts"
    assert sum(len(r.detections) for r in ref) > 0
    deploy = FusionEngine(eager.checkpoint, device="cpu")  # the default path
    assert deploy.path == "deploy" and deploy.moe == "gather"
    for a, b in zip(deploy.fuse_batch(pairs), ref):
        _assert_same(a, b)
    ir, vis = pairs[0]  # an odd size: padded inside the graph, cropped back
    _assert_same(deploy.fuse(ir[:197, :251], vis[:197, :251]), eager.fuse(ir[:197, :251], vis[:197, :251]))
    fused_only = deploy.fuse(ir, vis, detections=False)  # the cut graph (attention level only)
    assert fused_only.detections == []
    np.testing.assert_array_equal(fused_only.fused, deploy.fuse(ir, vis).fused)


def test_dense_mixtures_with_zero_weights_match_the_sparse_eager_model(eager, pairs):
    dense = FusionEngine(eager.checkpoint, device="cpu", moe="dense", detections=False)
    for a, b in zip(dense.fuse_batch(pairs), eager.fuse_batch(pairs, detections=False)):
        _assert_same(a, b)


def test_area_pool_matrices_equal_adaptive_average_pooling():
    """The shape-generic gate pooling of exported graphs is the eager gate input, also for uneven windows."""
    x = torch.rand(2, 3, 97, 131)
    for grid in ((30, 40), (15, 20), (97, 131)):
        torch.testing.assert_close(gate_features(x, grid, "area", export="dynamic"),
                                   gate_features(x, grid, "area"), atol=1e-6, rtol=1e-5)
    assert torch.allclose(area_pool_matrix(10, 3, torch.device("cpu")).sum(1), torch.ones(3))


def test_exported_layout_computes_the_deploy_graphs_fused_image(eager, pairs):
    """The layout traced for ONNX (interleaved encoder convs and a permuted x_f for 8-wide encoders, the
    element-wise two-expert log-sum-exp) gives the same fused image and gates as the deploy graph."""
    deploy = DeployFusion(eager.model)
    def gray(a: np.ndarray) -> np.ndarray:
        return a if a.ndim == 2 else a.mean(-1)  # any one-channel image: both layouts see the same input

    x = [torch.from_numpy(np.stack([gray(p[i]) for p in pairs]))[:, None].float() / 255 for i in (0, 1)]
    with torch.no_grad():
        ref = deploy(*x)
        deploy.export = "dynamic"
        out = deploy(*x)
    torch.testing.assert_close(out.fused, ref.fused, atol=2e-5, rtol=1e-5)
    for k in ref.gates:
        torch.testing.assert_close(out.gates[k], ref.gates[k], atol=1e-6, rtol=1e-5)
    assert (deploy.flat_encoders is not None) == (eager.model.cfg.encoder_channels < 16)


def test_interleaved_conv_equals_the_grouped_pair_on_reordered_input():
    torch.manual_seed(0)
    a, b = torch.nn.Conv2d(24, 8, 3, padding=1), torch.nn.Conv2d(24, 8, 3, padding=1)
    paired = pair_modules(torch.nn.Sequential(a), torch.nn.Sequential(b))[0]
    x_v, x_i = torch.randn(1, 24, 9, 11), torch.randn(1, 24, 9, 11)
    flat = interleaved_conv(paired, pieces=3)
    interleaved = torch.cat([t for k in range(3) for t in (x_v[:, 8 * k:8 * k + 8], x_i[:, 8 * k:8 * k + 8])], 1)
    with torch.no_grad():
        torch.testing.assert_close(flat(interleaved), torch.cat([a(x_v), b(x_i)], 1), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="groups=2"):
        interleaved_conv(a, 1)


def test_modality_padded_experts_give_the_modality_routed_outputs():
    torch.manual_seed(1)
    experts = torch.nn.ModuleList(LocalExpert(8, 4) for _ in range(4))  # 0, 1 visible; 2, 3 infrared
    stacked = StackedExperts(experts)
    padded = modality_padded(stacked, num_visible=2, channels=8)
    f = torch.randn(2, 16, 7, 9)  # [visible; infrared]
    idx = torch.tensor([[0, 3], [2, 1]])
    routed = torch.stack([f[:, :8] if i < 2 else f[:, 8:] for i in range(4)], 1)  # each expert's modality
    x = torch.stack([routed[b, idx[b]] for b in range(2)])  # B×K×C×H×W, slot inputs
    with torch.no_grad():
        torch.testing.assert_close(padded.gathered(f, idx, shared=True), stacked.gathered(x, idx, shared=False),
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="reads 8 channels, expected 16"):
        modality_padded(stacked, num_visible=2, channels=16)


def test_two_expert_combination_equals_the_log_sum_exp_of_the_eager_model():
    e = torch.randn(3, 2, 4, 5, 6) * 30  # far-apart expert outputs: no overflow, no loss of the smaller one
    g = torch.softmax(torch.randn(3, 2), 1)
    torch.testing.assert_close(combine_pair(e, g, "logsumexp"), combine(e, g, "logsumexp"))
    torch.testing.assert_close(combine_pair(e, g, "linear"), combine(e, g, "linear"))
    e3, g3 = torch.randn(2, 3, 1, 4, 4), torch.softmax(torch.randn(2, 3), 1)
    torch.testing.assert_close(combine_pair(e3, g3, "logsumexp"), combine(e3, g3, "logsumexp"))


def test_deploy_graph_rejects_unknown_moe_mode(eager):
    with pytest.raises(ValueError, match="moe must be one of gather, dense"):
        DeployFusion(eager.model, moe="sparse")
    with pytest.raises(ValueError, match="moe must be auto, gather or dense"):
        FusionEngine(device="cpu", moe="sparse")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none; run on a GPU machine)")
@pytest.mark.parametrize("name", sorted(EMBEDDED_MODELS))
def test_cuda_graph_deploy_path_matches_the_cpu_eager_reference(data_dir, name):
    """On CUDA the deploy graph is captured once per input size and replayed: fp32 within 1 grey level of CPU
    eager, fp16/bf16 within the precision test's tolerance; a second size captures a second graph."""
    ir = read_ir(data_dir / "msrs" / "ir" / "00004N.png")
    vis = read_vis(data_dir / "msrs" / "vis" / "00004N.png")
    ref = FusionEngine(name, device="cpu", deploy=False).fuse(ir, vis)
    # batch_tol: batched against single calls (H100: the fast model's bf16 batch-2 graph differs by up to 2)
    for precision, mean_tol, max_tol, batch_tol in (("fp32", 0.05, 2, 1), ("fp16", 0.5, 8, 2), ("bf16", 1.5, 16, 3)):
        eng = FusionEngine(name, device="cuda", precision=precision)
        assert eng.cuda_graphs
        for _ in range(2):  # capture, then replay
            out = eng.fuse(ir, vis)
            diff = np.abs(out.fused.astype(int) - ref.fused.astype(int))
            assert diff.mean() < mean_tol and diff.max() <= max_tol, (precision, diff.mean(), diff.max())
        for gate, w in out.gates.items():
            assert w.dtype == np.float32 and abs(float(w.sum()) - 1.0) < 1e-4, (precision, gate)
        if precision == "fp32":
            assert len(out.detections) == len(ref.detections)
        small = eng.fuse(ir[:240, :320], vis[:240, :320], detections=False)
        assert small.fused.shape == (240, 320)
        assert len(eng._graphs) == 2  # one graph per (batch, size, detections)
        batch = eng.fuse_batch([(ir, vis), (ir, vis)])
        for b in batch:
            assert np.abs(b.fused.astype(int) - out.fused.astype(int)).max() <= batch_tol, precision
