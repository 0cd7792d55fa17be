"""`moe-fusion info` reports the parameter budget of every component (spec §2, §4, §5) and the config."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from moe_fusion_core.checkpoint import save_model
from moe_fusion_core.config import named_config
from moe_fusion_core.model import build_model
from moe_fusion_ros.cli import main


def info_json(capsys, *args: str) -> dict:
    assert main(["info", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def rows_by_name(info: dict) -> dict[str, dict]:
    return {r["name"]: r for r in info["components"]}


def test_paper_config_counts_match_the_spec(capsys):
    info = info_json(capsys, "--config", "paper")
    rows = rows_by_name(info)
    assert rows["encoder_vis"]["params"] == rows["encoder_ir"]["params"] == 14_032  # §2
    for mix in ("mole_fg", "mole_bg"):
        for i in range(4):
            assert rows[f"{mix}.expert{i}"]["params"] == 2_328  # §4.1
    for i in range(4):
        assert rows[f"moge.expert{i}"]["params"] == 115_457  # §5
    # gate matrices W_g and W_n, D×N each (§1.3): D = 614,400 (MoLE) and 768,000 (MoGE)
    assert rows["mole_fg.gate"]["params"] == rows["mole_bg.gate"]["params"] == 2 * 614_400 * 4
    assert rows["moge.gate"]["params"] == 2 * 768_000 * 4
    assert info["gates"]["mole_fg"]["in_features"] == 614_400
    assert info["gates"]["moge"]["in_features"] == 768_000
    t = info["totals"]
    assert t["encoders"] == 2 * 14_032 and t["local_experts"] == 8 * 2_328 and t["global_experts"] == 4 * 115_457
    assert t["fusion_head"] == 2 * 14_032 + 8 * 2_328 + 4 * 115_457 + 2 * 2 * 614_400 * 4 + 2 * 768_000 * 4
    # "Detectors ≈ 2×41 M" (§5 parameter budget)
    assert 40e6 < t["detector_vis"] < 42.5e6 and t["detector_vis"] == t["detector_ir"]
    assert t["total"] == t["fusion_head"] + t["detectors"]


def test_local_expert_rows_name_the_modality_they_receive(capsys):
    rows = rows_by_name(info_json(capsys, "--config", "embedded"))
    for mix in ("mole_fg", "mole_bg"):
        assert "visible" in rows[f"{mix}.expert0"]["note"] and "visible" in rows[f"{mix}.expert1"]["note"]
        assert "infrared" in rows[f"{mix}.expert2"]["note"] and "infrared" in rows[f"{mix}.expert3"]["note"]


def test_component_rows_partition_a_really_built_model(capsys):
    cfg = named_config("embedded")
    model = build_model(cfg.model)  # real tensors, counted independently of info's meta-device model
    info = info_json(capsys, "--config", "embedded")
    total = sum(p.numel() for p in model.parameters())
    assert info["totals"]["total"] == total
    assert sum(r["params"] for r in info["components"]) == total
    assert "other" not in rows_by_name(info)
    assert info["totals"]["fusion_head"] == sum(p.numel() for p in model.fusion.parameters())
    assert info["totals"]["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # embedded gate grids: MoLE 2·16·30·40, MoGE 160·15·20
    assert info["gates"]["mole_bg"]["in_features"] == 38_400 and info["gates"]["moge"]["in_features"] == 48_000


def test_fp16_size_matches_the_saved_fp16_checkpoint(capsys, tmp_path):
    cfg = named_config("embedded")
    ckpt = save_model(build_model(cfg.model), cfg, tmp_path / "ckpt", dtype=torch.float16)
    file_mb = (ckpt / "model.safetensors").stat().st_size / 1e6
    info = info_json(capsys, "--config", "embedded")
    assert info["totals"]["fp16_mb"] == pytest.approx(file_mb, abs=0.1)


def test_checkpoint_reports_its_own_config_and_stored_tensors(capsys, tmp_path):
    cfg = named_config("embedded+wo_mole")
    model = build_model(cfg.model)
    ckpt = save_model(model, cfg, tmp_path / "ckpt", dtype=torch.float16)
    info = info_json(capsys, "--checkpoint", str(ckpt))
    names = set(rows_by_name(info))
    assert not any(n.startswith("mole_") for n in names)  # the checkpoint's config, not the default one
    assert {"moge.gate", "encoder_vis", "detector_vis.backbone"} <= names
    assert info["config"]["model"]["local_mode"] == "none"
    assert info["checkpoint"]["stored_elements"] == sum(t.numel() for t in model.state_dict().values())
    assert info["checkpoint"]["dtypes"] == ["F16", "I64"]  # floats in fp16; BN batch counters stay int64
    # a bare .safetensors file (config in its metadata) works too
    info_file = info_json(capsys, "--checkpoint", str(ckpt / "model.safetensors"))
    assert info_file["totals"] == info["totals"]
    assert main(["info", "--checkpoint", str(ckpt)]) == 0
    table = capsys.readouterr().out
    assert f"checkpoint {ckpt}: {info['checkpoint']['file_mb']} MB" in table and "local_mode: none" in table


def test_ablation_configs_change_the_component_list(capsys):
    wo_moge = rows_by_name(info_json(capsys, "--config", "embedded+wo_moge"))
    assert "decoder" in wo_moge and not any(n.startswith("moge.") for n in wo_moge)
    att_local = rows_by_name(info_json(capsys, "--config", "embedded+att_local"))
    assert {"local_fg", "local_bg"} <= set(att_local) and "mole_fg.gate" not in att_local
    paper_att = rows_by_name(info_json(capsys, "--config", "embedded+paper_att"))
    assert paper_att["att_combiner"]["params"] == 2 * (2 + 1)  # two 1×1 conv branches 2→1 with bias


def test_yaml_config_with_base_and_overrides(capsys, tmp_path):
    f = tmp_path / "six.yaml"
    f.write_text(yaml.safe_dump({"base": "embedded", "model": {"moge": {"num_experts": 6, "top_k": 3}}}))
    info = info_json(capsys, "--config", str(f))
    rows = rows_by_name(info)
    assert [n for n in rows if n.startswith("moge.expert")] == [f"moge.expert{i}" for i in range(6)]
    assert info["gates"]["moge"]["top_k"] == 3 and info["gates"]["moge"]["num_experts"] == 6


def test_human_table_lists_components_totals_and_config(capsys):
    assert main(["info", "--config", "embedded"]) == 0
    out = capsys.readouterr().out
    for needle in ("encoder_vis", "14,032", "mole_fg.expert3", "moge.gate", "detector_ir.head", "fusion_head",
                   "fp16 size (MB)", "global_channels:"):
        assert needle in out, needle
    assert not out.lstrip().startswith("{")


def test_bad_sources_give_a_clear_error(capsys, tmp_path):
    assert main(["info", "--config", "nonsense"]) == 2
    assert "unknown config 'nonsense'" in capsys.readouterr().err
    assert main(["info", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "no checkpoint here" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    assert main(["info", "--checkpoint", str(corrupt)]) == 2
    assert "corrupt.safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # exactly one of --config / --checkpoint
        main(["info"])
