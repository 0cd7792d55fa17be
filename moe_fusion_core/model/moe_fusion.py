"""The whole MoE-Fusion model and its builder."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .detector import AuxDetectors
from .fusion_head import FusionHead
from .gate import GateOutput


@dataclass
class MoEFusionOutput:
    """What one forward pass gives.

    ``fused`` is the raw network output (B×1×H×W, unbounded; clamp to [0,1] to save); ``att`` the detached
    attention map the fusion head used (both ``None``, with no gates, when the fusion head was not run);
    ``det_att`` (with ``return_det_att``) the detectors' own visible and infrared attention maps at
    ``att_level`` (not detached; what ``att`` is made from); ``det_losses`` only in training with targets;
    ``detections`` only in eval with ``need_detections`` (boxes in input pixels, labels 1-based, background = 0).
    """

    fused: torch.Tensor | None
    att: torch.Tensor | None
    gates: dict[str, GateOutput]
    load_loss: torch.Tensor
    det_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    detections: list[dict[str, torch.Tensor]] | None = None
    det_att: tuple[torch.Tensor, torch.Tensor] | None = None


class MoEFusion(nn.Module):
    """Fusion head + two auxiliary detectors. Inputs: [0,1] B×1×H×W infrared and visible-luma images.

    Any H×W: inputs are zero-padded on the right/bottom to a multiple of ``cfg.size_divisor`` and every output
    is cropped back, so the fused image has the input's size and boxes are in input pixels.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fusion = FusionHead(cfg)
        self.detectors = AuxDetectors(cfg.detector, cfg.num_classes) if cfg.detector is not None else None

    def forward(self, ir: torch.Tensor, vis: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None,
                labelled: torch.Tensor | None = None, vis_rgb: torch.Tensor | None = None,
                need_detections: bool = False, run_fusion: bool = True, return_det_att: bool = False
                ) -> MoEFusionOutput:
        """``run_fusion=False``: the detectors alone (detector-only training), no fused image. ``return_det_att``:
        also return the detectors' attention maps with their gradient (off by default: an output that no loss
        uses leaves parameters without a gradient, which DistributedDataParallel refuses)."""
        if ir.shape != vis.shape or ir.dim() != 4 or ir.shape[1] != 1:
            raise ValueError(f"ir and vis must both be B×1×H×W, got {tuple(ir.shape)} and {tuple(vis.shape)}")
        if not run_fusion and self.detectors is None:
            raise ValueError("run_fusion=False leaves nothing to run in a model without detectors")
        h, w = ir.shape[-2:]
        d = self.cfg.size_divisor
        ph, pw = (-h) % d, (-w) % d
        if ph or pw:
            ir, vis = F.pad(ir, (0, pw, 0, ph)), F.pad(vis, (0, pw, 0, ph))
            if vis_rgb is not None:
                vis_rgb = F.pad(vis_rgb, (0, pw, 0, ph))
        size = (h + ph, w + pw)
        det, det_att = None, None
        level = self.cfg.att_level
        det_vis = vis_rgb if (self.detectors is not None and self.cfg.detector.rgb_visible and vis_rgb is not None) \
            else vis
        if self.detectors is not None and run_fusion and targets is None and not need_detections \
                and not return_det_att:  # the fused image alone: only the attention level's maps
            att = self.fusion.att(*self.detectors.attention_at(det_vis, ir, level), size)
        elif self.detectors is not None:
            det = self.detectors(det_vis, ir, [(h, w)] * ir.shape[0], targets, labelled, need_detections)
            det_att = (det.att_vis[level], det.att_ir[level]) if return_det_att else None
            if not run_fusion:
                return MoEFusionOutput(fused=None, att=None, gates={}, load_loss=ir.new_zeros(()),
                                       det_losses=det.losses, detections=det.detections, det_att=det_att)
            att = self.fusion.att(det.att_vis[level], det.att_ir[level], size)
        else:
            att = ir.new_full((ir.shape[0], 1, *size), self.cfg.fixed_att)
        head = self.fusion(vis, ir, att)
        fused = head.fused[..., :h, :w]
        return MoEFusionOutput(
            fused=fused, att=att[..., :h, :w], gates=head.gates, load_loss=head.load_loss,
            det_losses=det.losses if det is not None else {},
            detections=det.detections if det is not None else None, det_att=det_att,
        )

    def fusion_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by the fusion losses."""
        return list(self.fusion.parameters())

    def detector_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by the detection losses."""
        return list(self.detectors.parameters()) if self.detectors is not None else []


def build_model(cfg: ModelConfig) -> MoEFusion:
    """Assemble a MoE-Fusion model from its config."""
    return MoEFusion(cfg)
