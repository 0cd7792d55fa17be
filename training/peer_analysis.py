"""Per-pair analysis of where our fusion loses metric points against a peer's published outputs.

    .venv/bin/python training/peer_analysis.py --fused runs/val_v2 --view runs/val_view \
        --peer ../shared/data/peers/seafusion --peer-metrics ../shared/data/peers/seafusion_metrics_367.json \
        --eval runs/val_v2/eval.json --out runs/peer_analysis --sheet docs/peer_worst10.jpg

``--view`` is a folder of ``training/make_split_view.py`` (``ir/``, ``vis/``, ``meta.csv``); ``--fused`` holds our
``<dataset>/<stem>.png``, ``--peer`` the peer's. Metrics are paper mode (``moe_fusion_core.metrics``, the same code
and grey sources as ``moe-fusion evaluate``): ours come from ``--eval`` (the JSON of ``moe-fusion evaluate``) when
given, the peer's from ``--peer-metrics`` (``{"methods": {NAME: {"paper": {"per_image": …}}}}``) when given;
otherwise they are scored here. ``--check`` pairs of the peer are always re-scored from its images and must match
the file (the comparison is void otherwise). The peer is a yardstick, never a training target.

Writes ``OUT/per_pair.csv`` (deltas ours − peer on the eight metrics and the scene measures), ``OUT/summary.json``
and ``OUT/report.md`` (group means by light, dataset and scene-measure tercile; Pearson and Spearman correlations
of the VIF/SCD/Qabf deltas with each measure), and with ``--sheet`` one JPEG of the ``--worst`` pairs by VIF delta
(rows: ours | peer | visible | infrared, the pair name and the three deltas written on each row).

Scene measures (grey sources in [0, 1]; "hot" = infrared ≥ its mean + 2 standard deviations):

- ``vis_mean``, ``vis_rms``: mean and standard deviation of the visible image; ``ir_hot_share``: share of hot pixels;
  ``vis_noise``: Immerkær's noise sigma of the visible image (grey levels of 255).
- ``mean_ours`` / ``mean_peer`` (and ``mean_diff``), ``rms_ours`` / ``rms_peer`` (``rms_diff``): mean and standard
  deviation of the fused image.
- ``hot_ours`` / ``hot_peer`` (``hot_diff``): mean fused intensity over the hot pixels.
- ``vdetail_ours`` / ``vdetail_peer`` (``vdetail_diff``): over visible-detail pixels (local 7×7 standard deviation
  of the visible image in its top 20 % and above the infrared's), the ratio of the fused image's local standard
  deviation to the visible image's (1 = the visible detail kept at full contrast).
- ``gdiff_ours`` / ``gdiff_peer``: mean |fused − visible| over the visible-detail pixels (grey levels of 255).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import convolve, uniform_filter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_fusion_core.image_io import read_image, read_ir
from moe_fusion_core.metrics.fusion import METRIC_NAMES, score_all, to_grey_u8

KEY_METRICS = ("VIF", "SCD", "Qabf")
HOT_SIGMAS = 2.0  # hot = IR >= mean + HOT_SIGMAS * std
DETAIL_WINDOW = 7  # local standard deviation window (pixels)
DETAIL_TOP = 0.2  # visible-detail pixels: top share of the visible image's local standard deviation
MEASURES = ("vis_mean", "vis_rms", "ir_hot_share", "vis_noise", "mean_ours", "mean_peer", "mean_diff",
            "rms_ours", "rms_peer", "rms_diff", "hot_ours", "hot_peer", "hot_diff", "vdetail_ours", "vdetail_peer",
            "vdetail_diff", "gdiff_ours", "gdiff_peer", "gdiff_diff")
PEER_CHECK_TOL = 1e-6


def _find(folder: Path, key: str) -> Path:
    """The file ``folder/<key>.*`` (one image per stem)."""
    ds, stem = key.split("/")
    hits = sorted((folder / ds).glob(f"{stem}.*"))
    if not hits:
        raise FileNotFoundError(f"{key}: no image under {folder}")
    return hits[0]


def load_triple(key: str, fused: Path, view: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fused, infrared and visible grey ``uint8`` images of a pair, as ``moe-fusion evaluate`` reads them."""
    f = to_grey_u8(read_image(_find(fused, key)), "fused")
    ir = to_grey_u8(read_ir(_find(view / "ir", key)), "ir")
    vis = to_grey_u8(read_image(_find(view / "vis", key)), "vis")
    return f, ir, vis


def noise_sigma(img: np.ndarray) -> float:
    """Immerkær (1996) fast noise estimate of a grey image, in its own grey levels."""
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    r = convolve(img.astype(np.float64), k, mode="reflect")[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(r).mean() / 6.0)


def _local_std(x: np.ndarray) -> np.ndarray:
    m = uniform_filter(x, DETAIL_WINDOW, mode="reflect")
    return np.sqrt(np.maximum(uniform_filter(x * x, DETAIL_WINDOW, mode="reflect") - m * m, 0.0))


def scene_measures(ours: np.ndarray, peer: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> dict[str, float]:
    """The scene measures of the module docstring for one pair (``uint8`` grey inputs)."""
    o, p, i, v = (a.astype(np.float64) / 255.0 for a in (ours, peer, ir, vis))
    hot = i >= i.mean() + HOT_SIGMAS * i.std()
    if not hot.any():
        hot = i >= i.max()
    sv, si = _local_std(v), _local_std(i)
    detail = (sv >= np.quantile(sv, 1.0 - DETAIL_TOP)) & (sv > si)
    if not detail.any():
        detail = sv >= np.quantile(sv, 1.0 - DETAIL_TOP)
    den = sv[detail].sum()
    out = {"vis_mean": float(v.mean()), "vis_rms": float(v.std()), "ir_hot_share": float(hot.mean()),
           "vis_noise": noise_sigma(vis)}
    for name, f in (("ours", o), ("peer", p)):
        out[f"mean_{name}"] = float(f.mean())
        out[f"rms_{name}"] = float(f.std())
        out[f"hot_{name}"] = float(f[hot].mean())
        out[f"vdetail_{name}"] = float(_local_std(f)[detail].sum() / den) if den > 0 else float("nan")
        out[f"gdiff_{name}"] = float(np.abs(f - v)[detail].mean() * 255.0)
    for m in ("mean", "rms", "hot", "vdetail", "gdiff"):
        out[f"{m}_diff"] = out[f"{m}_ours"] - out[f"{m}_peer"]
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):  # average ranks of ties
        sel = x == v
        if sel.sum() > 1:
            r[sel] = r[sel].mean()
    return r


def correlations(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Pearson and Spearman correlation of two samples (NaN pairs dropped)."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan"), float("nan")
    return float(np.corrcoef(x, y)[0, 1]), float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def _per_image(path: Path | None, name: str | None) -> dict[str, dict[str, float]] | None:
    if path is None:
        return None
    d = json.loads(path.read_text())
    block = d["methods"][name] if name is not None else d
    return block["paper"]["per_image"]


def _group_rows(rows: list[dict], groups: dict[str, list[int]]) -> list[dict]:
    out = []
    for g, idx in groups.items():
        r = {"group": g, "n": len(idx)}
        for m in METRIC_NAMES:
            r[f"d_{m}"] = float(np.mean([rows[i][f"d_{m}"] for i in idx]))
        r["vif_lost_share"] = float(np.mean([rows[i]["d_VIF"] < 0 for i in idx]))
        for m in ("mean_diff", "rms_diff", "hot_diff", "vdetail_diff", "gdiff_diff"):
            r[m] = float(np.mean([rows[i][m] for i in idx]))
        out.append(r)
    return out


def _tile(img: np.ndarray, width: int) -> Image.Image:
    im = Image.fromarray(img)
    h = round(im.height * width / im.width)
    return im.convert("RGB").resize((width, h), Image.Resampling.LANCZOS)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def contact_sheet(rows: list[dict], fused: Path, peer: Path, view: Path, out: Path, peer_name: str,
                  tile: int = 256, quality: int = 82) -> None:
    """One JPEG: per pair a caption line and ours | peer | visible (colour) | infrared, tiles ``tile`` px wide."""
    font, cap_h, pad = _font(15), 22, 4
    strips = []
    for r in rows:
        key = r["key"]
        imgs = [read_image(_find(fused, key)), read_image(_find(peer, key)),
                read_image(_find(view / "vis", key)), read_ir(_find(view / "ir", key))]
        tiles = [_tile(to_grey_u8(a) if a.ndim == 2 or a.dtype != np.uint8 else a, tile) for a in imgs]
        h = max(t.height for t in tiles)
        strip = Image.new("RGB", (4 * tile + 3 * pad, h + cap_h), "white")
        ImageDraw.Draw(strip).text(
            (4, 3), f"{key} ({r['light']})   dVIF {r['d_VIF']:+.3f}   dSCD {r['d_SCD']:+.3f}   "
                    f"dQabf {r['d_Qabf']:+.3f}   [ours | {peer_name} | visible | infrared]", fill="black", font=font)
        for j, t in enumerate(tiles):
            strip.paste(t, (j * (tile + pad), cap_h))
        strips.append(strip)
    sheet = Image.new("RGB", (strips[0].width, sum(s.height for s in strips) + pad * (len(strips) - 1)), "white")
    y = 0
    for s in strips:
        sheet.paste(s, (0, y))
        y += s.height + pad
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, quality=quality, optimize=True)


def _fmt(x: float, nd: int = 4) -> str:
    return "—" if not np.isfinite(x) else f"{x:+.{nd}f}"


def report(rows: list[dict], group_tables: dict[str, list[dict]], corr: dict, peer_name: str) -> str:
    """The markdown report: group tables and correlations."""
    lines = [f"# ours − {peer_name} per pair ({len(rows)} pairs, paper mode)", ""]
    for title, table in group_tables.items():
        lines += [f"## by {title}", "",
                  "| group | n | " + " | ".join(f"Δ{m}" for m in METRIC_NAMES)
                  + " | VIF lost | Δmean | Δrms | Δhot | Δvdetail | Δgdiff |",
                  "|---|---:|" + "---:|" * (len(METRIC_NAMES) + 6)]
        for r in table:
            lines.append(f"| {r['group']} | {r['n']} | " + " | ".join(_fmt(r[f'd_{m}']) for m in METRIC_NAMES)
                         + f" | {r['vif_lost_share']:.0%} | {_fmt(r['mean_diff'])} | {_fmt(r['rms_diff'])} | "
                           f"{_fmt(r['hot_diff'])} | {_fmt(r['vdetail_diff'], 3)} | {_fmt(r['gdiff_diff'], 2)} |")
        lines.append("")
    lines += ["## correlations with the deltas (Pearson / Spearman)", "",
              "| measure | " + " | ".join(f"Δ{m}" for m in KEY_METRICS) + " |", "|---|" + "---:|" * len(KEY_METRICS)]
    for meas in MEASURES:
        lines.append(f"| {meas} | " + " | ".join(f"{corr[m][meas][0]:+.2f} / {corr[m][meas][1]:+.2f}"
                                                 for m in KEY_METRICS) + " |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fused", required=True, type=Path, help="our fused images, <dataset>/<stem>.png")
    ap.add_argument("--view", required=True, type=Path, help="training/make_split_view.py folder (ir/, vis/, meta.csv)")
    ap.add_argument("--peer", required=True, type=Path, help="the peer's fused images, <dataset>/<stem>.png")
    ap.add_argument("--peer-metrics", type=Path, default=None, help="the peer's per-image metrics JSON")
    ap.add_argument("--peer-name", default="SeAFusion")
    ap.add_argument("--eval", type=Path, default=None, help="JSON of 'moe-fusion evaluate' on --fused (paper mode)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--sheet", type=Path, default=None, help="JPEG of the worst pairs by VIF delta")
    ap.add_argument("--worst", type=int, default=10)
    ap.add_argument("--tile", type=int, default=256, help="sheet tile width (pixels)")
    ap.add_argument("--check", type=int, default=3, help="peer pairs re-scored from images against --peer-metrics")
    args = ap.parse_args(argv)

    with open(args.view / "meta.csv", newline="") as f:
        meta = {f"{r['dataset']}/{r['stem']}": r.get("light") or "unknown" for r in csv.DictReader(f)}
    keys = sorted(meta)
    ours_m = _per_image(args.eval, None)
    peer_m = _per_image(args.peer_metrics, args.peer_name)
    rows: list[dict] = []
    checked = 0
    for n, key in enumerate(keys, 1):
        fu, ir, vis = load_triple(key, args.fused, args.view)
        pe = to_grey_u8(read_image(_find(args.peer, key)), "peer")
        ours = ours_m[key] if ours_m is not None else score_all(fu, ir, vis, "paper")
        if peer_m is None:
            peer = score_all(pe, ir, vis, "paper")
        else:
            peer = peer_m[key]
            if checked < args.check:
                again = score_all(pe, ir, vis, "paper")
                bad = {m: (again[m], peer[m]) for m in METRIC_NAMES if abs(again[m] - peer[m]) > PEER_CHECK_TOL}
                if bad:
                    print(f"error: {key}: the peer's images do not score as its metrics file says: {bad}",
                          file=sys.stderr)
                    return 1
                checked += 1
        row = {"key": key, "dataset": key.split("/")[0], "light": meta[key]}
        for m in METRIC_NAMES:
            row[f"ours_{m}"], row[f"peer_{m}"] = ours[m], peer[m]
            row[f"d_{m}"] = ours[m] - peer[m]
        row.update(scene_measures(fu, pe, ir, vis))
        rows.append(row)
        print(f"\r{n}/{len(keys)} {key}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    groups: dict[str, dict[str, list[int]]] = {"all": {"all": list(range(len(rows)))},
                                               "light": defaultdict(list), "dataset": defaultdict(list)}
    for i, r in enumerate(rows):
        groups["light"][r["light"]].append(i)
        groups["dataset"][r["dataset"]].append(i)
        groups["dataset"][f"{r['dataset']}, {r['light']}"].append(i)
    for meas in ("vis_mean", "vis_rms", "ir_hot_share", "vis_noise"):
        v = np.array([r[meas] for r in rows])
        lo, hi = np.quantile(v, [1 / 3, 2 / 3])
        g = groups.setdefault(f"{meas} tercile", {})
        for i, x in enumerate(v):
            name = (f"low (≤ {lo:.3g})" if x <= lo else "mid" if x <= hi else f"high (> {hi:.3g})")
            g.setdefault(name, []).append(i)
        groups[f"{meas} tercile"] = {k: g[k] for k in sorted(g, key=lambda s: ("low", "mid", "high").index(
            s.split()[0]))}
    group_tables = {t: _group_rows(rows, dict(sorted(g.items())) if t == "dataset" else dict(g))
                    for t, g in groups.items()}
    corr = {m: {meas: correlations(np.array([r[meas] for r in rows]), np.array([r[f"d_{m}"] for r in rows]))
                for meas in MEASURES} for m in KEY_METRICS}
    worst = sorted(rows, key=lambda r: r["d_VIF"])[: args.worst]

    args.out.mkdir(parents=True, exist_ok=True)
    cols = list(rows[0])
    with open(args.out / "per_pair.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    text = report(rows, group_tables, corr, args.peer_name)
    text += "\n## worst pairs by ΔVIF\n\n| pair | light | ΔVIF | ΔSCD | ΔQabf | Δrms | Δhot | Δvdetail |\n" \
            "|---|---|---:|---:|---:|---:|---:|---:|\n" + "".join(
                f"| {r['key']} | {r['light']} | {r['d_VIF']:+.4f} | {r['d_SCD']:+.4f} | {r['d_Qabf']:+.4f} | "
                f"{r['rms_diff']:+.4f} | {r['hot_diff']:+.4f} | {r['vdetail_diff']:+.3f} |\n" for r in worst)
    (args.out / "report.md").write_text(text)
    (args.out / "summary.json").write_text(json.dumps(
        {"pairs": len(rows), "peer": args.peer_name, "peer_pairs_rescored": checked, "groups": group_tables,
         "correlations": {m: {k: {"pearson": v[0], "spearman": v[1]} for k, v in c.items()}
                          for m, c in corr.items()},
         "worst_by_vif": [r["key"] for r in worst]}, indent=1))
    if args.sheet is not None:
        contact_sheet(worst, args.fused, args.peer, args.view, args.sheet, args.peer_name, args.tile)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
