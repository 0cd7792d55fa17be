"""Thermal image normalisation: raw 16-bit / float thermal frames → the 8-bit grey the model was trained on.

Policy (ros2_conventions §2.4), applied by :class:`ThermalNormalizer`:

- ``uint8`` input is already the camera's own 8-bit output: it passes through unchanged (``invert`` still applies).
- other inputs (``uint16``, signed ints, ``float32``/``float64``) are mapped through a window ``[lo, hi]`` to 0…255:
  ``mode="fixed"`` uses the configured ``lo``/``hi`` (deterministic, flicker-free); ``"percentile"`` uses the
  ``p_lo``/``p_hi`` percentiles of the finite pixels (robust to hot spots and dead pixels); ``"minmax"`` the
  finite min/max; ``"none"`` maps ``uint16`` by ``255/65535`` (cv_bridge's fixed scaling) and clips other types to
  0…255 as if they already were grey levels.
- ``ema`` smooths the data-driven window over frames: ``window = ema·previous + (1−ema)·this frame``
  (0 = stateless per frame; 0.9 = slow and flicker-free). :meth:`ThermalNormalizer.reset` forgets the history.
- NaN pixels become 0, ``+inf`` 255 and ``−inf`` 0; they never enter the statistics. A flat image (``hi == lo``)
  gives zeros, never NaN. A frame without any finite pixel gives zeros and leaves the smoothed window untouched.
- ``invert`` flips the result (white-hot ↔ black-hot).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("none", "fixed", "percentile", "minmax")


@dataclass(frozen=True)
class ThermalNormalization:
    """How raw thermal values become 8-bit grey (see the module docstring)."""

    mode: str = "percentile"
    lo: float = 0.0
    hi: float = 65535.0
    p_lo: float = 1.0
    p_hi: float = 99.0
    ema: float = 0.9
    invert: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"thermal normalisation mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "fixed" and not (np.isfinite(self.lo) and np.isfinite(self.hi) and self.hi > self.lo):
            raise ValueError(f"fixed thermal window needs finite lo < hi, got lo={self.lo}, hi={self.hi}")
        if not (0.0 <= self.p_lo < self.p_hi <= 100.0):
            raise ValueError(f"thermal percentiles need 0 <= p_lo < p_hi <= 100, got {self.p_lo}, {self.p_hi}")
        if not (0.0 <= self.ema < 1.0):
            raise ValueError(f"thermal ema must be in [0, 1), got {self.ema}")


def default_thermal_normalization() -> ThermalNormalization:
    """The policy of :class:`~moe_fusion_core.engine.FusionEngine` and of training: percentile 1–99, per frame."""
    return ThermalNormalization(mode="percentile", ema=0.0)


class ThermalNormalizer:
    """Callable ``ir (H×W uint8|uint16|float) -> H×W uint8`` with an optionally smoothed window across frames."""

    def __init__(self, cfg: ThermalNormalization | None = None) -> None:
        self.cfg = cfg if cfg is not None else ThermalNormalization()
        self._window: tuple[float, float] | None = None

    @property
    def window(self) -> tuple[float, float] | None:
        """The last window ``(lo, hi)`` used for a non-``uint8`` frame (for logging), or ``None``."""
        return self._window

    def reset(self) -> None:
        """Forget the smoothed window (e.g. after a camera restart)."""
        self._window = None

    def _frame_window(self, finite: np.ndarray) -> tuple[float, float]:
        if self.cfg.mode == "percentile":
            if finite.dtype == np.uint16:
                return _percentiles_u16(finite, self.cfg.p_lo, self.cfg.p_hi)
            lo, hi = np.percentile(finite, (self.cfg.p_lo, self.cfg.p_hi))
        else:
            lo, hi = finite.min(), finite.max()
        return float(lo), float(hi)

    def __call__(self, ir: np.ndarray) -> np.ndarray:
        a = np.asarray(ir)
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        if a.ndim != 2:
            raise ValueError(f"thermal image must be H×W, got shape {a.shape}")
        if a.size == 0:
            raise ValueError(f"thermal image is empty (shape {a.shape})")
        if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise ValueError(f"thermal image must be integer or float, got dtype {a.dtype}")
        if a.dtype == np.uint8:
            out = a
        else:
            out = self._normalise(a)
        if self.cfg.invert:
            out = 255 - out
        return np.ascontiguousarray(out)

    def _normalise(self, a: np.ndarray) -> np.ndarray:
        mode = self.cfg.mode
        is_float = np.issubdtype(a.dtype, np.floating)
        mask = np.isfinite(a) if is_float else None
        if mode == "none":
            if a.dtype == np.uint16:
                return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
            lo, hi = 0.0, 255.0
        elif mode == "fixed":
            lo, hi = float(self.cfg.lo), float(self.cfg.hi)
        else:
            finite = a[mask] if mask is not None else a.reshape(-1)
            if finite.size == 0:
                return self._nonfinite(a)
            lo, hi = self._frame_window(finite)
            if self._window is not None and self.cfg.ema > 0:
                e = self.cfg.ema
                lo = e * self._window[0] + (1 - e) * lo
                hi = e * self._window[1] + (1 - e) * hi
        self._window = (lo, hi)
        if not hi > lo:
            out = np.zeros(a.shape, np.uint8)
        elif a.dtype == np.uint16:  # one lookup table instead of float arithmetic per pixel
            out = np.take(_window_lut(lo, hi), a)
        else:
            f = a.astype(np.float32)
            if mask is not None:
                f = np.nan_to_num(f, nan=lo, posinf=hi, neginf=lo)
            scale = np.float32(255.0 / (hi - lo))
            f -= np.float32(lo)
            f *= scale
            np.clip(f, 0.0, 255.0, out=f)
            f += np.float32(0.5)
            out = f.astype(np.uint8)
        if mask is not None and not hi > lo:
            out[np.isposinf(a)] = 255
        return out

    @staticmethod
    def _nonfinite(a: np.ndarray) -> np.ndarray:
        out = np.zeros(a.shape, np.uint8)
        out[np.isposinf(a)] = 255
        return out


def _percentiles_u16(a: np.ndarray, p_lo: float, p_hi: float) -> tuple[float, float]:
    """``np.percentile`` (linear interpolation) of 16-bit data from its histogram: same values, several times faster."""
    cum = np.cumsum(np.bincount(a.reshape(-1), minlength=65536))
    n = int(cum[-1])
    out = []
    for q in (p_lo, p_hi):
        pos = q / 100.0 * (n - 1)
        k = int(np.floor(pos))
        below = int(np.searchsorted(cum, k, side="right"))
        above = int(np.searchsorted(cum, min(k + 1, n - 1), side="right"))
        out.append(below + (above - below) * (pos - k))
    return out[0], out[1]


def _window_lut(lo: float, hi: float) -> np.ndarray:
    """Table mapping every 16-bit value through the window [lo, hi] to 0…255 (round half up, clipped)."""
    f = np.arange(65536, dtype=np.float32)
    f -= np.float32(lo)
    f *= np.float32(255.0 / (hi - lo))
    np.clip(f, 0.0, 255.0, out=f)
    f += np.float32(0.5)
    return f.astype(np.uint8)
