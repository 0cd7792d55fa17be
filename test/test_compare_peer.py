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
    assert "Baselines vs the peer file's: largest difference 0." in capsys.readouterr().out


def test_baselines_that_disagree_with_the_peer_file_fail_with_the_difference(eval_and_peer, tmp_path, capsys):
    ours, peer_file = eval_and_peer
    off = copy.deepcopy(ours)
    first = sorted(off["baselines"]["max"]["standard"]["per_image"])[0]
    off["baselines"]["max"]["standard"]["per_image"][first]["SF"] += 0.01  # one metric of one pair, one mode
    assert run(tmp_path, off, peer_file) == 1
    err = capsys.readouterr().err
    assert "disagree with the peer file's" in err and "all standard: 0.001" in err and "paper" not in err
