"""The two auxiliary Faster R-CNN detectors (spec §3), wired by hand from torchvision parts.

backbone → FPN → shared cross-modal mixing conv → per-modality spatial attention (shared across levels)
→ features·(1 + a) → RPN → RoI heads. torchvision's own resize transform is bypassed: callers feed
normalised tensors already padded to the size divisor.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from ..config import DetectorConfig
from .attention import CrossModalMixing, SpatialAttention
from .merge import merge_detections

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNETS = {"resnet18": models.resnet18, "resnet34": models.resnet34, "resnet50": models.resnet50}
# MobileNetV3-Large feature blocks whose outputs are the last at strides 4, 8, 16, 32.
MOBILENET_V3_LARGE_TAPS = (3, 6, 12, 16)


def build_backbone(cfg: DetectorConfig) -> BackboneWithFPN:
    """A backbone with a ``cfg.fpn_channels`` FPN over strides 4–32 plus a max-pooled stride-64 level."""
    if cfg.backbone in RESNETS:
        norm = FrozenBatchNorm2d if cfg.frozen_bn else nn.BatchNorm2d
        body = RESNETS[cfg.backbone](weights=None, norm_layer=norm)
        stages = ["layer4", "layer3", "layer2", "layer1", "conv1"][: cfg.trainable_layers]
        if cfg.trainable_layers == 5:
            stages.append("bn1")
        for name, p in body.named_parameters():
            if all(not name.startswith(s) for s in stages):
                p.requires_grad_(False)
        return_layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
        c4 = body.inplanes // 8
        in_channels = [c4, c4 * 2, c4 * 4, c4 * 8]
    elif cfg.backbone == "mobilenet_v3_large":
        norm = FrozenBatchNorm2d if cfg.frozen_bn else partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        body = models.mobilenet_v3_large(weights=None, norm_layer=norm).features
        stage_starts = [0] + [i for i, b in enumerate(body) if getattr(b, "_is_cn", False)] + [len(body)]
        first_trainable = stage_starts[max(0, len(stage_starts) - 1 - cfg.trainable_layers)]
        for i, block in enumerate(body):
            if i < first_trainable:
                block.requires_grad_(False)
        return_layers = {str(t): str(k) for k, t in enumerate(MOBILENET_V3_LARGE_TAPS)}
        in_channels = [body[t].out_channels for t in MOBILENET_V3_LARGE_TAPS]
    else:
        raise ValueError(f"unknown detector backbone {cfg.backbone!r} "
                         f"(resnet18 | resnet34 | resnet50 | mobilenet_v3_large)")
    return BackboneWithFPN(body, return_layers, in_channels, cfg.fpn_channels, extra_blocks=LastLevelMaxPool())


def fpn_level(fpn: FeaturePyramidNetwork, body: OrderedDict[str, torch.Tensor], level: int) -> torch.Tensor:
    """FPN output ``level`` alone from the backbone's features: the top-down path down to that level and its one
    3×3 output conv, not the other levels' (the same numbers as ``fpn(body)[level]``; the max-pooled extra level
    falls back to the whole FPN)."""
    feats = list(body.values())
    if level >= len(feats):
        return list(fpn(body).values())[level]
    inner = fpn.get_result_from_inner_blocks(feats[-1], -1)
    if level == len(feats) - 1:
        return fpn.get_result_from_layer_blocks(inner, -1)
    for idx in range(len(feats) - 2, level - 1, -1):
        lateral = fpn.get_result_from_inner_blocks(feats[idx], idx)
        inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
    return fpn.get_result_from_layer_blocks(inner, level)


class DetectionHead(nn.Module):
    """RPN + RoI heads of one detector (torchvision Faster R-CNN parts, spec §3.1 settings)."""

    def __init__(self, cfg: DetectorConfig, num_classes: int) -> None:
        super().__init__()
        c = cfg.fpn_channels
        anchors = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes),
                                  (tuple(cfg.aspect_ratios),) * len(cfg.anchor_sizes))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(c, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3,
            batch_size_per_image=cfg.rpn_batch_size_per_image, positive_fraction=0.5,
            pre_nms_top_n={"training": cfg.rpn_pre_nms_top_n_train, "testing": cfg.rpn_pre_nms_top_n_test},
            post_nms_top_n={"training": cfg.rpn_post_nms_top_n_train, "testing": cfg.rpn_post_nms_top_n_test},
            nms_thresh=0.7,
        )
        self.roi_heads = RoIHeads(
            MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2),
            TwoMLPHead(c * 49, cfg.representation_size),
            FastRCNNPredictor(cfg.representation_size, num_classes),
            fg_iou_thresh=0.5, bg_iou_thresh=0.5,
            batch_size_per_image=cfg.box_batch_size_per_image, positive_fraction=0.25,
            bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
            score_thresh=cfg.box_score_thresh, nms_thresh=cfg.box_nms_thresh,
            detections_per_img=cfg.box_detections_per_img,
        )

    def forward(self, features: OrderedDict[str, torch.Tensor], images: ImageList,
                targets: list[dict[str, torch.Tensor]] | None = None
                ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        proposals, rpn_losses = self.rpn(images, features, targets)
        detections, roi_losses = self.roi_heads(features, proposals, images.image_sizes, targets)
        return detections, {**rpn_losses, **roi_losses}


@dataclass
class DetectorOutput:
    """Attention maps of both detectors and, when asked for, their losses and merged detections."""

    att_vis: list[torch.Tensor]  # per FPN level, B×1×h×w
    att_ir: list[torch.Tensor]
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    detections: list[dict[str, torch.Tensor]] | None = None


class AuxDetectors(nn.Module):
    """Visible and infrared detectors, coupled by the shared mixing conv (spec §3.2, D3)."""

    def __init__(self, cfg: DetectorConfig, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone_vis = build_backbone(cfg)
        self.backbone_ir = build_backbone(cfg)
        self.mixing = CrossModalMixing(cfg.fpn_channels)
        self.attention_vis = SpatialAttention(cfg.fpn_channels, cfg.attention_channels)
        self.attention_ir = SpatialAttention(cfg.fpn_channels, cfg.attention_channels)
        self.head_vis = DetectionHead(cfg, num_classes)
        self.head_ir = DetectionHead(cfg, num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0,1] B×1×H×W (replicated) or B×3×H×W → ImageNet-normalised B×3×H×W."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def features(self, vis: torch.Tensor, ir: torch.Tensor
                 ) -> tuple[OrderedDict, OrderedDict, list[torch.Tensor], list[torch.Tensor]]:
        """Backbones, FPNs, mixing and attention: re-weighted features and attention maps per level."""
        p_vis = self.backbone_vis(self.normalize(vis))
        p_ir = self.backbone_ir(self.normalize(ir))
        f_vis: OrderedDict[str, torch.Tensor] = OrderedDict()
        f_ir: OrderedDict[str, torch.Tensor] = OrderedDict()
        a_vis, a_ir = [], []
        for key in p_vis:
            fv, fi = self.mixing(p_vis[key], p_ir[key])
            av, ai = self.attention_vis(fv), self.attention_ir(fi)
            f_vis[key], f_ir[key] = fv * (1 + av), fi * (1 + ai)
            a_vis.append(av)
            a_ir.append(ai)
        return f_vis, f_ir, a_vis, a_ir

    def attention_at(self, vis: torch.Tensor, ir: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Both attention maps at one FPN level only (what the fused image alone needs): the other levels' FPN
        outputs, mixing and attention are skipped. Same numbers as :meth:`features` at that level."""
        bv, bi = self.backbone_vis.body(self.normalize(vis)), self.backbone_ir.body(self.normalize(ir))
        fv, fi = self.mixing(fpn_level(self.backbone_vis.fpn, bv, level), fpn_level(self.backbone_ir.fpn, bi, level))
        return self.attention_vis(fv), self.attention_ir(fi)

    def forward(self, vis: torch.Tensor, ir: torch.Tensor, image_sizes: list[tuple[int, int]],
                targets: list[dict[str, torch.Tensor]] | None = None, labelled: torch.Tensor | None = None,
                need_detections: bool = False) -> DetectorOutput:
        """Attention maps always; detection losses when ``targets`` are given (training, only for the
        ``labelled`` samples); merged detections of both detectors when ``need_detections``.
        """
        f_vis, f_ir, a_vis, a_ir = self.features(vis, ir)
        out = DetectorOutput(a_vis, a_ir)
        if targets is not None:
            rows = (torch.nonzero(labelled).flatten().tolist() if labelled is not None
                    else list(range(vis.shape[0])))
            if rows:
                tg = [targets[r] for r in rows]
                sizes = [image_sizes[r] for r in rows]
                for name, head, feats, img in (("vis", self.head_vis, f_vis, vis), ("ir", self.head_ir, f_ir, ir)):
                    sub = OrderedDict((k, v[rows]) for k, v in feats.items())
                    _, losses = head(sub, ImageList(img[rows], sizes), tg)
                    out.losses.update({f"{name}_{k}": v for k, v in losses.items()})
        if need_detections and not self.training:
            dv, _ = self.head_vis(f_vis, ImageList(vis, image_sizes))
            di, _ = self.head_ir(f_ir, ImageList(ir, image_sizes))
            out.detections = [self.merge(a, b) for a, b in zip(dv, di)]
        return out

    def merge(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Both detectors' detections merged to one box per object (the published detection set)."""
        return merge_detections([a, b], self.cfg.merge_iou_thresh, self.cfg.merge_containment_thresh,
                                self.cfg.box_detections_per_img)
