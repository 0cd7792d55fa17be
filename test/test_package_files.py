"""The colcon/ament_python package files: setup.py data files, package.xml, console scripts, launch file, and the
rule that only moe_fusion_ros.node imports ROS."""

from __future__ import annotations

import ast
import importlib
import os
import runpy
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROS_MODULES = {"rclpy", "message_filters", "sensor_msgs", "std_msgs", "vision_msgs", "diagnostic_updater",
               "diagnostic_msgs", "cv_bridge", "rcl_interfaces", "lifecycle_msgs", "launch", "launch_ros"}


@pytest.fixture(scope="module")
def setup_kwargs() -> dict:
    """The keyword arguments setup.py passes to setuptools.setup (run in the repo root, as colcon does)."""
    import setuptools

    captured: dict = {}
    orig, cwd = setuptools.setup, Path.cwd()
    try:
        setuptools.setup = lambda **kw: captured.update(kw)
        os.chdir(REPO)
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = orig
        os.chdir(cwd)
    return captured


def test_every_data_file_exists_and_launch_config_are_installed(setup_kwargs):
    files = []
    for dest, srcs in setup_kwargs["data_files"]:
        assert srcs, f"no files for {dest} (a glob matched nothing)"
        for s in srcs:
            assert (REPO / s).is_file(), s
            files.append((dest, s))
    assert ("share/ament_index/resource_index/packages", "resource/moe_fusion_ros") in files
    assert ("share/moe_fusion_ros/launch", "launch/fusion.launch.py") in files
    assert ("share/moe_fusion_ros/config", "config/fusion.yaml") in files
    assert ("share/moe_fusion_ros", "package.xml") in files
    cfg = (REPO / "setup.cfg").read_text()
    assert "script_dir=$base/lib/moe_fusion_ros" in cfg and "install_scripts=$base/lib/moe_fusion_ros" in cfg


def test_package_xml_is_format_3_with_the_runtime_deps(setup_kwargs):
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "moe_fusion_ros" == setup_kwargs["name"]
    assert root.findtext("version") == setup_kwargs["version"]
    assert root.find("maintainer").get("email") and root.findtext("license")
    deps = {e.text for e in root.iter() if e.tag in ("exec_depend", "depend")}
    need = {"rclpy", "sensor_msgs", "std_msgs", "vision_msgs", "message_filters", "diagnostic_updater",
            "diagnostic_msgs", "lifecycle_msgs", "rcl_interfaces", "launch", "launch_ros", "ament_index_python",
            "python3-numpy", "python3-opencv", "python3-yaml"}
    assert need <= deps, need - deps
    assert root.find("export").findtext("build_type") == "ament_python"


def test_console_scripts_resolve(setup_kwargs):
    scripts = dict(s.replace(" ", "").split("=") for s in setup_kwargs["entry_points"]["console_scripts"])
    assert scripts["fusion_node"] == "moe_fusion_ros.node:main"
    for name, target in scripts.items():
        mod, func = target.split(":")
        if mod == "moe_fusion_ros.node":  # imports rclpy: check by AST
            tree = ast.parse((REPO / "moe_fusion_ros" / "node.py").read_text())
            assert any(isinstance(n, ast.FunctionDef) and n.name == func for n in tree.body), name
        else:
            assert callable(getattr(importlib.import_module(mod), func)), name


def _call_name(node: ast.AST) -> str:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def test_launch_file_declares_the_arguments_and_passes_them():
    tree = ast.parse((REPO / "launch" / "fusion.launch.py").read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    declared = {}
    for c in calls:
        if _call_name(c) == "DeclareLaunchArgument":
            kw = {k.arg for k in c.keywords}
            declared[c.args[0].value] = kw
    want = {"namespace", "thermal_topic", "rgb_topic", "rgb_info_topic", "params_file", "device", "use_sim_time",
            "log_level"}
    assert want <= set(declared), want - set(declared)
    assert all("description" in kw for kw in declared.values())
    used = {c.args[0].value for c in calls if _call_name(c) == "LaunchConfiguration"}
    assert want <= used  # every argument reaches the node
    node = next(c for c in calls if _call_name(c) == "Node")
    kws = {k.arg: k.value for k in node.keywords}
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
              for t in n.targets if isinstance(t, ast.Name)}

    def value(v: ast.AST):
        return consts[v.id] if isinstance(v, ast.Name) else ast.literal_eval(v)

    assert value(kws["executable"]) == "fusion_node" and value(kws["package"]) == "moe_fusion_ros"
    param_keys = {k.value for d in ast.walk(kws["parameters"]) if isinstance(d, ast.Dict) for k in d.keys}
    assert {"use_sim_time", "model.device"} <= param_keys
    remapped = {e.elts[0].value for e in kws["remappings"].elts}
    assert remapped == {"thermal/image_raw", "rgb/image_raw", "rgb/camera_info"}
    src = (REPO / "launch" / "fusion.launch.py").read_text()
    assert "get_package_share_directory" in src and '"config", "fusion.yaml"' in src


def test_only_node_imports_ros():
    pkg = REPO / "moe_fusion_ros"
    for f in sorted(pkg.glob("*.py")):
        if f.name == "node.py":
            continue
        for n in ast.parse(f.read_text()).body:  # module level only; lazy imports inside functions are fine
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else \
                [n.module or ""] if isinstance(n, ast.ImportFrom) else []
            assert not {x.split(".")[0] for x in names} & ROS_MODULES, (f.name, names)
    mods = [f"moe_fusion_ros.{f.stem}" for f in sorted(pkg.glob("*.py")) if f.stem not in ("node",)]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods)
            + f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(ROS_MODULES)!r})\n"
            + "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_core_never_imports_ros_or_the_ros_package():
    for f in sorted((REPO / "moe_fusion_core").rglob("*.py")):
        for n in ast.walk(ast.parse(f.read_text())):  # lazy imports inside functions too
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else \
                [n.module or ""] if isinstance(n, ast.ImportFrom) and n.level == 0 else []
            roots = {x.split(".")[0] for x in names}
            assert not roots & (ROS_MODULES | {"moe_fusion_ros"}), (str(f.relative_to(REPO)), names)


def test_every_embedded_model_is_installed_as_package_data(setup_kwargs):
    """Each folder of EMBEDDED_MODELS exists with its two files, and setup.py's package_data installs them."""
    from fnmatch import fnmatch

    from moe_fusion_core.embedded import EMBEDDED_MODELS

    globs = setup_kwargs["package_data"]["moe_fusion_core"]
    assert set(EMBEDDED_MODELS) == {"default", "fast"}
    for name, folder in EMBEDDED_MODELS.items():
        for f in ("model.safetensors", "config.yaml"):
            assert (folder / f).is_file(), f"embedded model {name!r}: {folder / f} is missing"
            rel = (folder / f).relative_to(REPO / "moe_fusion_core").as_posix()
            assert any(fnmatch(rel, g) for g in globs), f"embedded model {name!r}: {rel} is not package data"


def test_the_registration_maps_weights_are_installed_as_package_data(setup_kwargs):
    """``register --auto`` and ``registration.auto`` load ``autoreg_net.WEIGHTS`` from the installed package."""
    from fnmatch import fnmatch

    from moe_fusion_core import autoreg_net

    assert autoreg_net.WEIGHTS.is_file()
    rel = autoreg_net.WEIGHTS.relative_to(REPO / "moe_fusion_core").as_posix()
    assert any(fnmatch(rel, g) for g in setup_kwargs["package_data"]["moe_fusion_core"]), rel
