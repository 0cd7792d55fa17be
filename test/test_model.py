"""The fusion network (spec §1.2, §2, §4, §5, §9.2): shapes, parameter counts, routing, sizes, detach, ablations."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from moe_fusion_core.config import Config, LossConfig, merge, named_config
from moe_fusion_core.losses import fusion_loss
from moe_fusion_core.model import build_model
from moe_fusion_core.model.encoder import Encoder
from moe_fusion_core.model.experts import GlobalExpert, LocalExpert
from moe_fusion_core.model.gate import GateOutput
from moe_fusion_core.model.mole import MoLE

H, W = 480, 640


def fusion_only(name: str = "paper", fixed_att: float = 0.5) -> Config:
    cfg = named_config(name)
    cfg.model.detector = None
    cfg.model.fixed_att = fixed_att
    return cfg


def randomise_gates(model: torch.nn.Module, std: float, seed: int = 0) -> None:
    """Non-zero gate weights, so that experts are told apart (zero init ties every logit)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gate" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def real_pair(data_dir: Path, stem: str = "010002", size: tuple[int, int] | None = None):
    """A real LLVIP pair as [0,1] 1×1×H×W tensors (IR, visible luma) and its person boxes in pixels."""
    root = data_dir / "llvip_det"
    ir = cv2.imread(str(root / "ir" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
    vis = cv2.imread(str(next((root / "vis").glob(f"{stem}.*"))), cv2.IMREAD_GRAYSCALE)
    if size is not None:
        ir = cv2.resize(ir, size[::-1], interpolation=cv2.INTER_AREA)
        vis = cv2.resize(vis, size[::-1], interpolation=cv2.INTER_AREA)
    h, w = ir.shape
    rows = np.loadtxt(root / "labels" / f"{stem}.txt", ndmin=2)
    cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
    boxes = torch.tensor(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1), dtype=torch.float32)
    labels = torch.tensor(rows[:, 0] + 1, dtype=torch.int64)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).float().div(255)[None, None]

    return t(ir), t(vis), boxes, labels


# ------------------------------------------------------------------------------------------------ 480×640 paper


@pytest.fixture(scope="module")
def paper_run() -> dict:
    """One no-grad forward of the paper config's fusion part at 480×640, every intermediate captured by hooks."""
    cfg = fusion_only("paper", fixed_att=0.3)
    model = build_model(cfg.model).eval()
    randomise_gates(model, 1e-4)
    f = model.fusion
    seen: dict = {}

    def keep(name):
        def hook(module, args, output):
            seen[name] = (args, output)

        return hook

    for name in ("encoder_vis", "encoder_ir", "mole_fg", "mole_bg", "moge"):
        getattr(f, name).register_forward_hook(keep(name))
    for name in ("mole_fg", "mole_bg", "moge"):
        getattr(f, name).gate.register_forward_hook(keep(name + ".gate"))
    g = torch.Generator().manual_seed(0)
    ir, vis = torch.rand(1, 1, H, W, generator=g), torch.rand(1, 1, H, W, generator=g)
    with torch.no_grad():
        out = model(ir, vis)
    return {"out": out, "seen": seen, "ir": ir, "vis": vis, "model": model}


def test_paper_shapes_at_480x640(paper_run):
    out, seen = paper_run["out"], paper_run["seen"]
    assert out.fused.shape == (1, 1, H, W)
    assert out.att.shape == (1, 1, H, W)
    for enc in ("encoder_vis", "encoder_ir"):
        x_enc, x_dense = seen[enc][1]
        assert x_enc.shape == (1, 16, H, W) and x_dense.shape == (1, 64, H, W)
    for mix in ("mole_fg", "mole_bg"):
        assert seen[mix][1].y.shape == (1, 16, H, W)
    assert seen["moge"][0][0].shape == (1, 160, H, W)
    assert set(out.gates) == {"mole_fg", "mole_bg", "moge"}
    assert out.load_loss.dim() == 0 and torch.isfinite(out.load_loss)


def test_gate_input_dimensions_are_the_authors_at_480x640(paper_run):
    seen = paper_run["seen"]
    assert seen["mole_fg.gate"][0][0].shape == (1, 614_400)  # 32·120·160
    assert seen["mole_bg.gate"][0][0].shape == (1, 614_400)
    assert seen["moge.gate"][0][0].shape == (1, 768_000)  # 160·60·80


def test_global_feature_channels_are_dense_vis_dense_ir_fg_bg(paper_run):
    seen = paper_run["seen"]
    x_f = seen["moge"][0][0]
    torch.testing.assert_close(x_f[:, 0:64], seen["encoder_vis"][1][1], rtol=0, atol=0)
    torch.testing.assert_close(x_f[:, 64:128], seen["encoder_ir"][1][1], rtol=0, atol=0)
    torch.testing.assert_close(x_f[:, 128:144], seen["mole_fg"][1].y, rtol=0, atol=0)
    torch.testing.assert_close(x_f[:, 144:160], seen["mole_bg"][1].y, rtol=0, atol=0)


def test_mole_inputs_are_encoder_features_masked_by_att_and_one_minus_att(paper_run):
    seen = paper_run["seen"]
    enc_v, enc_i = seen["encoder_vis"][1][0], seen["encoder_ir"][1][0]
    fg_v, fg_i = seen["mole_fg"][0]
    bg_v, bg_i = seen["mole_bg"][0]
    torch.testing.assert_close(fg_v, enc_v * 0.3)
    torch.testing.assert_close(fg_i, enc_i * 0.3)
    torch.testing.assert_close(bg_v, enc_v * 0.7)
    torch.testing.assert_close(bg_i, enc_i * 0.7)


def test_component_parameter_counts_match_the_spec():
    def n(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    assert n(Encoder(16)) == 14_032
    assert n(LocalExpert(16, 8)) == 2_328
    assert n(GlobalExpert(160, (64, 32, 16))) == 115_457
    with torch.device("meta"):  # the full paper model (99 M parameters) without allocating it
        model = build_model(named_config("paper").model)
    f = model.fusion
    assert f.mole_fg.gate.w_gate.shape == f.mole_bg.gate.w_noise.shape == (614_400, 4)
    assert f.moge.gate.w_gate.shape == (768_000, 4)
    assert n(f) == 2 * 14_032 + 8 * 2_328 + 4 * 115_457 + 2 * 2 * 614_400 * 4 + 2 * 768_000 * 4
    assert 2 * 40e6 < n(model.detectors) < 2 * 42.5e6  # "Detectors ≈ 2×41 M"


def test_encoder_has_no_activation_after_the_dense_convs():
    enc = Encoder(4)
    x = torch.randn(1, 1, 9, 9)
    x_enc, x_dense = enc(x)
    a = torch.relu(enc.conv1(x))
    assert (x_dense[:, :4] >= 0).all()  # a: after ReLU
    assert (x_enc < 0).any()  # d: raw conv output, negative values survive
    torch.testing.assert_close(x_dense[:, :4], a)
    torch.testing.assert_close(x_dense[:, 12:], x_enc)


# ------------------------------------------------------------------------------------------------ routing


def test_mole_visible_experts_only_see_visible_and_infrared_experts_only_infrared():
    cfg = fusion_only("embedded", fixed_att=0.3)
    model = build_model(cfg.model).train()  # gate noise on: every expert gets picked some time
    f = model.fusion
    calls: dict[tuple[str, int], list[torch.Tensor]] = {}
    for mix in ("mole_fg", "mole_bg"):
        for i, expert in enumerate(getattr(f, mix).experts):
            expert.register_forward_hook(lambda m, a, o, key=(mix, i): calls.setdefault(key, []).append(a[0]))
    enc: dict[str, torch.Tensor] = {}
    f.encoder_vis.register_forward_hook(lambda m, a, o: enc.__setitem__("vis", o[0]))
    f.encoder_ir.register_forward_hook(lambda m, a, o: enc.__setitem__("ir", o[0]))
    torch.manual_seed(0)
    selected = {key: 0 for key in [(m, i) for m in ("mole_fg", "mole_bg") for i in range(4)]}
    for _ in range(4):
        calls.clear()
        ir, vis = torch.rand(6, 1, 24, 40), torch.rand(6, 1, 24, 40)
        with torch.no_grad():
            out = model(ir, vis)
        for mix, scale in (("mole_fg", 0.3), ("mole_bg", 0.7)):
            idx = out.gates[mix].top_k_indices
            for i in range(4):
                rows = (idx == i).any(1)
                got = calls.get((mix, i))
                if not rows.any():
                    assert got is None, f"{mix} expert {i} ran without being selected"
                    continue
                selected[(mix, i)] += 1
                src = enc["vis"] if i < 2 else enc["ir"]
                other = enc["ir"] if i < 2 else enc["vis"]
                (x,) = got
                assert x.shape[0] == int(rows.sum())  # only the samples that selected it
                torch.testing.assert_close(x, src[rows] * scale)
                assert not torch.allclose(x, other[rows] * scale)
    assert all(selected.values()), selected


def random_gate_output(b: int, n: int, k: int, seed: int) -> GateOutput:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, generator=g)
    vals, idx = logits.topk(k, 1)
    w = torch.softmax(vals, 1)
    gates = torch.zeros(b, n).scatter(1, idx, w)
    return GateOutput(gates, idx, w, gates.sum(0), (gates > 0).sum(0).float(), torch.zeros(()))


@pytest.mark.parametrize("mode", ["logsumexp", "linear"])
def test_sparse_dispatch_equals_dense_computation(mode, monkeypatch):
    torch.manual_seed(0)
    mole = MoLE(4, 3, named_config("embedded").model.mole, mode).eval()
    b = 7
    gate = random_gate_output(b, 4, 2, seed=1)
    monkeypatch.setattr(mole.gate, "forward", lambda s: gate)
    xv, xi = torch.randn(b, 4, 6, 5), torch.randn(b, 4, 6, 5)
    runs = [0, 0, 0, 0]
    for i, e in enumerate(mole.experts):
        e.register_forward_hook(lambda m, a, o, i=i: runs.__setitem__(i, runs[i] + a[0].shape[0]))
    y = mole(xv, xi).y
    sparse_runs = list(runs)
    with torch.no_grad():
        dense = torch.stack([e(xv if i < 2 else xi) for i, e in enumerate(mole.experts)], 1)  # B×N×C×H×W
        ref = torch.zeros_like(y)
        for bi in range(b):
            terms = [gate.gates[bi, i] * (dense[bi, i].exp() if mode == "logsumexp" else dense[bi, i])
                     for i in range(4) if gate.gates[bi, i] > 0]
            s = torch.stack(terms).sum(0)
            ref[bi] = s.log() if mode == "logsumexp" else s
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    # each expert ran on exactly the samples that selected it, not on the whole batch
    assert sparse_runs == [(gate.top_k_indices == i).any(1).sum().item() for i in range(4)]
    assert sum(sparse_runs) == 2 * b


def test_unselected_experts_receive_no_gradient():
    torch.manual_seed(0)
    mole = MoLE(4, 3, named_config("embedded").model.mole, "logsumexp").eval()
    with torch.no_grad():
        mole.gate.w_gate.zero_()
        mole.gate.w_gate[:, 3] = 1.0  # positive inputs → expert 3 wins, then the tie-break picks one more
    xv, xi = torch.rand(3, 4, 8, 8), torch.rand(3, 4, 8, 8)
    out = mole(xv, xi)
    out.y.sum().backward()
    chosen = set(out.gate.top_k_indices.flatten().tolist())
    assert 3 in chosen and len(chosen) == 2
    for i, e in enumerate(mole.experts):
        has_grad = any(p.grad is not None and p.grad.abs().sum() > 0 for p in e.parameters())
        assert has_grad == (i in chosen), i


# ------------------------------------------------------------------------------------------------ sizes


@pytest.fixture(scope="module")
def embedded_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(named_config("embedded").model).eval()
    randomise_gates(model, 1e-3)
    return model


@pytest.mark.parametrize(("h", "w", "b"), [(333, 517, 1), (512, 640, 1), (37, 53, 2)])
def test_arbitrary_input_sizes_give_outputs_of_the_input_size(embedded_model, h, w, b):
    g = torch.Generator().manual_seed(h)
    ir, vis = torch.rand(b, 1, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)
    maps = []
    handle = embedded_model.fusion.att.register_forward_hook(lambda m, args, o: maps.append((args[0].shape, o.shape)))
    try:
        with torch.no_grad():
            out = embedded_model(ir, vis, need_detections=True)
    finally:
        handle.remove()
    assert out.fused.shape == (b, 1, h, w) and out.att.shape == (b, 1, h, w)
    # Att comes from the stride-4 (P2) maps of the input padded to a multiple of 32, resized to the padded size
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    assert maps == [((b, 1, ph // 4, pw // 4), (b, 1, ph, pw))]
    assert torch.isfinite(out.fused).all()
    assert ((out.att > 0) & (out.att < 1)).all()  # sigmoid attention from the detectors, not the fixed value
    assert len(out.detections) == b
    for d in out.detections:
        boxes = d["boxes"]
        assert (boxes[:, 0::2] <= w + 1e-3).all() and (boxes[:, 1::2] <= h + 1e-3).all()


def test_mismatched_or_non_single_channel_inputs_are_rejected(embedded_model):
    with pytest.raises(ValueError, match="B×1×H×W"):
        embedded_model(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 48))
    with pytest.raises(ValueError, match="B×1×H×W"):
        embedded_model(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))


# ------------------------------------------------------------------------------------------------ detach


def test_fusion_and_detection_losses_train_disjoint_parameters(data_dir):
    torch.manual_seed(0)
    cfg = named_config("embedded")
    cfg.model.class_names = ["person"]
    model = build_model(cfg.model).train()
    ir, vis, boxes, labels = real_pair(data_dir, "010002", size=(256, 320))
    targets = [{"boxes": boxes, "labels": labels}]
    fusion_params = dict(model.fusion.named_parameters())
    detector_params = dict(model.detectors.named_parameters())

    def grads_of(params: dict) -> dict[str, float]:
        return {k: (0.0 if p.grad is None else p.grad.abs().sum().item()) for k, p in params.items()}

    out = model(ir, vis, targets=targets, labelled=torch.tensor([True]))
    assert out.det_losses and all(torch.isfinite(v) for v in out.det_losses.values())
    assert not out.att.requires_grad  # Att reaches the fusion head detached
    fusion_loss(out.fused, vis, ir, [boxes], out.load_loss, cfg.loss).total.backward()
    det = grads_of(detector_params)
    assert not any(det.values()), [k for k, v in det.items() if v][:5]
    fus = grads_of(fusion_params)
    assert fus["encoder_vis.conv1.weight"] > 0 and fus["encoder_ir.conv1.weight"] > 0

    model.zero_grad(set_to_none=True)
    out = model(ir, vis, targets=targets, labelled=torch.tensor([True]))
    sum(out.det_losses.values()).backward()
    fus = grads_of(fusion_params)
    assert not any(fus.values()), [k for k, v in fus.items() if v][:5]
    det = grads_of(detector_params)
    for part in ("backbone_vis.", "backbone_ir.", "attention_vis.", "attention_ir.", "mixing.", "head_vis.",
                 "head_ir."):
        assert any(v > 0 for k, v in det.items() if k.startswith(part)), part


# ------------------------------------------------------------------------------------------------ ablations

ABLATION_NAMES = ["embedded+wo_mole", "embedded+wo_moge", "embedded+att_local", "embedded+linear_combine",
                  "embedded+paper_att", "embedded+wo_mole+linear_combine"]


def experts_config(mole_e: int, mole_k: int, moge_e: int, moge_k: int) -> Config:
    data = merge(named_config("embedded").to_dict(), {"model": {
        "mole": {"num_experts": mole_e, "top_k": mole_k}, "moge": {"num_experts": moge_e, "top_k": moge_k}}})
    return Config.from_dict(data)


@pytest.mark.parametrize("name", ABLATION_NAMES)
def test_ablation_configs_build_run_and_train(name):
    cfg = named_config(name)
    m = cfg.model
    torch.manual_seed(0)
    model = build_model(m).train()
    ir, vis = torch.rand(2, 1, 48, 64), torch.rand(2, 1, 48, 64)
    out = model(ir, vis)
    assert out.fused.shape == (2, 1, 48, 64) and torch.isfinite(out.fused).all()
    expected_gates = ({"mole_fg", "mole_bg"} if m.local_mode == "mole" else set()) | ({"moge"} if m.use_moge else set())
    assert set(out.gates) == expected_gates
    loss = fusion_loss(out.fused, vis, ir, [torch.zeros(0, 4)] * 2, out.load_loss, LossConfig()).total
    loss.backward()
    assert model.fusion.encoder_ir.conv1.weight.grad.abs().sum() > 0
    if m.att_mode == "conv":  # the paper's Att convolutions are part of the fusion head and train with it
        assert model.fusion.att.branch_a.weight.grad is not None
    with torch.no_grad():
        assert model.eval()(ir, vis).fused.shape == (2, 1, 48, 64)


@pytest.mark.parametrize(("mole_e", "mole_k", "moge_e", "moge_k"), [(6, 3, 3, 1), (2, 1, 8, 4), (4, 4, 2, 2)])
def test_expert_count_and_top_k_are_configurable(mole_e, mole_k, moge_e, moge_k):
    cfg = experts_config(mole_e, mole_k, moge_e, moge_k)
    cfg.model.detector = None
    model = build_model(cfg.model)
    assert len(model.fusion.mole_fg.experts) == mole_e and len(model.fusion.moge.experts) == moge_e
    for train in (True, False):
        out = model.train(train)(torch.rand(3, 1, 40, 24), torch.rand(3, 1, 40, 24))
        assert out.fused.shape == (3, 1, 40, 24)
        expected = {"mole_fg": (mole_e, mole_k), "mole_bg": (mole_e, mole_k), "moge": (moge_e, moge_k)}
        for name, (n, k) in expected.items():
            gates = out.gates[name].gates
            assert gates.shape == (3, n)
            assert ((gates > 0).sum(1) == k).all()


def test_mole_with_an_odd_expert_count_is_rejected():
    with pytest.raises(ValueError, match="even number of experts"):
        build_model(experts_config(3, 1, 4, 2).model)


def test_unknown_ablation_and_modes_are_rejected():
    with pytest.raises(ValueError, match="unknown ablation"):
        named_config("embedded+wo_everything")
    for key, value in (("local_mode", "both"), ("att_mode", "mean")):
        cfg = fusion_only("embedded")
        setattr(cfg.model, key, value)
        with pytest.raises(ValueError, match=repr(value)):
            build_model(cfg.model)
    cfg = fusion_only("embedded")
    cfg.model.combine = "median"
    with pytest.raises(ValueError, match="combine"):
        build_model(cfg.model)(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))


def test_a_few_training_steps_with_fixed_att_reduce_the_fusion_loss(data_dir):
    """Spec §10: a train step on a small pair runs on CPU with the detector replaced by a fixed Att."""
    cfg = fusion_only("embedded", fixed_att=0.5)
    cfg.model.mole.grid = cfg.model.moge.grid = (8, 8)
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    ir, vis, boxes, _ = real_pair(data_dir, "010003", size=(64, 80))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        out = model(ir, vis)
        loss = fusion_loss(out.fused, vis, ir, [boxes], out.load_loss, cfg.loss)
        opt.zero_grad()
        loss.total.backward()
        opt.step()
        losses.append(loss.total.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0]
