"""Build script: a pip-installable project that is also a colcon ``ament_python`` package."""

import os
from glob import glob

from setuptools import find_packages, setup

package_name = "moe_fusion_ros"

# Runtime dependencies with compatible ranges: the lower bound is the oldest release the test suite has been run
# with (requirements.txt pins the set that make and CI install), the upper bound the next major release.
# PyTorch: install the build for your platform first (README, "Installing PyTorch").
INSTALL_REQUIRES = [
    "torch>=2.13,<3",
    "torchvision>=0.28,<1",
    "numpy>=2.2,<3",
    "opencv-python-headless>=5.0,<6",
    "scipy>=1.15,<2",
    "safetensors>=0.8,<1",
    "rosbags>=0.11.9,<0.12",
    "PyYAML>=6.0,<7",
    "tqdm>=4.70,<5",
    "matplotlib>=3.10,<4",
    "norfair-enough>=2.4.3,<3",  # track IDs (moe_fusion_core/tracking.py); needs numpy, scipy, rich
]
EXTRAS_REQUIRE = {
    "train": ["tensorboard>=2.21,<3"],  # training curves (moe-fusion train)
    "onnx": ["onnx>=1.23,<2", "onnxruntime>=1.31,<2"],  # export (TorchScript exporter) + ONNX Runtime backend
    "dev": ["pytest>=9.2,<10", "ruff>=0.17.6,<0.18"],  # tests and lint
    "test": ["pytest>=9.2,<10"],  # what `colcon test` looks for
}

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "training", "docs"]),
    package_data={"moe_fusion_core": ["default_model/*.safetensors", "default_model/*.yaml",  # the embedded
                                      "fast_model/*.safetensors", "fast_model/*.yaml",  # models (embedded.py)
                                      "autoreg_model/*.safetensors"]},  # registration maps (autoreg_net.py)
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        (os.path.join("share", package_name), ["package.xml"]),
        (os.path.join("share", package_name, "launch"), glob("launch/*.launch.py")),
        (os.path.join("share", package_name, "config"), glob("config/*.yaml")),
    ],
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    zip_safe=True,
    maintainer="moe-fusion-ros maintainers",
    maintainer_email="maintainers@moe-fusion-ros.invalid",
    description="MoE-Fusion thermal + RGB image fusion for ROS 2",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "fusion_node = moe_fusion_ros.node:main",
            "moe-fusion = moe_fusion_ros.cli:main",
        ],
    },
)
