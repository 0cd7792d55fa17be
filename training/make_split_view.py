"""Materialise the validation (or training) frames of a split file as one folder of symlinks.

    .venv/bin/python training/make_split_view.py --split training/splits/shared_val.txt --data ../shared/data \
        --out runs/val_split [--peer ../shared/data/peers/seafusion]

Writes ``OUT/ir/<dataset>/<stem>.png``, ``OUT/vis/<dataset>/<stem>.*``, ``OUT/labels/<dataset>/<stem>.txt`` (frames
with boxes), ``OUT/classes.txt`` and ``OUT/meta.csv`` (stem, light) so that ``moe-fusion fuse`` (day/night tags in
gates.jsonl) and ``moe-fusion evaluate`` (means per dataset folder) run on exactly the split; ``--peer DIR`` also
links another method's fused images, ``DIR/<dataset>/<stem>.png``, as ``OUT/peer/<dataset>/<stem>.png``. Label
files are rewritten with the class ids of ``--classes`` (default person, car); boxes of other classes are dropped.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_fusion_core.data.split import read_split_file


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    os.symlink(src.resolve(), dst)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="folder holding the dataset folders (../shared/data)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--peer", type=Path, default=None, help="another method's outputs, <dataset>/<stem>.png")
    ap.add_argument("--classes", nargs="+", default=["person", "car"])
    args = ap.parse_args(argv)
    keys = read_split_file(args.split)
    classes = [c.lower() for c in args.classes]
    rows = []
    light_of: dict[str, dict[str, str]] = {}  # dataset -> stem -> day/night (meta.csv), read once per dataset
    names_of: dict[str, list[str]] = {}  # dataset -> its classes.txt, read once per dataset
    for key in keys:
        ds, stem = key.split("/")
        root = args.data / ds
        if ds not in light_of:
            with open(root / "meta.csv", newline="") as f:
                light_of[ds] = {row["stem"]: row.get("light") or "unknown" for row in csv.DictReader(f)
                                if row.get("stem")}
        ir = next((p for p in (root / "ir").glob(f"{stem}.*")), None)
        vis = next((p for p in (root / "vis").glob(f"{stem}.*")), None)
        if ir is None or vis is None:
            raise FileNotFoundError(f"{key}: no ir/vis pair under {root}")
        _link(ir, args.out / "ir" / ds / ir.name)
        _link(vis, args.out / "vis" / ds / vis.name)
        lab = root / "labels" / f"{stem}.txt"
        if lab.is_file():
            if ds not in names_of:
                names_of[ds] = [c.strip().lower() for c in (root / "classes.txt").read_text().splitlines()
                                if c.strip()]
            names = names_of[ds]
            out_lines = []
            for line in lab.read_text().splitlines():
                parts = line.split()
                if len(parts) == 5 and names[int(parts[0])] in classes:
                    out_lines.append(" ".join([str(classes.index(names[int(parts[0])])), *parts[1:]]))
            dst = args.out / "labels" / ds / f"{stem}.txt"
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text("".join(x + "\n" for x in out_lines))
        if args.peer is not None:
            _link(args.peer / ds / f"{stem}.png", args.out / "peer" / ds / f"{stem}.png")
        rows.append((stem, light_of[ds].get(stem, "unknown"), ds))
    (args.out / "classes.txt").write_text("".join(c + "\n" for c in classes))
    with open(args.out / "meta.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stem", "light", "dataset"])
        w.writerows(rows)
    print(f"{args.out}: {len(rows)} pairs, {sum(r[1] == 'day' for r in rows)} day, "
          f"{sum(r[1] == 'night' for r in rows)} night")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
