"""training/compare_peer.py: the comparison with a peer is refused when our baselines do not reproduce the peer
file's (real peer metrics from ../shared/data/peers)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from compare_peer import main

PEER = "peers/seafusion_metrics.json"


@pytest.fixture(scope="module")
def eval_and_peer(data_dir: Path) -> tuple[dict, Path]:
    """An evaluation JSON of ten real pairs whose baselines are the peer file's own Average and Max."""
    peer_file = data_dir / PEER
    methods = json.loads(peer_file.read_text())["methods"]
    keys = sorted(methods["Average"]["paper"]["per_image"])[:10]

    def subset(method: str) -> dict:
        return {mode: {"per_image": {k: methods[method][mode]["per_image"][k] for k in keys}}
                for mode in ("paper", "standard")}

    ours = {**subset("SeAFusion"), "baselines": {"average": subset("Average"), "max": subset("Max")}}
    return ours, peer_file


def run(tmp_path: Path, ours: dict, peer_file: Path) -> int:
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(ours))
    return main(["--eval", str(path), "--peer", str(peer_file)])


def test_baselines_that_reproduce_the_peer_file_pass(eval_and_peer, tmp_path, capsys):
    ours, peer_file = eval_and_peer
    assert run(tmp_path, ours, peer_file) == 0
    assert "Baselines vs the peer file's: largest difference 0 on 10 pairs." in capsys.readouterr().out


def test_baselines_that_disagree_with_the_peer_file_fail_with_the_difference(eval_and_peer, tmp_path, capsys):
    ours, peer_file = eval_and_peer
    off = copy.deepcopy(ours)
    first = sorted(off["baselines"]["max"]["standard"]["per_image"])[0]
    off["baselines"]["max"]["standard"]["per_image"][first]["SF"] += 0.01  # one metric of one pair, one mode
    assert run(tmp_path, off, peer_file) == 1
    err = capsys.readouterr().err
    assert "disagree with the peer file's" in err and "all standard: 0.001" in err and "paper" not in err


def test_several_peer_files_are_merged_and_only_pairs_with_peer_baselines_are_checked(eval_and_peer, tmp_path,
                                                                                        data_dir, capsys):
    ours, peer_file = eval_and_peer
    more_file = data_dir / "peers" / "seafusion_metrics_msrs_det_more.json"  # SeAFusion only, no baselines
    more = json.loads(more_file.read_text())["methods"]["SeAFusion"]
    extra = sorted(more["paper"]["per_image"])[:3]
    merged = copy.deepcopy(ours)
    for mode in ("paper", "standard"):
        for k in extra:
            merged[mode]["per_image"][k] = more[mode]["per_image"][k]
            for b in ("average", "max"):  # our baselines there cannot be checked against the peer's
                merged["baselines"][b][mode]["per_image"][k] = more[mode]["per_image"][k]
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(merged))
    with pytest.raises(KeyError, match="3 pairs have no SeAFusion metrics"):
        main(["--eval", str(path), "--peer", str(peer_file)])
    capsys.readouterr()
    assert main(["--eval", str(path), "--peer", str(peer_file), str(more_file)]) == 0
    out = capsys.readouterr().out
    assert "13 pairs" in out and "largest difference 0 on 10 pairs" in out


def test_compare_runs_counts_per_dataset_against_the_reference_and_refuses_different_pairs(eval_and_peer, tmp_path,
                                                                                           data_dir):
    from compare_runs import table

    ours, peer_file = eval_and_peer  # ten real pairs: "ours" is the peer itself

    def evaluated(name: str, model: dict) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "eval.json").write_text(json.dumps(model))
        assert main(["--eval", str(folder / "eval.json"), "--peer", str(peer_file), "--per-dataset",
                     "--json", str(folder / "peer.json")]) == 0
        return folder

    as_max = {**ours["baselines"]["max"], "baselines": ours["baselines"]}  # max fusion in place of a model
    text, summary = table({"peer": evaluated("a", ours), "max": evaluated("b", as_max)})
    assert summary["all"]["peer"]["at_peer_level"] == 8 and summary["all"]["peer"]["worse_than_ref"] == []
    assert summary["all"]["max"]["beats_avg_and_max"] == 0  # max fusion is not above itself
    worse = summary["all"]["max"]["worse_than_ref"]
    assert 0 < len(worse) < 8 and "max: worse than peer on more than 2 of 8 metrics on" in text
    fewer = copy.deepcopy(ours)
    for mode in ("paper", "standard"):
        fewer[mode]["per_image"].pop(sorted(fewer[mode]["per_image"])[0])
        for b in ("average", "max"):
            fewer["baselines"][b][mode]["per_image"].pop(sorted(fewer["baselines"][b][mode]["per_image"])[0])
    with pytest.raises(ValueError, match="different pairs"):
        table({"peer": tmp_path / "a", "fewer": evaluated("c", fewer)})
