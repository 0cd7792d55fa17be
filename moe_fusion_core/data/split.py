"""Train/validation split by scene: frames of one scene are never on both sides."""

from __future__ import annotations

from collections import defaultdict

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
