"""``moe-fusion export --onnx OUT --int8 --calibrate DIR``: an INT8 graph that runs as any exported graph (#23).

Kept cheap: the fused-only graph at 160×128, calibrated on two of ``sample/pairs``, compared on a third.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install '.[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install '.[onnx]')")

from content import assert_real_picture, reference_engine  # noqa: E402

from moe_fusion_core.engine import DEFAULT_MODEL_DIR, FusionEngine  # noqa: E402
from moe_fusion_core.image_io import pair_by_stem, read_ir, read_vis  # noqa: E402
from moe_fusion_ros.cli import main  # noqa: E402

SIZE = (160, 128)


def _export(out: Path, *extra: str) -> int:
    return main(["export", str(DEFAULT_MODEL_DIR), "--onnx", str(out), "--fused-only", "--size", "x".join(map(
        str, SIZE)), "--dynamic", *extra])


@pytest.fixture(scope="module")
def int8_graph(tmp_path_factory, sample_dir) -> Path:
    out = tmp_path_factory.mktemp("int8") / "fused_int8.onnx"
    # two pairs: stems 0 and 2 of the five (evenly spaced); stem 1 is never seen by the calibration
    assert _export(out, "--int8", "--calibrate", str(sample_dir / "pairs"), "--calibrate-pairs", "2") == 0
    return out


def _held_out_pair(sample_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    _, (ir, vis) = pair_by_stem([sample_dir / "pairs" / "ir", sample_dir / "pairs" / "vis"]).pairs[1]
    return (cv2.resize(read_ir(ir), SIZE, interpolation=cv2.INTER_AREA),
            cv2.resize(read_vis(vis), SIZE, interpolation=cv2.INTER_AREA))


def test_int8_graph_is_quantized_and_says_so(int8_graph):
    proto = onnx.load(str(int8_graph))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["moe_fusion_quantization"] == "int8-qdq-per-channel-w7-fp32tail" and "moe_fusion_config" in meta
    assert [i.name for i in proto.graph.input] == ["ir", "vis"]
    assert not list(int8_graph.parent.glob(".*")), "the temporary fp32 graph is removed"


def test_int8_weights_use_seven_bits_so_avx2_cpus_without_vnni_do_not_saturate(int8_graph):
    """x86 CPUs with AVX2 but no VNNI add u8 × s8 products in saturating 16-bit pairs: full-range 8-bit weights
    overflow there and the picture gets stripes (5–11 grey levels off on average on such a CPU). Every quantized
    weight must stay within 7 bits (ONNX Runtime's ``reduce_range``)."""
    from onnx import numpy_helper

    proto = onnx.load(str(int8_graph))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    weights = [inits[n.input[0]] for n in proto.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
    assert len(weights) >= 50  # the convolutions' weights
    peak = max(int(np.abs(w.astype(np.int16)).max()) for w in weights)
    assert peak <= 64
    assert peak >= 60  # 7 bits used, not fewer


def test_the_fused_image_is_not_requantized_after_the_last_convolution(int8_graph):
    """MoGE's combination and the crop after the last convolutions run in fp32: an 8-bit step over the output's
    calibrated range (about 1.6 grey levels) would leave gaps in the fused image's histogram (EN −11 % on the
    validation pairs). Inside the graph the convolutions stay quantized."""
    proto = onnx.load(str(int8_graph))
    producer = {o: n for n in proto.graph.node for o in n.output}
    assert producer["fused"].op_type != "DequantizeLinear"
    assert not [n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "fused"]
    assert sum(n.op_type == "DequantizeLinear" for n in proto.graph.node) >= 100


def test_int8_graph_runs_in_the_engine_close_to_the_float_model(int8_graph, sample_dir):
    """Loose bound, as INT8 is not fp32: 8-bit activations step by 1/255 of each tensor's calibrated range and the
    errors of ~100 convolutions add up. At 640×480 with 16 calibration pairs the 64 validation pairs differ from the
    fp32 graph by 1.2 grey levels on average (99th percentile 3; docs/benchmarks.md, INT8), and this pair at 160×128
    by 1.3 (99th percentile 3, correlation 0.9999; with 7-bit weights on an AVX2 CPU without VNNI 0.8, 99th
    percentile 3). The bounds leave about 2.5× that for other CPUs' int8 kernels, but not a different picture."""
    eng = FusionEngine(int8_graph, device="cpu", backend="onnxruntime")
    assert eng.quantization == "int8-qdq-per-channel-w7-fp32tail" and eng.path == "onnxruntime" and not eng.detections
    ir, vis = _held_out_pair(sample_dir)
    got = eng.fuse(ir, vis).fused
    want = reference_engine().fuse(ir, vis, detections=False).fused
    assert_real_picture(got, *eng.prepare(ir, vis))
    diff = np.abs(got.astype(float) - want.astype(float))
    assert diff.mean() <= 3.0 and np.percentile(diff, 99) <= 8, (diff.mean(), np.percentile(diff, 99))
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] >= 0.995


def test_fuse_runs_an_onnx_checkpoint_on_onnxruntime(int8_graph, sample_dir, tmp_path):
    ir, vis = _held_out_pair(sample_dir)
    for side, img in (("ir", ir), ("vis", vis[:, :, ::-1])):
        (tmp_path / side).mkdir()
        cv2.imwrite(str(tmp_path / side / "a.png"), img)
    out = tmp_path / "out"
    assert main(["fuse", "--checkpoint", str(int8_graph), "--ir", str(tmp_path / "ir"), "--vis",
                 str(tmp_path / "vis"), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["backend"], summary["quantization"], summary["fused"]) == ("onnxruntime",
                                                                               "int8-qdq-per-channel-w7-fp32tail", 1)
    with pytest.raises(ValueError, match="run it with backend 'onnxruntime'"):
        FusionEngine(int8_graph, device="cpu")


def test_int8_export_errors_are_clear(tmp_path, sample_dir, capsys):
    out = tmp_path / "x.onnx"
    empty = tmp_path / "empty"
    (empty / "ir").mkdir(parents=True)
    (empty / "vis").mkdir()
    no_vis = tmp_path / "no_vis"
    shutil.copytree(sample_dir / "pairs" / "ir", no_vis / "ir")
    cases = [
        (["--int8"], "--int8 needs --calibrate DIR"),
        (["--calibrate", str(sample_dir / "pairs")], "--calibrate DIR is for --int8"),
        (["--int8", "--calibrate", str(tmp_path / "missing")], "not a folder"),
        (["--int8", "--calibrate", str(no_vis)], "no vis/ folder"),
        (["--int8", "--calibrate", str(empty)], "no ir/vis pairs"),
        (["--int8", "--calibrate", str(sample_dir / "pairs"), "--calibrate-pairs", "0"], "at least 1"),
        (["--int8", "--calibrate", str(sample_dir / "pairs"), "--batch", "2"], "batch-1 graphs"),
    ]
    for extra, message in cases:
        assert _export(out, *extra) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not out.exists() and not list(tmp_path.glob(".*")), "no graph, no temporary file left"
    assert main(["export", str(DEFAULT_MODEL_DIR), str(tmp_path / "m"), "--int8", "--calibrate",
                 str(sample_dir / "pairs")]) == 2
    assert "add --onnx OUT.onnx" in capsys.readouterr().err
