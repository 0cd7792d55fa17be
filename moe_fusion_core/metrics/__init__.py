"""Evaluation metrics: the paper's eight image-fusion metrics and detection mAP."""

from .detection import Box, DetectionResult, mean_average_precision
from .fusion import (
    METRIC_NAMES,
    MODES,
    aggregate,
    average_gradient,
    entropy,
    mutual_information,
    nanmean_count,
    qabf,
    scd,
    score_all,
    spatial_frequency,
    standard_deviation,
    to_grey_u8,
    visual_information_fidelity,
)

__all__ = [
    "METRIC_NAMES",
    "MODES",
    "Box",
    "DetectionResult",
    "aggregate",
    "average_gradient",
    "entropy",
    "mean_average_precision",
    "mutual_information",
    "nanmean_count",
    "qabf",
    "scd",
    "score_all",
    "spatial_frequency",
    "standard_deviation",
    "to_grey_u8",
    "visual_information_fidelity",
]
