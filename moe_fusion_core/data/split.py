"""Train/validation split by scene: frames of one scene are never on both sides."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from .records import PairRecord


def split_by_scene(records: list[PairRecord], val_fraction: float, seed: int
                   ) -> tuple[list[PairRecord], list[PairRecord]]:
    """Hold out whole scenes, per dataset, until about ``val_fraction`` of its frames are held out.

    A dataset with a single scene stays entirely in training (holding it out would leave nothing to learn
    from); the choice is seeded and independent of file order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"train.val_fraction must be in [0, 1), got {val_fraction}")
    train: list[PairRecord] = []
    val: list[PairRecord] = []
    by_dataset: dict[str, dict[str, list[PairRecord]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_dataset[r.dataset][r.scene].append(r)
    for name in sorted(by_dataset):
        scenes = by_dataset[name]
        keys = sorted(scenes)
        if val_fraction == 0.0 or len(keys) < 2:
            for k in keys:
                train.extend(scenes[k])
            continue
        total = sum(len(v) for v in scenes.values())
        rng = np.random.default_rng([seed, _stable_hash(name)])
        order = [keys[i] for i in rng.permutation(len(keys))]
        held, n_held = set(), 0
        for k in order:
            if n_held >= val_fraction * total or len(held) == len(keys) - 1:
                break
            held.add(k)
            n_held += len(scenes[k])
        for k in keys:
            (val if k in held else train).extend(scenes[k])
    return train, val


def _stable_hash(s: str) -> int:
    h = 2166136261
    for ch in s.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h


# ------------------------------------------------------------------------------------ sequence split (split file)

# Folders of ../shared/data that hold frames of one original dataset: their sequences are one namespace.
DATASET_FAMILY = {"msrs_more": "msrs", "msrs_det_more": "msrs", "llvip_det": "llvip", "llvip_more": "llvip",
                  "tno_more": "tno"}
SEQUENCE_GAP = 50  # frame ids further apart than this (same D/N tag) start a new MSRS / RoadScene drive
# MSRS's test split holds every ~4th frame of long drives: a drive is cut into sequences at multiples of this many
# frame ids, and training frames within SEQUENCE_GUARD ids of a validation frame of the same drive are left out
# of training (neither side), so no training frame is a near-copy of a validation frame across a cut.
MSRS_BLOCK = 100
SEQUENCE_GUARD = 24


def _family(dataset: str) -> str:
    return DATASET_FAMILY.get(dataset, dataset)


def _drives(records: list[PairRecord]) -> dict[str, tuple[str, int]]:
    """``{record.key: (drive, frame number)}`` for MSRS and RoadScene frames: runs of one stem prefix (and MSRS
    D/N tag) whose sorted frame numbers are at most ``SEQUENCE_GAP`` apart."""
    runs: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for r in records:
        fam = _family(r.dataset)
        m = re.match(r"^(.*?)(\d+)(\D*)$", r.stem) if fam in ("msrs", "roadscene") else None
        if m is None:
            continue
        tag = {"D": "day", "N": "night"}.get(m.group(3), "")  # MSRS's own D/N suffix: separate recordings
        runs[f"{fam}:{m.group(1)}{tag}"].append((int(m.group(2)), r.key))
    out: dict[str, tuple[str, int]] = {}
    for prefix, frames in runs.items():
        frames.sort()
        start = prev = frames[0][0]
        for num, key in frames:
            if num - prev > SEQUENCE_GAP:
                start = num
            out[key] = (f"{prefix}:{start}", num)
            prev = num
    return out


def assign_sequences(records: list[PairRecord]) -> dict[str, str]:
    """Sequence key of every record (``{record.key: sequence}``): frames that may come from one recording.

    Rules (``docs/design.md``, "Train/validation split"), per original dataset (``DATASET_FAMILY`` merges the
    shared folders that hold frames of one dataset, e.g. ``msrs``, ``msrs_more`` and ``msrs_det_more``):

    - LLVIP: the scene digits (first two of ``SSFFFF``); M3SVD: the recording id (``MMDD_hhmm``).
    - MSRS and RoadScene (frame numbers from drives, no published sequence ids): per stem prefix (and, for MSRS,
      its ``D``/``N`` suffix: day and night frames are different recordings), frames sorted by number; a gap of
      more than ``SEQUENCE_GAP`` ids starts a new drive. An MSRS drive is further cut at multiples of
      ``MSRS_BLOCK`` ids (the key names the first possible id of the piece: ``msrs:day:300``); see
      :func:`guard_frames` for the frames next to a cut.
    - TNO: one sequence for the whole dataset (its numbering says nothing about scenes, and the extra frames
      are neighbours of frames in ``tno/``); anything else: the record's ``scene``.
    """
    out: dict[str, str] = {}
    drives = _drives(records)
    for r in records:
        fam = _family(r.dataset)
        if r.key in drives:
            drive, num = drives[r.key]
            start = int(drive.rsplit(":", 1)[1])
            out[r.key] = drive if fam != "msrs" else f"{drive.rsplit(':', 1)[0]}:{max(start, num - num % MSRS_BLOCK)}"
        elif fam == "llvip":
            out[r.key] = f"llvip:{r.stem[:2]}"
        elif fam == "m3svd":
            out[r.key] = "m3svd:" + "_".join(r.stem.split("_")[:2])
        elif fam == "tno":
            out[r.key] = "tno"
        else:
            out[r.key] = f"{fam}:{r.scene}"
    return out


def guard_frames(records: list[PairRecord], val_keys: set[str]) -> list[str]:
    """Keys of non-validation frames within ``SEQUENCE_GUARD`` frame ids of a validation frame of the same drive
    (MSRS/RoadScene): left out of training by :func:`split_by_file`."""
    drives = _drives(records)
    held: dict[str, list[int]] = defaultdict(list)
    for k in val_keys:
        if k in drives:
            held[drives[k][0]].append(drives[k][1])
    return sorted(k for k, (drive, num) in drives.items()
                  if k not in val_keys and any(abs(num - v) <= SEQUENCE_GUARD for v in held.get(drive, ())))


def read_split_file(path: str | Path) -> list[str]:
    """Validation keys (``<dataset folder>/<stem>``) of a split file: one per line, ``#`` starts a comment."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"split file {p} not found")
    keys = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.count("/") != 1:
            raise ValueError(f"{p}:{n}: expected '<dataset folder>/<stem>', got {line!r}")
        keys.append(line)
    if len(set(keys)) != len(keys):
        raise ValueError(f"{p}: a key is listed twice")
    return keys


def split_by_file(records: list[PairRecord], val_keys: list[str]
                  ) -> tuple[list[PairRecord], list[PairRecord], list[str]]:
    """Records listed in ``val_keys`` are validation, the rest training except the :func:`guard_frames` (used by
    neither); returns (train, val, missing keys).

    Raises ``ValueError`` when a training frame shares a sequence (:func:`assign_sequences`) with a validation
    frame: a split file must hold out whole sequences.
    """
    held = set(val_keys)
    train = [r for r in records if r.key not in held]
    val = [r for r in records if r.key in held]
    present = {r.key for r in records}
    missing = [k for k in val_keys if k not in present]
    seq = assign_sequences(records)
    val_seqs = {seq[r.key] for r in val}
    leaks = sorted({seq[r.key] for r in train} & val_seqs)
    if leaks:
        examples = [r.key for r in train if seq[r.key] in leaks][:5]
        raise ValueError(f"split file holds out only part of sequence(s) {', '.join(leaks)}: training frames "
                         f"{', '.join(examples)} belong to them too")
    guard = set(guard_frames(records, held))
    train = [r for r in train if r.key not in guard]
    return train, val, missing
