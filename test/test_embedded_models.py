"""The embedded models by name (#23): ``default`` and ``fast`` select the models shipped in the package wherever a
checkpoint is accepted (engine, load_model, the fuse, replay, bench, export and info commands, the node's
``model.checkpoint``), resolved by one rule (moe_fusion_core/embedded.py). Inputs are tiny: these tests check
which model was loaded, not what it computes (test_deploy.py and test_onnx_export.py do, for both models)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from moe_fusion_core.checkpoint import CheckpointError, load_model, read_config
from moe_fusion_core.embedded import EMBEDDED_MODELS, resolve_checkpoint
from moe_fusion_core.engine import FusionEngine
from moe_fusion_ros.cli import main

NAMES = sorted(EMBEDDED_MODELS)


def model_name(name: str) -> str:
    """The config name stored with an embedded model (``embedded`` for ``default``, ``fast`` for ``fast``)."""
    return read_config(EMBEDDED_MODELS[name]).model.name


def test_the_two_embedded_models_are_different_models():
    """Otherwise every test below would pass with the names mixed up."""
    assert model_name("default") == "embedded" and model_name("fast") == "fast"


def test_names_empty_and_none_resolve_to_the_package_folders_and_other_paths_pass_through(tmp_path, monkeypatch):
    pkg = Path(__file__).resolve().parents[1] / "moe_fusion_core"
    assert dict(EMBEDDED_MODELS) == {"default": pkg / "default_model", "fast": pkg / "fast_model"}
    for spec in (None, "", "default", Path("default")):
        assert resolve_checkpoint(spec) == EMBEDDED_MODELS["default"], spec
    assert resolve_checkpoint("fast") == resolve_checkpoint(Path("fast")) == EMBEDDED_MODELS["fast"]
    assert resolve_checkpoint(tmp_path / "run") == tmp_path / "run"  # not there: the loader reports it
    assert resolve_checkpoint("fastest") == Path("fastest")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fast").mkdir()  # an existing path wins over a name; None still means the embedded default
    (tmp_path / "default").mkdir()
    assert resolve_checkpoint("fast") == Path("fast") and resolve_checkpoint(None) == EMBEDDED_MODELS["default"]


def test_an_unknown_checkpoint_names_the_embedded_models_and_a_missing_one_says_reinstall(tmp_path, monkeypatch):
    for spec in ("fastest", tmp_path / "no_such_model"):
        with pytest.raises(CheckpointError, match=r"no checkpoint here .*embedded model: default, fast"):
            load_model(spec)
    monkeypatch.setitem(EMBEDDED_MODELS, "fast", tmp_path / "fast_model")
    with pytest.raises(FileNotFoundError, match=r"the embedded 'fast' model is missing from .*reinstall"):
        FusionEngine("fast", device="cpu")


@pytest.mark.parametrize("name", NAMES)
def test_load_model_read_config_and_the_engine_take_the_names(name):
    _, cfg = load_model(name)
    assert cfg.model.name == read_config(name).model.name == model_name(name)
    eng = FusionEngine(name, device="cpu", detections=False)
    assert eng.checkpoint == EMBEDDED_MODELS[name] and eng.config.model.name == model_name(name)
    if name == "default":
        assert FusionEngine(device="cpu", detections=False).checkpoint == EMBEDDED_MODELS["default"]


@pytest.mark.parametrize("name", NAMES)
def test_node_parameters_build_the_engine_of_the_named_model(name):
    """The node builds its engine from ``FusionParams.engine_options()``; an empty model.checkpoint is default."""
    from moe_fusion_ros.params import validate

    p = validate({"model.checkpoint": name, "model.detections": False})
    assert p.engine_options()["checkpoint"] == name
    assert FusionEngine(device="cpu", **p.engine_options()).checkpoint == EMBEDDED_MODELS[name]
    assert resolve_checkpoint(validate({}).engine_options()["checkpoint"]) == EMBEDDED_MODELS["default"]


@pytest.mark.parametrize("name", NAMES)
def test_info_takes_the_names(name, capsys):
    assert main(["info", "--checkpoint", name, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["source"] == info["checkpoint"]["path"] == str(EMBEDDED_MODELS[name])
    assert info["config"]["model"]["name"] == model_name(name)


def test_export_takes_a_name(tmp_path, capsys):
    assert main(["export", "fast", str(tmp_path / "out"), "--dtype", "fp32"]) == 0
    assert read_config(tmp_path / "out").model.name == "fast"
    assert main(["export", str(tmp_path / "out2")]) == 2  # one positional is the checkpoint: OUT is missing
    assert "missing OUT" in capsys.readouterr().err


def test_fuse_takes_a_name(tmp_path, sample_dir):
    for side in ("ir", "vis"):
        (tmp_path / side).mkdir()
        src = next((sample_dir / "pairs" / side).glob("0111_1753_0000.*"))
        img = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(tmp_path / side / f"pair{src.suffix}"), cv2.resize(img, (96, 72)))
    assert main(["fuse", "--ir", str(tmp_path / "ir"), "--vis", str(tmp_path / "vis"), "--out", str(tmp_path / "out"),
                 "--checkpoint", "fast", "--device", "cpu", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["fused"] == 1 and summary["checkpoint"] == str(EMBEDDED_MODELS["fast"])


def test_replay_takes_a_name(tmp_path, sample_dir):
    report = tmp_path / "report.json"
    assert main(["replay", str(sample_dir / "bag"), "--out", str(tmp_path / "fused"), "--report", str(report),
                 "--checkpoint", "fast", "--device", "cpu", "--no-progress", "--no-metrics", "--max-pairs", "1"]) == 0
    rep = json.loads(report.read_text())
    assert rep["fused"] == 1 and rep["checkpoint"] == str(EMBEDDED_MODELS["fast"])


def test_bench_takes_a_name(tmp_path, sample_dir):
    out = tmp_path / "bench.json"
    assert main(["bench", "--checkpoint", "fast", "--device", "cpu", "--sizes", "64x48", "--iters", "1",
                 "--warmup", "0", "--json", str(out), "--pair-dir", str(sample_dir / "pairs")]) == 0
    rows = json.loads(out.read_text())
    assert rows and {r["config"] for r in rows} == {"fast"}

