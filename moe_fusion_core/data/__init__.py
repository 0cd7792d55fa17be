"""Datasets: readers for the original layouts, scene split, paired transforms, the training dataset."""

from .dataset import PairDataset, build_datasets, collate_pairs, ir_to_unit
from .readers import LAYOUTS, DatasetError, detect_layout, read_dataset, read_voc, read_yolo, scene_of
from .records import PairRecord
from .split import split_by_scene

__all__ = ["LAYOUTS", "DatasetError", "PairDataset", "PairRecord", "build_datasets", "collate_pairs",
           "detect_layout", "ir_to_unit", "read_dataset", "read_voc", "read_yolo", "scene_of", "split_by_scene"]
