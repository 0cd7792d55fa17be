"""`moe-fusion bench` measures every stage it promises and writes the documented JSON rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = {"end_to_end", "fused_only", "preprocess", "backbones_attention", "encoders", "mole", "moge",
          "detection_heads", "postprocess"}


def test_bench_json_rows_cover_every_stage_with_timings(tmp_path, sample_dir):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "moe_fusion_ros.cli", "bench", "--config", "embedded", "--device", "cpu",
           "--sizes", "160x128", "--batch", "1,2", "--iters", "2", "--warmup", "1", "--json", str(out),
           "--pair-dir", str(sample_dir / "pairs")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    for r in rows:
        for key in ("config", "device", "size", "batch", "precision", "stage", "p50_ms", "p95_ms", "pairs_per_s"):
            assert key in r, (key, r)
        assert r["p50_ms"] > 0 and r["p95_ms"] >= r["p50_ms"]
    assert {r["stage"] for r in rows} >= STAGES
    e2e = {r["batch"]: r for r in rows if r["stage"] == "end_to_end"}
    assert set(e2e) == {1, 2} and all(r["size"] == "160x128" for r in e2e.values())
    assert e2e[1]["gflops_per_pair"] > 0.1  # counted by torch's FLOP counter, not guessed
    assert "stage" in proc.stdout and "p50_ms" in proc.stdout  # the printed table


class OtherBackend:
    """A torch engine presented as another backend: its rows must not borrow the torch graph's FLOP count."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.backend = "onnxruntime"

    def __getattr__(self, name):
        return getattr(self._engine, name)


def test_rows_carry_their_own_paths_flops_or_none_and_a_memory_column_named_for_what_it_is(untrained_model,
                                                                                         sample_dir):
    from moe_fusion_core.bench import bench_model
    from moe_fusion_core.engine import FusionEngine

    eager = FusionEngine(untrained_model, device="cpu", deploy=False)
    rows = bench_model({("m", "eager"): eager, ("m", "onnxruntime"): OtherBackend(eager)}, (96, 64), 1, 1, 0, {},
                       sample_dir / "pairs")
    whole = {(r["path"], r["stage"]): r for r in rows if r["stage"] in ("end_to_end", "fused_only")}
    assert len(whole) == 4
    for (path, _), r in whole.items():
        assert ("gflops_per_pair" in r) == (path == "eager"), r
        assert r["process_max_rss_mb"] > 0 and "peak_mem_mb" not in r  # the process's peak, and called so


def test_a_row_that_cannot_run_fails_the_benchmark_instead_of_being_skipped(tmp_path):
    """`bench --checkpoint /no/such/dir` must not print an empty table and exit 0 (#23)."""
    missing = tmp_path / "no" / "such" / "dir"
    cmd = [sys.executable, "-m", "moe_fusion_ros.cli", "bench", "--checkpoint", str(missing), "--device", "cpu",
           "--sizes", "64x48", "--iters", "1", "--warmup", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert str(missing) in proc.stderr and "skipping" not in proc.stderr


def test_two_models_on_two_paths_are_timed_together_in_rows_labelled_by_model(tmp_path, untrained_model, sample_dir):
    """`bench --checkpoint A,fast --path eager,deploy`: one interleaved run, a row per (model, path) and stage (#23)."""
    from moe_fusion_ros.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--checkpoint", f"{untrained_model},fast", "--path", "eager,deploy", "--device", "cpu",
                 "--sizes", "96x64", "--iters", "1", "--warmup", "0", "--json", str(out),
                 "--pair-dir", str(sample_dir / "pairs")]) == 0
    rows = json.loads(out.read_text())
    for stage in ("end_to_end", "fused_only"):
        whole = {(r["model"], r["path"]): r for r in rows if r["stage"] == stage}
        assert set(whole) == {(m, p) for m in (str(untrained_model), "fast") for p in ("eager", "deploy")}, stage
        assert {whole[str(untrained_model), "eager"]["config"], whole["fast", "eager"]["config"]} == {"embedded",
                                                                                                     "fast"}
        assert all(("speedup_vs_eager" in r) == (p == "deploy") for (_, p), r in whole.items())
        ref = [r["speedup_vs_ref_best"] for (m, _), r in whole.items() if m == str(untrained_model)]
        assert max(ref) == 1.0  # the first model's fastest path is the reference
        assert all(r["speedup_vs_ref_best"] > 0 for r in whole.values())
    assert {r["model"] for r in rows if r["stage"] == "moge"} == {str(untrained_model), "fast"}  # stage rows each


def test_the_int8_path_needs_training_pairs_to_calibrate_on(capsys):
    from moe_fusion_ros.cli import main

    base = ["bench", "--checkpoint", "fast", "--device", "cpu", "--sizes", "64x48", "--iters", "1"]
    assert main([*base, "--path", "eager,onnxruntime_int8"]) == 2
    assert "onnxruntime_int8 needs --calibrate DIR" in capsys.readouterr().err
    assert main([*base, "--path", "eager", "--calibrate", "sample/pairs"]) == 2
    assert "--calibrate DIR is for --path onnxruntime_int8" in capsys.readouterr().err


def test_an_int8_engine_runs_the_graph_of_the_variant_asked_for():
    from moe_fusion_core.bench import GraphPerVariant

    class Graph:
        def __init__(self, name: str) -> None:
            self.name, self.backend = name, "onnxruntime"

        def fuse_batch(self, pairs, *, detections=True):
            return [self.name]

    both = GraphPerVariant({False: Graph("fused"), True: Graph("det")})  # the order cached_exports gives
    assert both.fuse_batch([], detections=True) == ["det"] and both.fuse_batch([], detections=False) == ["fused"]
    assert both.backend == "onnxruntime" and both.name == "det"  # has_detectors etc.: the detection graph's
    assert GraphPerVariant({False: Graph("fused")}).fuse_batch([], detections=True) == ["fused"]
