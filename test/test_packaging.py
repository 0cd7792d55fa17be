"""pip packaging: every third-party module the packages import is a declared requirement, requirements.txt pins
versions inside the declared ranges, and the wheel carries the embedded models, the launch and the parameter file."""

from __future__ import annotations

import ast
import functools
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from test_package_files import ROS_MODULES

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("moe_fusion_core", "moe_fusion_ros")
ROS_SHELL = {"moe_fusion_ros/node.py"}  # the rclpy shell: its imports come from the ROS distribution
# import name -> distribution, where they differ (or where a sub-module needs its own distribution)
DISTRIBUTION_OF = {"cv2": "opencv-python-headless", "yaml": "PyYAML", "PIL": "pillow", "sklearn": "scikit-learn",
                   "torch.utils.tensorboard": "tensorboard", "google.protobuf": "protobuf"}


@pytest.fixture(scope="module")
def declared(monkeypatch_module) -> dict[str, list[str]]:
    """setup.py's install_requires and extras_require (setup.py run in the repo root, as pip and colcon do)."""
    import runpy

    import setuptools

    captured: dict = {}
    monkeypatch_module.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch_module.chdir(REPO)
    runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    return {"install_requires": list(captured["install_requires"]), **captured["extras_require"]}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports(root: Path = REPO) -> list[tuple[str, str, bool]]:
    """(file, module, at module level) for every absolute import of a non-stdlib, non-ROS, non-project module."""
    out = []
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            rel = f.relative_to(root).as_posix()
            if rel in ROS_SHELL:
                continue
            tree = ast.parse(f.read_text(), filename=rel)
            top_level = {id(n) for n in tree.body}
            for n in ast.walk(tree):
                if isinstance(n, ast.Import):
                    names = [a.name for a in n.names]
                elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
                    names = [n.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in PACKAGES or top in ROS_MODULES or top == "__future__":
                        continue
                    out.append((rel, name, id(n) in top_level))
    return out


@functools.cache
def _installed() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def distribution(module: str) -> str:
    """The distribution that provides ``module`` (explicit table, then the installed metadata, then the name)."""
    for prefix, dist in DISTRIBUTION_OF.items():
        if module == prefix or module.startswith(prefix + "."):
            return _norm(dist)
    top = module.split(".")[0]
    installed = _installed().get(top)
    return _norm(installed[0] if installed else top)


def test_every_imported_third_party_module_is_a_declared_requirement(declared):
    core = {_norm(Requirement(r).name) for r in declared["install_requires"]}
    extras = {_norm(Requirement(r).name) for k, reqs in declared.items() if k != "install_requires" for r in reqs}
    found = third_party_imports()
    assert {"torch", "cv2", "yaml", "rosbags"} <= {m.split(".")[0] for _, m, _ in found}  # the scan sees imports
    missing = [f"{f}: import {m} -> {distribution(m)}" for f, m, _ in found if distribution(m) not in core | extras]
    assert not missing, "imported but not declared in setup.py:\n" + "\n".join(missing)
    # a module-level import runs whenever the module is imported: it cannot live in an optional extra
    optional = [f"{f}: import {m} -> {distribution(m)} (only in an extra)" for f, m, top in found
                if top and distribution(m) not in core]
    assert not optional, "\n".join(optional)


def test_an_undeclared_import_is_reported(tmp_path, declared):
    """The scan above can fail: a module importing a package nobody declared is found and named."""
    fake_repo = tmp_path / "repo"
    for pkg in PACKAGES:
        (fake_repo / pkg).mkdir(parents=True)
    (fake_repo / "moe_fusion_core" / "x.py").write_text("def f():\n    import cv2\n    import requests\n")
    found = third_party_imports(fake_repo)
    assert [(f, m, top) for f, m, top in found] == [("moe_fusion_core/x.py", "cv2", False),
                                                     ("moe_fusion_core/x.py", "requests", False)]
    core = {_norm(Requirement(r).name) for r in declared["install_requires"]}
    assert distribution("cv2") in core and distribution("requests") not in core


def _pins(path: Path) -> dict[str, Requirement]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate():
                pins[_norm(req.name)] = req
    return pins


def test_requirements_pin_every_declared_dependency_inside_its_range(declared):
    pins = _pins(REPO / "requirements.txt") | _pins(REPO / "requirements-dev.txt")
    for spec in [*declared["install_requires"], *declared["train"], *declared["dev"]]:
        req = Requirement(spec)
        assert req.specifier, f"{spec}: give a compatible range"
        pin = pins.get(_norm(req.name))
        assert pin is not None, f"{req.name} is declared in setup.py but not pinned in requirements*.txt"
        (version,) = [s.version for s in pin.specifier if s.operator == "=="]
        assert req.specifier.contains(version), f"requirements pin {req.name}=={version} outside {req.specifier}"


def test_wheel_carries_the_embedded_models_launch_and_parameter_files_and_not_the_sample(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "install", "log", "*.egg-info", "__pycache__", ".pytest_cache",
        ".ruff_cache", ".whl", ".devdata"))  # the .gitignore'd folders: never part of a clone
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("moe_fusion_ros-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = "moe_fusion_ros-0.1.0.data/data/share/moe_fusion_ros"
    for need in ("moe_fusion_core/default_model/model.safetensors", "moe_fusion_core/default_model/config.yaml",
                 "moe_fusion_core/fast_model/model.safetensors", "moe_fusion_core/fast_model/config.yaml",
                 "moe_fusion_core/report.py", "moe_fusion_ros/cli.py", f"{data}/launch/fusion.launch.py",
                 f"{data}/config/fusion.yaml", f"{data}/package.xml"):
        assert need in names, need
    assert not [n for n in names if n.startswith(("sample/", "test/", "training/", "docs/"))]
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = {_norm(Requirement(line.split(":", 1)[1]).name) for line in meta.splitlines()
                if line.startswith("Requires-Dist:")}
    assert {"torch", "torchvision", "numpy", "opencv-python-headless", "pyyaml", "rosbags"} <= requires
    assert {"onnx", "train", "dev"} <= {line.split(":", 1)[1].strip() for line in meta.splitlines()
                                       if line.startswith("Provides-Extra:")}
