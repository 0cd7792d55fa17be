"""Shared fixtures: where the real data in ../shared lives."""

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
