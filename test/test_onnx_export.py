"""``moe-fusion export --onnx``: the exported graph under ONNX Runtime answers as PyTorch does (issue #16), for each
embedded model (``default``, ``fast``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install -r requirements-dev.txt)")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -r requirements-dev.txt)")

from content import assert_real_picture, assert_same_picture  # noqa: E402
from real_pairs import msrs_pairs  # noqa: E402

from moe_fusion_core.checkpoint import read_config  # noqa: E402
from moe_fusion_core.embedded import EMBEDDED_MODELS  # noqa: E402
from moe_fusion_core.engine import DEFAULT_MODEL_DIR, FusionEngine  # noqa: E402
from moe_fusion_ros.cli import main  # noqa: E402

STEMS = ("00537D", "01023N")  # MSRS pairs with several people


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.fixture(scope="module", params=sorted(EMBEDDED_MODELS))
def embedded(request) -> str:
    """The name of a shipped model."""
    return request.param


def export_args(name: str) -> list[str]:
    """``moe-fusion export`` naming the embedded model; the default one is what it exports without a checkpoint."""
    return ["export"] if name == "default" else ["export", name]


@pytest.fixture(scope="module")
def graph(embedded, tmp_path_factory) -> Path:
    """The shipped model with detections, height and width dynamic, exported through the CLI."""
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert main([*export_args(embedded), "--onnx", str(out), "--size", "192x160", "--dynamic"]) == 0
    return out


def _pairs(data_dir, size) -> list[tuple[np.ndarray, np.ndarray]]:
    return msrs_pairs(data_dir, STEMS, size)


def test_exported_graph_has_the_documented_inputs_outputs_and_opset(graph, embedded):
    proto = onnx.load(str(graph))
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input] == ["ir", "vis"]
    assert [o.name for o in proto.graph.output] == ["fused", "gates_mole_fg", "gates_mole_bg", "gates_moge",
                                                    "boxes", "scores", "labels"]
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, "height", "width"]  # traced at 192x160, any size runs
    (config,) = [p.value for p in proto.metadata_props if p.key == "moe_fusion_config"]
    want = read_config(EMBEDDED_MODELS[embedded]).to_dict()  # the model named (none: the default one)
    assert json.loads(config) == json.loads(json.dumps(want))


@pytest.mark.parametrize("size", [(320, 240), (301, 227)])  # the traced size differs; 301x227 needs padding
def test_onnxruntime_matches_pytorch_on_real_pairs(graph, embedded, data_dir, size):
    """Fused image within 1 grey level; every detection above the score threshold matched at IoU ≥ 0.9."""
    ort = FusionEngine(graph, device="cpu", backend="onnxruntime")
    ref = FusionEngine(embedded, device="cpu", deploy=False)
    assert ort.path == "onnxruntime" and ort.detections and ort.class_names == ref.class_names
    matched = 0
    for ir, vis in _pairs(data_dir, size):
        a, b = ort.fuse(ir, vis), ref.fuse(ir, vis)
        assert_real_picture(b.fused, *ref.prepare(ir, vis))  # real content, not zeros against zeros
        assert_same_picture(a.fused, b.fused, "ONNX Runtime vs PyTorch")
        for k in b.gates:
            np.testing.assert_allclose(a.gates[k], b.gates[k], atol=1e-4)
        assert len(a.detections) == len(b.detections)
        for d in b.detections:
            best = max((_iou(d.box, e.box) for e in a.detections if e.class_id == d.class_id), default=0.0)
            assert best >= 0.9, (d, best)
            matched += 1
    assert matched > 0, "the test pairs must have detections above the threshold"


def test_fused_only_batched_graph_and_engine_batches(embedded, tmp_path, data_dir):
    out = tmp_path / "fused.onnx"
    assert main([*export_args(embedded), "--onnx", str(out), "--fused-only", "--size", "160x128", "--batch", "2"]) == 0
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["fused", "gates_mole_fg", "gates_mole_bg",
                                                                   "gates_moge"]
    eng = FusionEngine(out, device="cpu", backend="onnxruntime")
    assert not eng.detections
    pairs = _pairs(data_dir, (160, 128))
    ref = FusionEngine(embedded, device="cpu", detections=False).fuse_batch(pairs)
    for a, b in zip(eng.fuse_batch(pairs), ref):
        assert np.abs(a.fused.astype(int) - b.fused.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="exported for batch 2, got 3 pairs"):
        eng.fuse_batch(pairs + pairs[:1])


def test_export_and_backend_errors_are_clear(tmp_path):
    assert main(["export", str(DEFAULT_MODEL_DIR), "--onnx", str(tmp_path / "x.onnx"), "--batch", "2"]) == 2
    assert main(["export", str(DEFAULT_MODEL_DIR), "--onnx", str(tmp_path / "x.onnx"), "--size", "640"]) == 2
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(ValueError, match="runs the exported fp32 graph"):
        FusionEngine(device="cpu", backend="onnxruntime", precision="bf16")
    with pytest.raises(FileNotFoundError, match="not found"):
        FusionEngine(tmp_path / "missing.onnx", device="cpu", backend="onnxruntime")
    with pytest.raises(ValueError, match="backend must be one of"):
        FusionEngine(device="cpu", backend="tensorrt")


def test_a_torch_checkpoint_on_the_onnxruntime_backend_is_exported_once_into_the_cache(untrained_model, tmp_path,
                                                                                        monkeypatch, data_dir):
    """backend="onnxruntime" with a checkpoint folder (the node's default checkpoint): both graphs are exported
    into $MOE_FUSION_CACHE on first use and reused by the next engine; the result matches PyTorch."""
    monkeypatch.setenv("MOE_FUSION_CACHE", str(tmp_path / "cache"))
    eng = FusionEngine(untrained_model, device="cpu", backend="onnxruntime")
    graphs = sorted((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert [g.name.split("-")[1] for g in graphs] == ["det", "fused"] and eng.detections
    stamps = [g.stat().st_mtime_ns for g in graphs]
    again = FusionEngine(untrained_model, device="cpu", backend="onnxruntime", detections=False)
    assert [g.stat().st_mtime_ns for g in graphs] == stamps and not again.detections  # reused, not re-exported
    ref = FusionEngine(untrained_model, device="cpu", detections=False)
    for ir, vis in _pairs(data_dir, (160, 128)):
        assert np.abs(again.fuse(ir, vis).fused.astype(int) - ref.fuse(ir, vis).fused.astype(int)).max() <= 1


def test_the_onnx_cache_is_rebuilt_when_the_weights_the_config_or_any_export_option_change(untrained_model,
                                                                                          tmp_path, monkeypatch):
    """The cache key covers everything the graph depends on; an unchanged checkpoint reuses its graph. (The
    export itself is recorded, not run: test_a_torch_checkpoint_... above runs a real one.)"""
    import shutil

    import yaml
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    import moe_fusion_core.onnx_export as ox

    exports = []

    def record(model, cfg, out, **options):
        exports.append(options)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(b"graph")
        return Path(out)

    monkeypatch.setattr(ox, "export_onnx", record)
    ckpt, cache = tmp_path / "model", tmp_path / "cache"
    shutil.copytree(untrained_model, ckpt)

    def exported(variants=(True,), **options) -> int:
        before = len(exports)
        ox.cached_exports(ckpt, variants, cache, **options)
        return len(exports) - before

    assert exported() == 1 and exported() == 0  # exported once, then reused
    for option, value in {"size": (320, 240), "batch": 2, "dynamic": False, "moe": "dense"}.items():
        assert exported(**{option: value}) == 1, option
        assert exports[-1][option] == value and exported(**{option: value}) == 0, option
    assert exported((False,)) == 1 and exports[-1]["fused_only"] is False  # the graph with detections
    cfg = yaml.safe_load((ckpt / "config.yaml").read_text())
    cfg["model"]["detector"]["score_threshold"] = 0.55  # same weights, another config
    (ckpt / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert exported() == 1 and exported() == 0
    weights = ckpt / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(weights))
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name] + 0.01  # same config, other weights
    save_file(tensors, str(weights), metadata=meta)
    assert exported() == 1 and exported() == 0
    with pytest.raises(ValueError, match="unknown export option"):
        ox.cached_exports(ckpt, (True,), cache, opset=18)
