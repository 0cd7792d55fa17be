"""Pictures of what the model did: one contact sheet per pair and an HTML page that shows them.

Used by ``moe-fusion fuse --html-report DIR`` and ``moe-fusion replay --html-report DIR`` (ROS-free). A contact
sheet is one JPEG per pair: thermal | visible | fused | fused + detections on one row, the gate weights of the
three mixtures of experts as a bar chart below. :class:`HtmlReport` collects the sheets and writes
``DIR/index.html`` with the per-stage latency table, the fusion metrics (mean and per pair) and a run summary.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .image_io import rgb_to_luma, write_image

PANEL_HEIGHT = 240
CHART_HEIGHT = 120
GATE_LABELS = {"mole_fg": "MoLE-fg (local, foreground)", "mole_bg": "MoLE-bg (local, background)",
               "moge": "MoGE (global)"}
_GATE_COLOURS = {"mole_fg": (230, 120, 40), "mole_bg": (60, 150, 220), "moge": (120, 190, 80)}  # RGB
_BOX_COLOUR = (255, 64, 0)
_TEXT_COLOUR = (255, 255, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_LABEL_SCALE = 0.45


def draw_detections(rgb: np.ndarray, detections: Iterable[Any], scale: float = 1.0) -> np.ndarray:
    """A copy of ``rgb`` (H×W×3, or H×W grey) with boxes, class names and scores drawn.

    ``detections``: objects with ``box`` (x1, y1, x2, y2 in pixels of an image ``1/scale`` times the size of
    ``rgb``), ``class_name`` and ``score``; a ``track_id`` (when set) is drawn as ``#17``. Labels sit on a dark
    plate above their box and never cover each other (:func:`place_labels`); a label pushed away from its box
    by others is tied to it by a thin line."""
    img = np.asarray(rgb)
    img = np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img.copy())
    dets = sorted(detections, key=lambda d: -float(d.score))
    boxes = [tuple(round(v * scale) for v in d.box) for d in dets]
    texts = [f"{d.class_name}{'' if getattr(d, 'track_id', None) is None else f' #{d.track_id}'} {d.score:.2f}"
             for d in dets]
    sizes = [cv2.getTextSize(t, _FONT, _LABEL_SCALE, 1)[0] for t in texts]
    for x1, y1, x2, y2 in boxes:
        cv2.rectangle(img, (x1, y1), (x2, y2), _BOX_COLOUR, 2)
    rects = place_labels(boxes, [(w + 4, h + 6) for w, h in sizes], img.shape[:2])
    for (x1, y1, _x2, _y2), (x, y, _w, h) in zip(boxes, rects):
        if y + h < y1 - 1:  # stacked above its box by other labels: a leader line to the box
            cv2.line(img, (x + 1, y + h), (x1 + 1, y1), _BOX_COLOUR, 1, cv2.LINE_AA)
    for text, (x, y, w, h) in zip(texts, rects):
        cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), (0, 0, 0), -1)
        cv2.putText(img, text, (x + 2, y + h - 4), _FONT, _LABEL_SCALE, _TEXT_COLOUR, 1, cv2.LINE_AA)
    return img


def place_labels(boxes: Sequence[tuple[int, int, int, int]], sizes: Sequence[tuple[int, int]],
                 shape: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Label rectangles (x, y, w, h), one per box in the given order (most important first), inside an image of
    ``shape`` (H, W): right above the box where that is free, else the first free slot of: up to three label
    heights higher, inside the box's top, below the box; a label that finds no free slot keeps the place right
    above its box."""
    height, width = shape
    placed: list[tuple[int, int, int, int]] = []
    for (x1, y1, _x2, y2), (w, h) in zip(boxes, sizes):
        x = min(max(0, x1), max(0, width - w))
        tries = [y1 - h - k * h for k in range(4)] + [y1 + 2 + k * h for k in range(3)] + [y2 + 2]
        rects = [(x, min(max(0, y), max(0, height - h)), w, h) for y in tries]
        free = [r for r in rects if not any(_overlap(r, o) for o in placed)]
        placed.append(free[0] if free else rects[0])
    return placed


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _as_rgb8(img: np.ndarray) -> np.ndarray:
    """Any image the commands handle (grey 8/16-bit, float, RGB) as H×W×3 uint8 for display."""
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.dtype != np.uint8:
        f = a.astype(np.float32)
        finite = f[np.isfinite(f)]
        lo, hi = (np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0))
        a = np.clip((np.nan_to_num(f, nan=lo) - lo) * (255.0 / max(hi - lo, 1e-6)) + 0.5, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] < 3:
        raise ValueError(f"cannot display an image of shape {a.shape}")
    return np.ascontiguousarray(a[:, :, :3])


def _panel(img: np.ndarray, caption: str, height: int, detections: Sequence[Any] | None = None) -> np.ndarray:
    """``img`` scaled to ``height`` (aspect ratio kept), boxes drawn at that scale, a caption bar on top."""
    a = _as_rgb8(img)
    h, w = a.shape[:2]
    width = max(1, round(w * height / h))
    a = cv2.resize(a, (width, height), interpolation=cv2.INTER_AREA if h > height else cv2.INTER_LINEAR)
    if detections is not None:
        a = draw_detections(a, detections, scale=height / h)
    bar = np.full((20, width, 3), 32, np.uint8)
    cv2.putText(bar, caption, (5, 14), _FONT, 0.45, (240, 240, 240), 1, cv2.LINE_AA)
    return np.vstack([bar, a])


def gate_chart(gates: Mapping[str, Sequence[float]], width: int, height: int = CHART_HEIGHT) -> np.ndarray:
    """Bar chart (RGB uint8) of the gate weights: one group per mixture, one bar per expert, weights in [0, 1]."""
    img = np.full((height, width, 3), 250, np.uint8)
    names = [k for k in GATE_LABELS if k in gates] + [k for k in gates if k not in GATE_LABELS]
    if not names:
        cv2.putText(img, "no gate weights", (8, height // 2), _FONT, 0.5, (90, 90, 90), 1, cv2.LINE_AA)
        return img
    top, bottom = 22, height - 18
    group_w = width / len(names)
    for g, name in enumerate(names):
        w = np.asarray(gates[name], np.float64).reshape(-1)
        x0 = round(g * group_w) + 10
        gw = round(group_w) - 20
        colour = _GATE_COLOURS.get(name, (150, 150, 150))
        cv2.putText(img, GATE_LABELS.get(name, name), (x0, 15), _FONT, 0.42, (30, 30, 30), 1, cv2.LINE_AA)
        cv2.line(img, (x0, bottom), (x0 + gw, bottom), (120, 120, 120), 1)
        n = max(len(w), 1)
        slot = gw / n
        for e, v in enumerate(w):
            v = float(v) if math.isfinite(v) else 0.0
            bx = round(x0 + e * slot + slot * 0.15)
            bw = max(2, round(slot * 0.7))
            by = round(bottom - (bottom - top) * min(max(v, 0.0), 1.0))
            if by < bottom:  # a zero weight draws no bar
                cv2.rectangle(img, (bx, by), (bx + bw, bottom), colour, -1)
            cv2.putText(img, f"e{e + 1}", (bx, height - 4), _FONT, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
            if v > 0.005:
                cv2.putText(img, f"{v:.2f}", (bx, max(top - 2, by - 3)), _FONT, 0.38, (30, 30, 30), 1, cv2.LINE_AA)
    return img


def contact_sheet(ir: np.ndarray, vis: np.ndarray, fused: np.ndarray, detections: Sequence[Any],
                  gates: Mapping[str, Sequence[float]], title: str = "",
                  panel_height: int = PANEL_HEIGHT) -> np.ndarray:
    """One pair as an RGB uint8 picture: thermal | visible | fused | fused + detections, gate weights below.

    ``fused`` may be grey or colour; boxes are in ``fused``'s pixel frame (the visible image's size)."""
    n = len(detections)
    panels = [_panel(ir, "thermal", panel_height), _panel(vis, "visible", panel_height),
              _panel(fused, "fused", panel_height),
              _panel(fused, f"fused + {n} detection{'s' if n != 1 else ''}", panel_height, detections)]
    sep = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    row = np.hstack([p for pair in zip(panels, [sep] * len(panels)) for p in pair][:-1])
    width = row.shape[1]
    head = np.full((24, width, 3), 255, np.uint8)
    cv2.putText(head, title, (6, 17), _FONT, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
    return np.vstack([head, row, gate_chart(gates, width)])


def sheet_name(name: str) -> str:
    """A file-system-safe sheet file name for a pair name (stems may contain sub-folders)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace("/", "__"))
    return f"{safe or 'pair'}.jpg"


@dataclass
class SheetEntry:
    """One pair of the report."""

    name: str
    file: str  # relative to the report folder
    tag: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float | None] | None = None
    detections: int = 0


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return html.escape(str(v))


def _table(header: Sequence[str] | None, rows: Iterable[Sequence[Any]]) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>\n" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>\n" for r in rows)
    return f"<table>\n{head}{body}</table>\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}figure{margin:0 0 1.5em}
img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.9em;color:#555}code{background:#f4f4f4}"""


class HtmlReport:
    """Contact sheets in ``out_dir/sheets/`` and ``out_dir/index.html`` showing them with latency and metrics."""

    def __init__(self, out_dir: str | Path, title: str) -> None:
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ValueError(f"{self.out_dir}: exists and is not a folder")
        self.title = title
        self.entries: list[SheetEntry] = []
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def add_pair(self, name: str, ir: np.ndarray, vis: np.ndarray, fused: np.ndarray, detections: Sequence[Any],
                 gates: Mapping[str, Sequence[float]], *, tag: str = "",
                 timings_ms: Mapping[str, float] | None = None,
                 metrics: Mapping[str, float | None] | None = None) -> Path:
        """Write the contact sheet of one pair and remember it for the page; returns the sheet's path."""
        timings = dict(timings_ms or {})
        shown = next((k for k in ("total", "fuse") if k in timings and math.isfinite(timings[k])), None)
        title = name + (f"  |  {tag}" if tag else "") + (f"  |  {shown} {timings[shown]:.0f} ms" if shown else "")
        rel = f"sheets/{sheet_name(name)}"
        write_image(self.out_dir / rel, contact_sheet(ir, vis, fused, detections, gates, title=title),
                    jpeg_quality=88)
        self.entries.append(SheetEntry(name, rel, tag, timings, dict(metrics) if metrics is not None else None,
                                       len(detections)))
        return self.out_dir / rel

    def write(self, *, latency: Mapping[str, Mapping[str, float]] | None = None,
              metrics: Mapping[str, Any] | None = None, metrics_note: str | None = None,
              summary: Mapping[str, Any] | None = None) -> Path:
        """Write ``index.html``; returns its path.

        ``latency``: stage → {``p50_ms``, ``p95_ms``, ``mean_ms``, ``count``} (as the commands' JSON reports);
        ``metrics``: {``mode``, ``pairs``, ``mean``: name → value} or ``None`` with ``metrics_note`` saying why;
        ``summary``: key → value lines shown first."""
        parts = [f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                 f"<style>{_CSS}</style></head><body>\n<h1>{html.escape(self.title)}</h1>\n"]
        if summary:
            parts.append(_table(None, ((k, v) for k, v in summary.items())))
        parts.append("<h2>Latency per stage (ms)</h2>\n")
        if latency:
            parts.append(_table(["stage", "p50", "p95", "mean", "pairs"],
                                ((k, v.get("p50_ms"), v.get("p95_ms"), v.get("mean_ms"), v.get("count"))
                                 for k, v in latency.items())))
        else:
            parts.append("<p>no pair was timed</p>\n")
        parts.append("<h2>Fusion metrics</h2>\n")
        if metrics and metrics.get("mean"):
            names = list(metrics["mean"])
            parts.append(f"<p>mode <code>{html.escape(str(metrics.get('mode', '')))}</code> (definitions: "
                         f"docs/evaluation.md), mean over {metrics.get('pairs', len(self.entries))} pairs</p>\n")
            rows = [["mean", *[metrics["mean"][k] for k in names]]]
            rows += [[e.name, *[e.metrics.get(k) for k in names]] for e in self.entries if e.metrics]
            parts.append(_table(["pair", *names], rows))
        else:
            parts.append(f"<p>not computed: {html.escape(metrics_note or 'unavailable')}</p>\n")
        parts.append(f"<h2>Pairs ({len(self.entries)})</h2>\n<p>thermal | visible | fused | fused + detections; "
                     "below, the gate weights of each mixture of experts (which experts fired for this pair)</p>\n")
        for e in self.entries:
            caption = " · ".join(x for x in (
                html.escape(e.name), html.escape(e.tag),
                f"{e.detections} detection{'s' if e.detections != 1 else ''}",
                ", ".join(f"{k} {v:.0f} ms" for k, v in e.timings_ms.items() if math.isfinite(v))) if x)
            parts.append(f"<figure><img src='{html.escape(e.file)}' alt='{html.escape(e.name)}' loading='lazy'>"
                         f"<figcaption>{caption}</figcaption></figure>\n")
        parts.append("</body></html>\n")
        path = self.out_dir / "index.html"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(parts), encoding="utf-8")
        tmp.replace(path)
        return path


class PairMetrics:
    """The fusion metrics of each pair and their mean (NaN scores left out of the mean and counted).

    Sources as the model saw them: 8-bit thermal at the fused image's size and the visible image's luma."""

    def __init__(self, mode: str = "paper", enabled: bool = True) -> None:
        self.mode = mode
        self.values: dict[str, list[float]] = {}
        self.n = 0
        self.error: str | None = None if enabled else "disabled (--no-metrics)"
        self.failed: str | None = None  # set when scoring a pair raised: the pair and the exception
        try:
            from .metrics.fusion import score_all
        except ImportError as e:  # pragma: no cover - the metrics ship with the package
            self.error = f"moe_fusion_core.metrics.fusion unavailable ({e})"
            score_all = None
        self._score_all = score_all

    def add(self, fused: np.ndarray, ir: np.ndarray, vis: np.ndarray, name: str = "?") -> dict[str, float] | None:
        """Score the pair ``name``; returns its metrics (``None`` once scoring has failed: :attr:`failed` then
        names the pair and why, and the caller's exit code says so)."""
        if self._score_all is None or self.error is not None:
            return None
        if ir.shape[:2] != fused.shape[:2]:
            ir = cv2.resize(ir, (fused.shape[1], fused.shape[0]), interpolation=cv2.INTER_LINEAR)
        grey = rgb_to_luma(vis) if vis.ndim == 3 else vis
        try:
            scores = {k: float(v) for k, v in self._score_all(fused, ir, grey, self.mode).items()}
        except Exception as e:  # a metrics bug must not lose the run's outputs, but it fails the run
            self.error = self.failed = f"scoring pair {name} failed: {type(e).__name__}: {e}"
            return None
        for k, v in scores.items():
            self.values.setdefault(k, []).append(v)
        self.n += 1
        return scores

    def result(self) -> tuple[dict[str, Any] | None, str | None]:
        """``({mode, pairs, mean, nan_count}, None)``, or ``(None, reason)``."""
        if self.error is not None:
            return None, self.error
        if self.n == 0:
            return None, "no pair was fused"
        mean, nans = {}, {}
        for k, vals in self.values.items():
            finite = [v for v in vals if math.isfinite(v)]
            mean[k] = sum(finite) / len(finite) if finite else None
            nans[k] = len(vals) - len(finite)
        return {"mode": self.mode, "pairs": self.n, "mean": mean, "nan_count": nans}, None


def latency_table(timings: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """Per-stage p50/p95/mean/max (ms) and count from lists of per-pair milliseconds."""
    out = {}
    for k, v in timings.items():
        if len(v):
            a = np.asarray(v, np.float64)
            out[k] = {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
                      "mean_ms": float(a.mean()), "max_ms": float(a.max()), "count": len(v)}
    return out
