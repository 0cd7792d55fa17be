"""Configuration of a MoE-Fusion model, its losses and its training schedule.

Plain dataclasses, loadable from / savable to YAML. Two named configs ship with the package (``paper`` and
``embedded``, see :func:`named_config`); training recipes in ``training/`` override them per dataset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

M3FD_CLASSES = ["People", "Car", "Bus", "Motorcycle", "Lamp", "Truck"]


@dataclass
class GateConfig:
    """A mixture layer's noisy top-K gate (spec §4.2) and its gate-input grid (spec §9.2)."""

    num_experts: int = 4
    top_k: int = 2
    grid: tuple[int, int] = (120, 160)  # (H, W) the gate input is resized to before flattening
    pool: str = "bilinear"  # "bilinear" (align_corners=True, = the code at 640×480) | "area"
    noisy: bool = True
    loss_coef: float = 0.01
    # Gate input normalisation: "none" (paper) | "unit" (per sample: zero mean, unit L2 norm; docs/design.md)
    input_norm: str = "none"


@dataclass
class DetectorConfig:
    """One auxiliary Faster R-CNN (built twice, one per modality) from torchvision parts (spec §3)."""

    backbone: str = "resnet50"  # resnet18 | resnet34 | resnet50 | mobilenet_v3_large
    fpn_channels: int = 256
    attention_channels: int = 128
    representation_size: int = 1024  # TwoMLPHead width
    trainable_layers: int = 3  # backbone stages that train (resnet: 3 = stem+layer1 frozen)
    frozen_bn: bool = True  # backbone BN with frozen statistics (paper); False when training from scratch
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    # Merging the two detectors' boxes into the published set (model/merge.py): class-wise suppression at this IoU,
    # and of a box lying at least this much inside a better one (1.0 = off: plain NMS). Chosen on the labelled
    # training frames (MODEL_CARD.md, "Detection").
    merge_iou_thresh: float = 0.4
    merge_containment_thresh: float = 0.8
    # The published set's minimum score unless the caller sets one: chosen per model on a labelled validation split
    # (best F1; MODEL_CARD.md, "Detection"). Used by FusionEngine, moe-fusion fuse/replay and the node by default.
    score_threshold: float = 0.3
    # Per-class published thresholds (class name -> minimum score, each in [0, 1]), chosen on validation; classes
    # not listed use score_threshold. A caller's single threshold (node model.score_threshold >= 0, --score-threshold)
    # replaces all of them.
    score_thresholds: dict[str, float] = field(default_factory=dict)
    rgb_visible: bool = False  # spec §9.14: give the visible detector the RGB image instead of its luma


@dataclass
class ModelConfig:
    """The whole model: encoders, attention, MoLE-fg/bg, MoGE and the two detectors."""

    name: str = "paper"
    class_names: list[str] = field(default_factory=lambda: list(M3FD_CLASSES))
    encoder_channels: int = 16  # x_enc width; x_dense = 4 × this
    local_hidden: int = 8  # local expert: C → hidden → C
    global_channels: tuple[int, ...] = (64, 32, 16)  # global expert conv widths before the 1-channel output
    global_reduce: int = 0  # > 0: each global expert starts with a 1×1 conv from x_f to this many channels
    mole: GateConfig = field(default_factory=lambda: GateConfig(grid=(120, 160), loss_coef=0.01))
    moge: GateConfig = field(default_factory=lambda: GateConfig(grid=(60, 80), loss_coef=0.02))
    combine: str = "logsumexp"  # "logsumexp" (authors' code) | "linear" (paper Eq. 2/4)
    local_mode: str = "mole"  # "mole" | "none" (w/o MoLE) | "att_local" (attention, no expert mixture)
    use_moge: bool = True  # False: one global-expert-shaped decoder (w/o MoGE)
    att_mode: str = "max"  # "max" (code) | "conv" (paper: concat → two 1×1 conv branches → max)
    att_level: int = 0  # FPN level whose attention maps drive the fusion (0 = P2, stride 4)
    detector: DetectorConfig | None = field(default_factory=DetectorConfig)
    fixed_att: float = 0.5  # Att used when there is no detector (tests, fusion-only ablations)
    size_divisor: int = 32  # inputs are padded to a multiple of this and cropped back

    def __post_init__(self) -> None:
        if self.detector is not None:
            check_score_thresholds(self.detector.score_thresholds, self.class_names)

    @property
    def num_classes(self) -> int:
        """Detector classes including background."""
        return len(self.class_names) + 1


def check_score_thresholds(thresholds: dict[str, float], class_names: list[str]) -> dict[str, float]:
    """``detector.score_thresholds`` checked against the model's classes: known names, numbers in [0, 1]."""
    if not isinstance(thresholds, dict):
        raise ValueError(f"model.detector.score_thresholds must map class names to numbers, got {thresholds!r}")
    unknown = sorted(str(k) for k in thresholds if k not in class_names)
    if unknown:
        raise ValueError(f"model.detector.score_thresholds: unknown class(es) {', '.join(unknown)}; the model's "
                         f"classes are {', '.join(class_names)}")
    out = {}
    for name, t in thresholds.items():
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
            raise ValueError(f"model.detector.score_thresholds.{name} must be a number in [0, 1], got {t!r}")
        out[name] = float(t)
    return out


@dataclass
class LossConfig:
    """Fusion losses (spec §6)."""

    alpha: float = 10.0  # gradient-loss weight
    pixel_weight: float = 1.0
    load_weight: float = 1.0  # multiplies the gates' own coefficients (0.01 / 0.01 / 0.02)
    det_weight: float = 1.0
    # Pixel-loss target on frames without box annotations (spec §9.6; the authors' code never trains on them):
    # "mean" treats the whole frame as background ((V+I)/2), "max" as foreground (max(V, I)).
    unlabelled_target: str = "mean"
    # Pixel-loss target outside the boxes of labelled frames: "mean" = (V+I)/2 (the authors' code), "max" = max(V, I)
    # everywhere, i.e. the same target as foreground (for data where few frames have boxes; see MODEL_CARD.md),
    # "contrast" = each pixel follows the source with more local contrast (losses.contrast_blend).
    background_target: str = "mean"
    # With background_target "contrast": the contrast blend's share of the target there, the rest max(V, I)
    # (1 = the blend alone; lower values soften the swing between the sources around hot targets).
    contrast_mix: float = 1.0
    # Local-contrast boost of the pixel target (not in the paper; 0 = the paper's target T):
    # T + sum_i detail_gain[i] * (T - GaussianBlur_{detail_sigma[i]}(T)), clipped to [0, 1]; one number or a list
    # per band (sigma in pixels of the training crop). See MODEL_CARD.md for why.
    detail_gain: float | tuple[float, ...] = 0.0
    detail_sigma: float | tuple[float, ...] = 2.0
    # Distillation (not in the paper): weight of an L1 loss pulling the fused image towards that of a teacher model
    # (``train.teacher``) on the same crop; 0 = off. Added to the paper's losses, which stay as they are.
    distill_weight: float = 0.0
    # Structural similarity (not in the paper's loss; the issue allows it): weight of 1 − (SSIM(F, V) + SSIM(F, I))/2,
    # Gaussian window σ 1.5 px (losses.ssim); 0 = off.
    ssim_weight: float = 0.0


@dataclass
class TrainConfig:
    """Optimiser, schedule and data handling (spec §7)."""

    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 35.0
    batch_size: int = 4
    epochs: int = 24
    repeat: int = 3  # the dataset is wrapped in a repeat, so one epoch = `repeat` passes
    milestones: tuple[int, ...] = (16, 22)  # epochs after which the LR is multiplied by `gamma`
    gamma: float = 0.1
    steps: int | None = None  # overrides the epoch schedule (milestones scale proportionally)
    input_size: tuple[int, int] | None = (480, 640)  # (H, W) resize (paper); None = native size
    scale_range: tuple[float, float] | None = None  # random rescale factor before the crop (None: off)
    crop: tuple[int, int] | None = None  # (H, W) random crop after resizing (CPU schedules)
    hflip: float = 0.0  # probability of a horizontal flip (paper: none)
    exposure_p: float = 0.0  # per modality, probability of a random exposure change (paper: none)
    gain_range: tuple[float, float] = (0.1, 1.25)  # its gain, drawn log-uniformly
    gamma_range: tuple[float, float] = (0.7, 1.4)  # its gamma, drawn log-uniformly
    keep_unlabelled: bool = False  # spec §9.6: train the fusion head on frames without boxes too
    labelled_repeat: int = 1  # frames with boxes appear this many times per pass (when they are scarce)
    # Frames of these dataset folders (their names under --data, e.g. {m3svd: 3}) appear this many times per pass:
    # a small rig's scenes weigh more in training; every name must be a loaded dataset.
    dataset_repeat: dict[str, int] = field(default_factory=dict)
    # Class-balanced sampling (repeat-factor sampling, LVIS): a frame is repeated max over its classes of
    # max(1, sqrt(t / f_c)) times per pass, f_c = share of training frames holding class c; 0 = off.
    class_repeat_threshold: float = 0.0
    freeze_detector_bn: bool = False  # detectors' batch-norm layers keep their statistics (small detection batches)
    # Detector training that keeps the fused image: weight of an L1 loss pulling the attention map the fusion head
    # reads towards the initial model's (0 = off); mixing and attention layers are frozen when > 0.
    attention_anchor: float = 0.0
    freeze_detectors: bool = False  # train the fusion head only: detectors keep their weights and BN statistics
    # Detectors: train only the RPN and box heads; backbones, FPNs, mixing and attention (what produces Att) keep
    # their weights and BN statistics, so the fusion head's input is unchanged.
    freeze_detector_features: bool = False
    freeze_fusion: bool = False  # train the detectors only (the fusion head is not run)
    amp: bool = True  # autocast on CUDA (gates and combine stay fp32)
    checkpoint_every: int = 500
    log_every: int = 10
    num_workers: int = 2
    seed: int = 0
    val_fraction: float = 0.1  # held out by scene
    # A split file (training/splits/*.txt: '<dataset folder>/<stem>' per line) naming the validation frames;
    # replaces val_fraction. Whole sequences only (checked; moe_fusion_core.data.split.assign_sequences).
    split_file: str | None = None
    # Teacher for ``loss.distill_weight``: a checkpoint folder or an embedded model's name ("default"); frozen, in
    # eval mode (no routing noise), run on every training batch.
    teacher: str | None = None
    gate_lr_scale: float = 1.0  # learning rate of the gate matrices (W_g, W_n) relative to `lr` (docs/design.md)


@dataclass
class Config:
    """Everything a run needs: model, loss and training settings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        return _build(cls, data, "config")


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _build(cls: type, data: dict[str, Any] | None, where: str) -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys with the key's full name."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(where + '.' + k for k in unknown)}")
    kwargs: dict[str, Any] = {}
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    for key, value in data.items():
        t = str(hints[key])
        sub = _NESTED.get((cls.__name__, key))
        if sub is not None:
            base = getattr(cls(), key) if key != "detector" else DetectorConfig()
            merged = dataclasses.asdict(base) if base is not None else {}
            if value is None:
                kwargs[key] = None
                continue
            merged.update(value)
            kwargs[key] = _build(sub, merged, f"{where}.{key}")
        elif t.startswith("tuple") and value is not None:
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


_NESTED: dict[tuple[str, str], type] = {
    ("Config", "model"): ModelConfig,
    ("Config", "loss"): LossConfig,
    ("Config", "train"): TrainConfig,
    ("ModelConfig", "mole"): GateConfig,
    ("ModelConfig", "moge"): GateConfig,
    ("ModelConfig", "detector"): DetectorConfig,
}


def paper_config() -> Config:
    """The paper's model and recipe (authors' code, spec [R] defaults): R50-FPN detectors, N=4, K=2, α=10."""
    return Config()


def embedded_config() -> Config:
    """A light model for onboard GPUs and CPUs: MobileNetV3 FPN detectors, small gate grids, narrow MoGE.

    The fp16 checkpoint is ~25 MB; the fusion head keeps the paper's structure (encoders, 2×MoLE, MoGE,
    top-2 of 4 experts, logsumexp combine), with global experts of width 32-16-16 instead of 64-32-16.
    """
    cfg = Config()
    cfg.model.name = "embedded"
    cfg.model.global_channels = (32, 16, 16)
    cfg.model.mole = GateConfig(grid=(30, 40), pool="area", loss_coef=0.01)
    cfg.model.moge = GateConfig(grid=(15, 20), pool="area", loss_coef=0.02)
    cfg.model.detector = DetectorConfig(
        backbone="mobilenet_v3_large",
        fpn_channels=128,
        attention_channels=64,
        representation_size=256,
        trainable_layers=6,
        frozen_bn=False,
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=300,
        box_batch_size_per_image=256,
    )
    return cfg


def fast_config() -> Config:
    """``embedded`` with the work moved out of the full-resolution layers (MODEL_CARD.md, "The fast model").

    Every component of the method stays (encoders, attention, MoLE-fg/bg, MoGE, top-2 of 4 noisy gates, two
    detectors); what changes: encoders 8 wide (local experts 8-4-8), each global expert opens with a 1×1
    reduction of x_f to 16 channels and has widths 12-8, and the detectors' FPN is 64 wide (attention 32).
    ~19 GFLOP per 640×480 pair for the fused image (the embedded model: 107).
    """
    cfg = embedded_config()
    cfg.model.name = "fast"
    cfg.model.encoder_channels = 8
    cfg.model.local_hidden = 4
    cfg.model.global_reduce = 16
    cfg.model.global_channels = (12, 8)
    cfg.model.mole.input_norm = "unit"
    cfg.model.moge.input_norm = "unit"
    assert cfg.model.detector is not None
    cfg.model.detector.fpn_channels = 64
    cfg.model.detector.attention_channels = 32
    return cfg


NAMED_CONFIGS = {"paper": paper_config, "embedded": embedded_config, "fast": fast_config}

# Ablations of the paper's Table 2 / Fig. 7 as overrides on any config.
ABLATIONS: dict[str, dict[str, Any]] = {
    "wo_mole": {"model": {"local_mode": "none"}},
    "wo_moge": {"model": {"use_moge": False}},
    "att_local": {"model": {"local_mode": "att_local"}},
    "linear_combine": {"model": {"combine": "linear"}},
    "paper_att": {"model": {"att_mode": "conv"}},
}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def named_config(name: str) -> Config:
    """``paper`` or ``embedded``, optionally with ablations: ``paper+wo_mole``, ``embedded+att_local``."""
    base, *ablations = name.split("+")
    if base not in NAMED_CONFIGS:
        raise ValueError(f"unknown config {base!r}; known: {', '.join(NAMED_CONFIGS)}")
    data = NAMED_CONFIGS[base]().to_dict()
    for a in ablations:
        if a not in ABLATIONS:
            raise ValueError(f"unknown ablation {a!r}; known: {', '.join(ABLATIONS)}")
        data = merge(data, ABLATIONS[a])
    return Config.from_dict(data)


def load_config(spec: str | Path) -> Config:
    """A named config (``paper``, ``embedded+wo_moge``) or a YAML file.

    A YAML file may name a ``base:`` config and override any subset of keys.
    """
    p = Path(spec)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} not found")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{p}: expected a mapping at the top level")
        base = data.pop("base", None)
        if base is not None:
            data = merge(named_config(base).to_dict(), data)
        return Config.from_dict(data)
    return named_config(str(spec))
