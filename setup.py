"""Build script: a pip-installable project that is also a colcon ``ament_python`` package."""

import os
from glob import glob

from setuptools import find_packages, setup

package_name = "moe_fusion_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "training", "docs"]),
    package_data={"moe_fusion_core": ["default_model/*.safetensors", "default_model/*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        (os.path.join("share", package_name), ["package.xml"]),
        (os.path.join("share", package_name, "launch"), glob("launch/*.launch.py")),
        (os.path.join("share", package_name, "config"), glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    extras_require={"test": ["pytest"]},
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
