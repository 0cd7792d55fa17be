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


# ---------------------------------------------------------------------- a live ROS 2 graph
ROS_REQUIRED = os.environ.get("MOE_FUSION_REQUIRE_ROS") == "1"  # set by `make test` when it sourced ROS 2
_ros_outcomes: dict[str, int] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "ros_domain" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ros)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "ros" in report.keywords and (report.when == "call" or report.outcome == "skipped"):
        _ros_outcomes[report.outcome] = _ros_outcomes.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter: object) -> None:
    if _ros_outcomes:
        parts = ", ".join(f"{n} {k}" for k, n in sorted(_ros_outcomes.items()))
        terminalreporter.write_line(f"live ROS 2 graph tests: {parts} (domain {os.environ.get('ROS_DOMAIN_ID', '?')}, "
                                    f"{os.environ.get('ROS_DISTRO', 'no ROS')})")


@pytest.fixture(scope="session")
def ros_domain() -> int:
    """rclpy initialised on a ROS_DOMAIN_ID of this session's own. Skips without ROS 2, except under
    ``MOE_FUSION_REQUIRE_ROS=1`` (``make test`` with ROS sourced, so CI), where missing ROS fails loudly."""
    try:
        import diagnostic_updater  # noqa: F401
        import message_filters  # noqa: F401
        import rclpy
        import vision_msgs  # noqa: F401
        from rclpy.signals import SignalHandlerOptions
    except ImportError as e:
        if ROS_REQUIRED:
            pytest.fail(f"ROS 2 is required here (MOE_FUSION_REQUIRE_ROS=1) but cannot be imported: {e}")
        pytest.skip(f"ROS 2 (rclpy) not available: source /opt/ros/<distro>/setup.bash or ../shared/ros2/activate.sh "
                    f"({e})")
    from ros_graph import domain_id

    d = domain_id()
    os.environ["ROS_DOMAIN_ID"] = str(d)
    rclpy.init(domain_id=d, signal_handler_options=SignalHandlerOptions.NO)
    yield d
    rclpy.try_shutdown()


@pytest.fixture(scope="session")
def colcon_install(ros_domain: int, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This repository built with ``colcon build`` into a scratch workspace (its ``install/`` folder)."""
    from ros_graph import colcon_build

    return colcon_build(tmp_path_factory.mktemp("colcon_ws"))


@pytest.fixture(scope="module")
def live_probe(ros_domain: int):
    """A test-side node that publishes the inputs and records every output (one per test module)."""
    from ros_graph import Probe

    p = Probe(name=f"probe_{os.getpid()}")
    yield p
    p.close()


@pytest.fixture(scope="module")
def bag(data_dir: Path):
    """The real sample bag (../shared/data/bags/sample_small), ready to play into the graph."""
    from ros_graph import BagPlayer

    return BagPlayer(data_dir / "bags" / "sample_small")


@pytest.fixture(scope="module")
def truth(data_dir: Path) -> dict:
    """The sample bag's ground truth: its intended (thermal stamp, rgb stamp) pairs."""
    import json

    gt = json.loads((data_dir / "bags" / "sample_small.groundtruth.json").read_text())
    return {"pairs": {(p["thermal_stamp_ns"], p["rgb_stamp_ns"]) for p in gt["pairs"]}, "raw": gt}
