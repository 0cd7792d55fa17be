"""Dataset readers: find the pairs and boxes of one dataset root, whatever its original layout.

Layouts recognised (detected from the folders present; ``detect_layout``):

``pairs``
    The layout of ``../shared/data``: ``ir/<stem>.*``, ``vis/<stem>.*``, optional ``labels/<stem>.txt`` (YOLO
    ``class cx cy w h``, normalised) with ``classes.txt`` (line *i* = class *i*), optional ``meta.csv`` (columns
    ``stem``, ``light``, optional ``scene``). A frame with no label file is *unlabelled*.
``m3fd``
    M³FD as released: ``Ir/<id>.png``, ``Vis/<id>.png``, ``Annotation/<id>.xml`` (PASCAL VOC), optional
    ``train.txt`` / ``test.txt`` id lists.
``llvip``
    LLVIP as released: ``infrared/{train,test}/<id>.jpg``, ``visible/{train,test}/<id>.jpg``,
    ``Annotations/<id>.xml`` (VOC). Stems are ``SSFFFF``: the first two digits name the scene.
``flir_aligned``
    The aligned FLIR ADAS subset (Zhang et al., ICIP 2020): ``JPEGImages/FLIR_<id>_PreviewData.jpeg`` (thermal),
    ``JPEGImages/FLIR_<id>_RGB.jpg``, ``Annotations/FLIR_<id>_PreviewData.xml`` (VOC, boxes in thermal pixels),
    ``align_train.txt`` / ``align_validation.txt``.
``msrs``
    MSRS as released: ``[train|test]/ir/<id>.png``, ``[train|test]/vi/<id>.png`` (no boxes; ``N``/``D``
    suffix = night/day).

A data argument may end in ``@train`` or ``@test`` to keep only the dataset's official subset (list files or
``train``/``test`` folders). VOC boxes are 1-based inclusive and converted to 0-based (``xmin - 1``); objects
marked ``difficult`` are dropped (the authors' code ignores them).
"""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..image_io import IMAGE_SUFFIXES
from .records import PairRecord

LAYOUTS = ("pairs", "m3fd", "llvip", "flir_aligned", "msrs")
SCENE_BLOCK = 50  # consecutive frame ids of a video dataset grouped into one scene


class DatasetError(ValueError):
    """A dataset root is missing, of an unknown layout, or holds inconsistent files."""


def split_data_arg(arg: str | Path) -> tuple[Path, str | None]:
    """``/data/M3FD@train`` -> (``/data/M3FD``, ``"train"``)."""
    s = str(arg)
    m = re.match(r"^(.*)@(train|test|val|validation)$", s)
    if m:
        return Path(m.group(1)), m.group(2)
    return Path(s), None


def detect_layout(root: Path) -> str:
    """Name of the layout of ``root`` (see the module docstring)."""
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")

    def has(*names: str) -> bool:
        return all((root / n).is_dir() for n in names)

    if has("ir", "vis"):
        return "pairs"
    if has("Ir", "Vis"):
        return "m3fd"
    if has("infrared", "visible"):
        return "llvip"
    if has("JPEGImages", "Annotations") and any((root / "JPEGImages").glob("*_PreviewData.jpeg")):
        return "flir_aligned"
    if has("ir", "vi") or has("train/ir", "train/vi") or has("test/ir", "test/vi"):
        return "msrs"
    raise DatasetError(f"{root}: unknown dataset layout (expected ir/ + vis/, Ir/ + Vis/, infrared/ + visible/, "
                       "JPEGImages/ + Annotations/, or [train|test]/ir + vi)")


def scene_of(stem: str, layout: str) -> str:
    """Scene key of a frame: LLVIP's scene digits, else blocks of ``SCENE_BLOCK`` consecutive frame ids."""
    if layout == "llvip" and re.fullmatch(r"\d{6}", stem):
        return stem[:2]
    m = re.match(r"^(.*?)(\d+)(\D*)$", stem)
    if not m:
        return stem
    return f"{m.group(1)}{int(m.group(2)) // SCENE_BLOCK}{m.group(3)}"


def _files(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
                out.setdefault(p.stem, p)
    return out


def _read_list(path: Path) -> list[str]:
    return [ln.strip().split()[0] for ln in path.read_text().splitlines() if ln.strip()]


# The one table of dataset class names that mean a model class (case-insensitive): a label file's name is looked
# up here first, then matched against the model's ``class_names``. Add a dataset's own spelling here, nowhere else.
CLASS_ALIASES: dict[str, str] = {
    "people": "person", "pedestrian": "person", "persons": "person",
    "bike": "bicycle", "bicycles": "bicycle",
    "cars": "car",
}


def canonical_class(name: str) -> str:
    """A dataset's class name in the model's vocabulary (``CLASS_ALIASES``; unknown names pass through, lowered)."""
    key = name.strip().lower()
    return CLASS_ALIASES.get(key, key)


def _class_index(name: str, class_names: list[str], source: Path) -> int:
    lowered = [canonical_class(c) for c in class_names]
    key = canonical_class(name)
    if key not in lowered:
        raise DatasetError(f"{source}: class {name!r} (= {key!r} in moe_fusion_core.data.readers.CLASS_ALIASES) is "
                           f"not among the model's classes {class_names} (set model.class_names in the training "
                           "config, or map the name in CLASS_ALIASES)")
    return lowered.index(key)


def read_voc(path: Path, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) 0-based ``x1 y1 x2 y2`` and 0-based labels from a PASCAL-VOC XML; difficult objects dropped."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise DatasetError(f"{path}: unreadable VOC annotation ({e})") from e
    boxes, labels = [], []
    for obj in root.iter("object"):
        diff = obj.findtext("difficult")
        if diff is not None and diff.strip() not in ("", "0"):
            continue
        bb = obj.find("bndbox")
        if bb is None:
            raise DatasetError(f"{path}: object without bndbox")
        try:
            x1, y1, x2, y2 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{path}: bad bndbox ({e})") from e
        boxes.append([x1 - 1, y1 - 1, x2 - 1, y2 - 1])
        labels.append(_class_index(obj.findtext("name") or "", class_names, path))
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


def read_yolo(path: Path, file_classes: list[str] | None, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised boxes (N, 4) ``x1 y1 x2 y2`` in [0, 1] and 0-based labels from a YOLO label file."""
    boxes, labels = [], []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise DatasetError(f"{path}:{i}: expected 'class cx cy w h', got {line!r}")
        try:
            cls = int(parts[0])
            cx, cy, w, h = map(float, parts[1:])
        except ValueError as e:
            raise DatasetError(f"{path}:{i}: {e}") from e
        if file_classes is not None:
            if not 0 <= cls < len(file_classes):
                raise DatasetError(f"{path}:{i}: class id {cls} not in classes.txt ({len(file_classes)} classes)")
            cls = _class_index(file_classes[cls], class_names, path)
        elif not 0 <= cls < len(class_names):
            raise DatasetError(f"{path}:{i}: class id {cls} outside the model's {len(class_names)} classes")
        boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        labels.append(cls)
    return np.clip(np.asarray(boxes, np.float32).reshape(-1, 4), 0.0, 1.0), np.asarray(labels, np.int64)


def _with_voc(rec: PairRecord, xml: Path, class_names: list[str]) -> PairRecord:
    """Attach the boxes of ``xml`` to ``rec`` when the file exists (no file: the frame stays unlabelled)."""
    if xml.is_file():
        rec.boxes, rec.labels = read_voc(xml, class_names)
        rec.labelled = True
    return rec


def _meta(root: Path) -> dict[str, dict[str, str]]:
    p = root / "meta.csv"
    if not p.is_file():
        return {}
    with open(p, newline="") as f:
        return {row["stem"]: row for row in csv.DictReader(f) if row.get("stem")}


def _read_pairs(root: Path, subset: str | None, class_names: list[str]) -> list[PairRecord]:
    ir, vis = _files(root / "ir"), _files(root / "vis")
    labels_dir = root / "labels"
    classes_txt = root / "classes.txt"
    file_classes = [c.strip() for c in classes_txt.read_text().splitlines() if c.strip()] \
        if classes_txt.is_file() else None
    meta = _meta(root)
    keep = set(_read_list(root / f"{subset}.txt")) if subset and (root / f"{subset}.txt").is_file() else None
    if subset and keep is None:
        raise DatasetError(f"{root}: no {subset}.txt to select the '{subset}' subset from")
    out = []
    for stem in sorted(set(ir) & set(vis)):
        if keep is not None and stem not in keep:
            continue
        row = meta.get(stem, {})
        rec = PairRecord(stem, ir[stem], vis[stem], root.name, row.get("scene") or scene_of(stem, "pairs"),
                         light=row.get("light") or "unknown")
        lab = labels_dir / f"{stem}.txt"
        if lab.is_file():
            rec.boxes, rec.labels = read_yolo(lab, file_classes, class_names)
            rec.labelled, rec.boxes_normalized = True, True
        out.append(rec)
    return out


def _read_m3fd(root: Path, subset: str | None, class_names: list[str]) -> list[PairRecord]:
    ir, vis = _files(root / "Ir"), _files(root / "Vis")
    keep = None
    if subset:
        lst = root / f"{subset}.txt"
        if not lst.is_file():
            raise DatasetError(f"{root}: no {lst.name} to select the '{subset}' subset from")
        keep = set(_read_list(lst))
    out = []
    for stem in sorted(set(ir) & set(vis)):
        if keep is not None and stem not in keep:
            continue
        rec = PairRecord(stem, ir[stem], vis[stem], root.name, scene_of(stem, "m3fd"))
        out.append(_with_voc(rec, root / "Annotation" / f"{stem}.xml", class_names))
    return out


def _read_llvip(root: Path, subset: str | None, class_names: list[str]) -> list[PairRecord]:
    subsets = [subset] if subset else ["train", "test"]
    out = []
    for sub in subsets:
        sub = "test" if sub in ("val", "validation") else sub
        ir, vis = _files(root / "infrared" / sub), _files(root / "visible" / sub)
        for stem in sorted(set(ir) & set(vis)):
            rec = PairRecord(stem, ir[stem], vis[stem], root.name, scene_of(stem, "llvip"), light="night")
            out.append(_with_voc(rec, root / "Annotations" / f"{stem}.xml", class_names))
    return out


def _read_flir(root: Path, subset: str | None, class_names: list[str]) -> list[PairRecord]:
    jpeg = root / "JPEGImages"
    ids = sorted(p.name[: -len("_PreviewData.jpeg")] for p in jpeg.glob("*_PreviewData.jpeg"))
    if subset:
        name = {"train": "align_train.txt", "test": "align_validation.txt", "val": "align_validation.txt",
                "validation": "align_validation.txt"}[subset]
        lst = root / name
        if not lst.is_file():
            raise DatasetError(f"{root}: no {name} to select the '{subset}' subset from")
        keep = {s.replace("_PreviewData", "").replace("_RGB", "") for s in _read_list(lst)}
        ids = [i for i in ids if i in keep]
    out = []
    for fid in ids:
        rgb = jpeg / f"{fid}_RGB.jpg"
        if not rgb.is_file():
            continue
        rec = PairRecord(fid, jpeg / f"{fid}_PreviewData.jpeg", rgb, root.name, scene_of(fid, "flir_aligned"))
        out.append(_with_voc(rec, root / "Annotations" / f"{fid}_PreviewData.xml", class_names))
    return out


def _read_msrs(root: Path, subset: str | None, class_names: list[str]) -> list[PairRecord]:
    if (root / "ir").is_dir():
        bases = [root]
    else:
        subs = [subset] if subset else ["train", "test"]
        bases = [root / s for s in subs if (root / s / "ir").is_dir()]
    out = []
    for base in bases:
        ir, vis = _files(base / "ir"), _files(base / "vi")
        for stem in sorted(set(ir) & set(vis)):
            light = {"N": "night", "D": "day"}.get(stem[-1:], "unknown")
            out.append(PairRecord(stem, ir[stem], vis[stem], root.name, scene_of(stem, "msrs"), light=light))
    return out


_READERS = {"pairs": _read_pairs, "m3fd": _read_m3fd, "llvip": _read_llvip, "flir_aligned": _read_flir,
            "msrs": _read_msrs}


def read_dataset(arg: str | Path, class_names: list[str]) -> tuple[list[PairRecord], str]:
    """All pairs of one dataset root (``PATH`` or ``PATH@subset``) and the layout it was read as."""
    root, subset = split_data_arg(arg)
    layout = detect_layout(root)
    records = _READERS[layout](root, subset, class_names)
    if not records:
        raise DatasetError(f"{root}: no infrared/visible pairs found (layout '{layout}')")
    return records, layout
