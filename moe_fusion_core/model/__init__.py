"""MoE-Fusion model components: one module per component, assembled by :func:`build_model`."""

from .moe_fusion import MoEFusion, MoEFusionOutput, build_model

__all__ = ["MoEFusion", "MoEFusionOutput", "build_model"]
