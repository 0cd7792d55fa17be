"""moe_fusion_core: MoE-Fusion (ICCV 2023) as a pure-PyTorch library. Never imports ROS."""

__version__ = "0.1.0"
