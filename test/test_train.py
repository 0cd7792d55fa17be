"""Training: the fusion loss falls on real pairs, a killed run resumes exactly, torchrun works on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "moe_fusion_ros.cli"]


def write_config(tmp_path: Path, **train) -> Path:
    """A small embedded config for CPU tests: fusion head unchanged, 64×64 crops, no workers."""
    cfg = {
        "base": "embedded",
        "model": {"class_names": ["person"]},
        "loss": {"unlabelled_target": "max"},
        "train": {"input_size": None, "crop": [64, 64], "batch_size": 2, "num_workers": 0, "lr": 1e-3,
                  "keep_unlabelled": True, "checkpoint_every": 3, "log_every": 1, "val_fraction": 0.0,
                  "seed": 3, **train},
    }
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def train_cli(cfg: Path, data: list[Path], out: Path, *extra: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [*CLI, "train", "--config", str(cfg), "--data", *map(str, data), "--out", str(out), "--no-progress",
           *extra]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kw)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_short_cpu_run_on_real_pairs_lowers_fusion_loss(tmp_path, data_dir):
    from moe_fusion_core.config import load_config
    from moe_fusion_core.train import Trainer

    cfg = load_config(write_config(tmp_path, steps=40, checkpoint_every=40, lr=2e-3))
    torch.set_num_threads(2)
    trainer = Trainer(cfg, [data_dir / "msrs"], tmp_path / "run", device="cpu", progress=False)
    final = trainer.train()
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 41))
    for key in ("loss", "loss_pixel", "loss_grad", "loss_load", "loss_det", "load_mole_fg", "load_moge"):
        assert key in rows[0]
    first = sum(r["loss_pixel"] + 10 * r["loss_grad"] for r in rows[:5]) / 5
    last = sum(r["loss_pixel"] + 10 * r["loss_grad"] for r in rows[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert (final / "model.safetensors").is_file() and (final / "config.yaml").is_file()


def test_detection_losses_train_on_labelled_frames(tmp_path, data_dir):
    from moe_fusion_core.config import load_config
    from moe_fusion_core.train import Trainer

    cfg = load_config(write_config(tmp_path, steps=2, crop=[128, 128], keep_unlabelled=False))
    trainer = Trainer(cfg, [data_dir / "llvip_det"], tmp_path / "run", device="cpu", progress=False)
    trainer.train()
    rows = read_metrics(tmp_path / "run")
    assert all(r["loss_det"] > 0 for r in rows)


def test_frozen_detectors_keep_weights_and_statistics_while_the_fusion_head_trains(tmp_path, data_dir):
    from moe_fusion_core.config import load_config
    from moe_fusion_core.train import Trainer

    cfg = load_config(write_config(tmp_path, steps=2, crop=[128, 128], keep_unlabelled=False,
                                   freeze_detectors=True))
    trainer = Trainer(cfg, [data_dir / "llvip_det"], tmp_path / "run", device="cpu", progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    final = trainer.train()
    after = load_file(str(final / "model.safetensors"))
    det = [k for k in before if k.startswith("detectors.")]
    fus = [k for k in before if k.startswith("fusion.") and before[k].is_floating_point()]
    assert any("running_mean" in k for k in det)
    assert all(torch.equal(before[k], after[k]) for k in det)
    assert any(not torch.equal(before[k], after[k]) for k in fus)
    assert all(r["loss_det"] == 0 for r in read_metrics(tmp_path / "run"))


def test_detector_head_stage_trains_only_the_detection_heads(tmp_path, data_dir):
    """freeze_fusion + freeze_detector_features: the attention maps (and so the fused image) stay bit-identical."""
    from moe_fusion_core.config import load_config
    from moe_fusion_core.train import Trainer

    cfg = load_config(write_config(tmp_path, steps=2, crop=[128, 128], keep_unlabelled=False, freeze_fusion=True,
                                   freeze_detector_features=True))
    trainer = Trainer(cfg, [data_dir / "llvip_det"], tmp_path / "run", device="cpu", progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    final = trainer.train()
    after = load_file(str(final / "model.safetensors"))
    heads = [k for k in before if ".head_vis." in k or ".head_ir." in k]
    fixed = [k for k in before if k not in heads]
    assert any(k.startswith("detectors.backbone_vis") and "running_mean" in k for k in fixed)
    assert all(torch.equal(before[k], after[k]) for k in fixed)  # fusion head, backbones, FPN, attention, BN stats
    assert any(not torch.equal(before[k], after[k]) for k in heads)
    rows = read_metrics(tmp_path / "run")
    assert all(r["loss_det"] > 0 and r["loss_pixel"] == 0 for r in rows)
    cfg.train.freeze_detectors = True
    with pytest.raises(ValueError, match="nothing to train"):
        Trainer(cfg, [data_dir / "llvip_det"], tmp_path / "run2", device="cpu", progress=False)


def test_attention_anchor_trains_detector_features_but_not_what_makes_the_attention(tmp_path, data_dir):
    """train.attention_anchor: backbones/FPN learn, mixing and attention layers and BN statistics stay, and the
    anchor loss (distance of the attention maps from the initial model's) is logged."""
    from moe_fusion_core.config import load_config
    from moe_fusion_core.train import Trainer

    cfg = load_config(write_config(tmp_path, steps=2, crop=[128, 128], keep_unlabelled=False, freeze_fusion=True,
                                   freeze_detector_bn=True, attention_anchor=10.0))
    trainer = Trainer(cfg, [data_dir / "llvip_det"], tmp_path / "run", device="cpu", progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    after = load_file(str(trainer.train() / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("detectors.backbone_vis.body") for k in changed)
    assert not any(".mixing." in k or ".attention_" in k or "running_" in k or k.startswith("fusion.")
                   for k in changed)
    rows = read_metrics(tmp_path / "run")
    assert rows[0]["loss_att_anchor"] == 0.0 and rows[-1]["loss_att_anchor"] > 0.0
    cfg.train.freeze_detector_features = True
    with pytest.raises(ValueError, match="attention_anchor needs trainable detector features"):
        Trainer(cfg, [data_dir / "llvip_det"], tmp_path / "run2", device="cpu", progress=False)


def test_killed_run_resumes_to_identical_weights(tmp_path, data_dir):
    cfg = write_config(tmp_path, steps=12)
    data = [data_dir / "msrs"]
    ref = train_cli(cfg, data, tmp_path / "ref")
    assert ref.wait(timeout=600) == 0, ref.stdout.read()

    run = tmp_path / "killed"
    proc = train_cli(cfg, data, run, start_new_session=True)
    latest = run / "latest"
    deadline = time.time() + 300
    while not latest.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest.is_file(), "the run never wrote a checkpoint"
    killed_at = int(latest.read_text().strip().split("_")[1])
    assert killed_at < 12

    resumed = train_cli(cfg, data, run, "--resume")
    out = resumed.stdout.read()
    assert resumed.wait(timeout=600) == 0, out
    a = load_file(str(tmp_path / "ref" / "final" / "model.safetensors"))
    b = load_file(str(run / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == list(range(1, 13)), steps


def test_seed_flag_replicates_a_recipe_with_another_seed(tmp_path, data_dir):
    """`--seed N` overrides train.seed: the run records it and draws other crops, so its first loss differs."""
    cfg = write_config(tmp_path, steps=1, checkpoint_every=1)
    runs = {}
    for name, extra in (("recipe", ()), ("replicate", ("--seed", "5"))):
        proc = train_cli(cfg, [data_dir / "msrs"], tmp_path / name, *extra)
        assert proc.wait(timeout=300) == 0, proc.stdout.read()
        runs[name] = tmp_path / name
    assert yaml.safe_load((runs["replicate"] / "config.yaml").read_text())["train"]["seed"] == 5
    assert yaml.safe_load((runs["recipe"] / "config.yaml").read_text())["train"]["seed"] == 3
    assert read_metrics(runs["replicate"])[0]["loss"] != read_metrics(runs["recipe"])[0]["loss"]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, data_dir):
    proc = train_cli(write_config(tmp_path, steps=2), [data_dir / "msrs"], tmp_path / "none", "--resume")
    out = proc.stdout.read()
    assert proc.wait(timeout=300) != 0
    assert "no checkpoint" in out


def test_torchrun_two_processes_on_cpu_gloo(tmp_path, data_dir):
    cfg = write_config(tmp_path, steps=3, checkpoint_every=3)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "moe_fusion_ros.cli", "train", "--config", str(cfg), "--data", str(data_dir / "msrs"),
           "--out", str(tmp_path / "ddp"), "--no-progress", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r["step"] for r in read_metrics(tmp_path / "ddp")] == [1, 2, 3]
    assert (tmp_path / "ddp" / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("missing", ["nowhere"])
def test_missing_data_folder_is_reported(tmp_path, missing):
    proc = train_cli(write_config(tmp_path, steps=1), [tmp_path / missing], tmp_path / "r")
    out = proc.stdout.read()
    assert proc.wait(timeout=300) != 0
    assert missing in out


@pytest.mark.parametrize("recipe", sorted((REPO / "training").glob("*.yaml")), ids=lambda p: p.name)
def test_every_training_recipe_loads(recipe):
    from moe_fusion_core.config import load_config
    from moe_fusion_core.losses import BACKGROUND_TARGETS

    cfg = load_config(recipe)  # unknown keys and bad types raise, naming the key
    assert cfg.loss.unlabelled_target in ("mean", "max")
    assert cfg.loss.background_target in BACKGROUND_TARGETS
    assert cfg.train.batch_size >= 1 and (cfg.train.steps or cfg.train.epochs) > 0


def test_default_model_was_trained_with_its_documented_recipe():
    """The shipped config.yaml carries the model, loss and schedule of training/shared_v9_tail.yaml (v9: the mean of
    that run and v8, training/average_weights.py)."""
    from moe_fusion_core.checkpoint import read_config
    from moe_fusion_core.config import load_config

    shipped = read_config(REPO / "moe_fusion_core" / "default_model")
    recipe = load_config(REPO / "training" / "shared_v9_tail.yaml")
    assert shipped.loss == recipe.loss
    assert shipped.train == recipe.train
    assert shipped.model == recipe.model


def test_detail_target_script_scores_the_rule_against_the_baselines(data_dir):
    """training/detail_target.py: a zero-gain rule scores exactly as max fusion; a positive gain changes SD/VIF."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("detail_target", REPO / "training" / "detail_target.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.score_folder(data_dir / "tno", [(0.0, 8.0), (0.3, 8.0)], 2)
    assert set(res) == {"average", "max", "max+0·detail(σ=8)", "max+0.3·detail(σ=8)"}
    np.testing.assert_array_equal(res["max+0·detail(σ=8)"], res["max"])
    boosted = res["max+0.3·detail(σ=8)"]
    assert boosted[2] > res["max"][2] and boosted[5] > res["max"][5]  # SD and AG rise with local contrast


def test_distillation_pulls_the_fused_image_towards_the_teacher_and_leaves_the_teacher_alone(tmp_path, data_dir):
    """loss.distill_weight + train.teacher: the L1 distance to the teacher's fused image is logged and falls while
    the student trains; the teacher file is untouched; one without the other, or with a frozen fusion head, is
    refused."""
    from moe_fusion_core.checkpoint import save_model
    from moe_fusion_core.config import load_config
    from moe_fusion_core.model import build_model
    from moe_fusion_core.train import Trainer

    base = load_config(write_config(tmp_path, steps=1))
    torch.manual_seed(0)
    save_model(build_model(base.model), base, tmp_path / "teacher")
    teacher_bytes = (tmp_path / "teacher" / "model.safetensors").read_bytes()
    cfg = load_config(write_config(tmp_path, steps=12, teacher=str(tmp_path / "teacher")))
    cfg.loss.distill_weight = 5.0
    Trainer(cfg, [data_dir / "msrs"], tmp_path / "run", device="cpu", progress=False).train()
    rows = read_metrics(tmp_path / "run")
    first, last = np.mean([r["loss_distill"] for r in rows[:3]]), np.mean([r["loss_distill"] for r in rows[-3:]])
    assert last < first
    assert (tmp_path / "teacher" / "model.safetensors").read_bytes() == teacher_bytes
    cfg.loss.distill_weight = 0.0
    with pytest.raises(ValueError, match="go together"):
        Trainer(cfg, [data_dir / "msrs"], tmp_path / "run2", device="cpu", progress=False)
    cfg.loss.distill_weight, cfg.train.freeze_fusion = 5.0, True
    with pytest.raises(ValueError, match="needs a trainable fusion head"):
        Trainer(cfg, [data_dir / "msrs"], tmp_path / "run3", device="cpu", progress=False)
