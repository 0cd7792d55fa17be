"""Checkpoints: safetensors + config, fp16 for deployment, atomic writes, clear errors, never unpickled."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from moe_fusion_core import checkpoint as ckpt_mod
from moe_fusion_core.checkpoint import (
    CheckpointError,
    atomic_write_dir,
    average_models,
    load_model,
    read_config,
    save_model,
)
from moe_fusion_core.config import Config, named_config
from moe_fusion_core.model import build_model


def fusion_only_config(name: str = "embedded") -> Config:
    cfg = named_config(name)
    cfg.model.detector = None
    return cfg


def trained_looking_model(cfg: Config, seed: int = 0) -> torch.nn.Module:
    """A model whose gates are not all zero (zero-init weights would hide mix-ups between tensors)."""
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gate" in name:
                p.normal_(0, 1e-3)
    return model.eval()


def pair(h: int = 40, w: int = 56, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, h, w, generator=g), torch.rand(1, 1, h, w, generator=g)


class Trap:
    """Unpickling this object creates a marker file: proof that a loader executed pickle code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_fp32_round_trip_restores_every_tensor_and_the_config(tmp_path):
    cfg = fusion_only_config()
    model = trained_looking_model(cfg)
    path = save_model(model, cfg, tmp_path / "ck")
    assert sorted(p.name for p in path.iterdir()) == ["config.yaml", "model.safetensors"]
    loaded, cfg2 = load_model(path)
    assert cfg2 == cfg
    ref = model.state_dict()
    got = loaded.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    ir, vis = pair()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ir, vis).fused, model(ir, vis).fused, rtol=0, atol=0)


def test_fp16_checkpoint_stores_half_precision_and_loads_back_as_fp32(tmp_path):
    cfg = fusion_only_config()
    model = trained_looking_model(cfg)
    full = save_model(model, cfg, tmp_path / "fp32")
    half = save_model(model, cfg, tmp_path / "fp16", dtype=torch.float16)
    with safe_open(str(half / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118 (safe_open is not a dict)
        assert "config" in f.metadata()
    size32 = (full / "model.safetensors").stat().st_size
    size16 = (half / "model.safetensors").stat().st_size
    assert size16 == pytest.approx(size32 / 2, rel=0.02)
    loaded, _ = load_model(half)
    for k, v in model.state_dict().items():
        got = loaded.state_dict()[k]
        assert got.dtype == torch.float32
        assert torch.equal(got, v.half().float()), k
    ir, vis = pair()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ir, vis).fused, model(ir, vis).fused, rtol=0, atol=2e-2)
    bf16, _ = load_model(half, dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}


def test_detector_buffers_and_integer_counters_survive_a_round_trip(tmp_path):
    cfg = named_config("embedded")
    model = build_model(cfg.model).train()
    with torch.no_grad():  # move the BN running statistics away from their initial values
        model.detectors.features(*(torch.rand(2, 1, 64, 64) for _ in range(2)))
    path = save_model(model, cfg, tmp_path / "ck", dtype=torch.float16)
    loaded, _ = load_model(path)
    for k, v in model.state_dict().items():
        got = loaded.state_dict()[k]
        if v.is_floating_point():
            assert torch.equal(got, v.half().float()), k
        else:
            assert got.dtype == v.dtype and torch.equal(got, v), k  # e.g. BN num_batches_tracked


def test_a_bare_safetensors_file_carries_its_config_in_the_metadata(tmp_path):
    cfg = fusion_only_config("embedded+linear_combine")
    path = save_model(trained_looking_model(cfg), cfg, tmp_path / "ck")
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((path / "model.safetensors").read_bytes())
    assert read_config(lone) == cfg
    _, cfg2 = load_model(lone)
    assert cfg2.model.combine == "linear"


def test_failing_writer_leaves_no_partial_folder(tmp_path):
    def writer(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_dir(tmp_path / "ck", writer)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    cfg = fusion_only_config()
    old = trained_looking_model(cfg, seed=0)
    path = save_model(old, cfg, tmp_path / "ck")
    before = (path / "model.safetensors").read_bytes()

    def broken_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)
        raise OSError("killed mid-write")

    monkeypatch.setattr(ckpt_mod, "save_file", broken_save_file)
    with pytest.raises(OSError, match="killed mid-write"):
        save_model(trained_looking_model(cfg, seed=1), cfg, path)
    monkeypatch.undo()
    assert (path / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    load_model(path)


def test_overwriting_a_checkpoint_replaces_it_without_leftovers(tmp_path):
    cfg = fusion_only_config()
    path = save_model(trained_looking_model(cfg, seed=0), cfg, tmp_path / "ck")
    new = trained_looking_model(cfg, seed=5)
    save_model(new, cfg, path)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    loaded, _ = load_model(path)
    assert torch.equal(loaded.state_dict()["fusion.moge.gate.w_gate"], new.state_dict()["fusion.moge.gate.w_gate"])


def test_saved_files_follow_the_umask_so_other_users_can_read_them(tmp_path):
    cfg = fusion_only_config()
    old = os.umask(0o022)
    try:
        path = save_model(trained_looking_model(cfg), cfg, tmp_path / "ck")
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in path.iterdir()}
    assert modes == {"model.safetensors": 0o644, "config.yaml": 0o644}


@pytest.fixture
def saved(tmp_path) -> Path:
    cfg = fusion_only_config()
    return save_model(trained_looking_model(cfg), cfg, tmp_path / "ck")


def test_truncated_weights_raise_checkpoint_error_naming_the_file(saved):
    f = saved / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read weights"):
        load_model(saved)


def test_garbage_weights_raise_checkpoint_error(saved):
    (saved / "model.safetensors").write_bytes(b"this is not a tensor file" * 10)
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_model(saved)


def test_weights_of_another_architecture_raise_checkpoint_error_listing_keys(saved):
    other = fusion_only_config("embedded+wo_mole")
    (saved / "config.yaml").write_text(other.to_yaml())
    with pytest.raises(CheckpointError, match=r"do not match the config.*unexpected \['fusion\.mole_"):
        load_model(saved)


def test_weights_of_another_width_raise_checkpoint_error_naming_the_shapes(saved):
    narrow = fusion_only_config()
    narrow.model.global_channels = (16, 16, 16)
    (saved / "config.yaml").write_text(narrow.to_yaml())
    expected = r"do not match the config.*shape mismatch.*\(32, 160, 3, 3\) vs \(16, 160, 3, 3\)"
    with pytest.raises(CheckpointError, match=expected):
        load_model(saved)


def test_missing_or_incomplete_checkpoints_name_the_problem(tmp_path, saved):
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_model(tmp_path / "nowhere")
    (saved / "config.yaml").unlink()
    # the weights still carry the config in their metadata
    assert load_model(saved)[1].model.name == "embedded"
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(2)}, str(bare))
    with pytest.raises(CheckpointError, match="no config in the file's metadata"):
        load_model(bare)
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_model(saved)


def test_invalid_config_yaml_raises_checkpoint_error_naming_the_key(saved):
    data = yaml.safe_load((saved / "config.yaml").read_text())
    data["model"]["bogus_width"] = 3
    (saved / "config.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(CheckpointError, match=r"config\.model\.bogus_width"):
        load_model(saved)


def test_pickle_files_are_rejected_without_being_executed(tmp_path, saved):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"w": Trap(marker)})
    as_pt = tmp_path / "model.pt"
    torch.save({"w": Trap(marker)}, as_pt)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(as_pt)
    (saved / "model.safetensors").write_bytes(payload)  # a pickle disguised as the weights file
    with pytest.raises(CheckpointError):
        load_model(saved)
    (saved / "config.yaml").write_text(f"!!python/object/apply:pathlib.Path.touch [{marker}]\n")
    with pytest.raises(CheckpointError, match="invalid config"):
        read_config(saved)
    assert not marker.exists()


def test_export_command_writes_an_fp16_model_that_loads_and_matches(tmp_path):
    from moe_fusion_ros.cli import main

    cfg = fusion_only_config()
    model = trained_looking_model(cfg)
    src = save_model(model, cfg, tmp_path / "final")
    assert main(["export", str(src), str(tmp_path / "deploy"), "--note", "trained_on=msrs"]) == 0
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "deploy" / "model.safetensors"))
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float16}
    with safe_open(str(tmp_path / "deploy" / "model.safetensors"), "pt") as f:
        assert f.metadata()["trained_on"] == "msrs"
    loaded, cfg2 = load_model(tmp_path / "deploy")
    assert cfg2 == cfg
    ir, vis = pair()
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(ir, vis).fused, model(ir, vis).fused, atol=2e-2)
    assert main(["export", str(src), str(tmp_path / "x"), "--note", "novalue"]) == 2


def test_weight_averaging_gives_the_weighted_mean_of_every_weight_and_a_loadable_checkpoint(tmp_path):
    cfg = fusion_only_config()
    a, b = trained_looking_model(cfg, seed=0), trained_looking_model(cfg, seed=1)
    pa, pb = save_model(a, cfg, tmp_path / "a"), save_model(b, cfg, tmp_path / "b")
    mean, cfg2 = average_models([pa, pb])
    assert cfg2 == cfg
    sa, sb, sm = a.state_dict(), b.state_dict(), mean.state_dict()
    moved = 0
    for k, v in sm.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (sa[k] + sb[k]) / 2, rtol=0, atol=1e-7)
            moved += not torch.equal(sa[k], sb[k])
        else:
            assert torch.equal(v, sa[k]), k
    assert moved > 10  # the two models really differ, so the mean is not one of them
    weighted, _ = average_models([pa, pb], weights=[3, 1])
    k = next(k for k in sa if "gate" in k and sa[k].is_floating_point())
    torch.testing.assert_close(weighted.state_dict()[k], 0.75 * sa[k] + 0.25 * sb[k], rtol=0, atol=1e-7)
    loaded, _ = load_model(save_model(mean, cfg, tmp_path / "mean"))
    ir, vis = pair()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ir, vis).fused, mean.eval()(ir, vis).fused, rtol=0, atol=0)


def test_weight_averaging_refuses_other_architectures_and_mismatched_weights(tmp_path):
    cfg = fusion_only_config()
    fast = fusion_only_config("fast")
    pa = save_model(trained_looking_model(cfg), cfg, tmp_path / "a")
    pf = save_model(trained_looking_model(fast), fast, tmp_path / "f")
    with pytest.raises(CheckpointError, match="architecture"):
        average_models([pa, pf])
    with pytest.raises(ValueError, match="at least two"):
        average_models([pa])
    with pytest.raises(ValueError, match="one positive weight per checkpoint"):
        average_models([pa, pa], weights=[1.0])
