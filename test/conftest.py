"""Shared fixtures: where the real data lives: ``sample/`` in the repository (always there) and ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    return Path(os.environ.get("MOE_FUSION_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared folder (data, design notes). CI always has it; elsewhere tests needing it skip."""
    d = _shared_dir()
    if not (d / "data").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"shared data folder not found at {d} (set MOE_FUSION_SHARED)")
        pytest.skip(f"shared data folder not found at {d} (set MOE_FUSION_SHARED)")
    return d


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    return shared_dir / "data"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The repository's ``sample/`` (a few real pairs and a short real bag; see sample/README.md)."""
    return REPO / "sample"


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory) -> Path:
    """A freshly initialised embedded model saved as a checkpoint folder (seed 0): for tests of the plumbing."""
    import torch

    from moe_fusion_core.checkpoint import save_model
    from moe_fusion_core.config import named_config
    from moe_fusion_core.model.moe_fusion import build_model

    torch.manual_seed(0)
    cfg = named_config("embedded")
    return save_model(build_model(cfg.model).eval(), cfg, tmp_path_factory.mktemp("untrained") / "model")
