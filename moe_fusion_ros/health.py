"""What the node reports on ``/diagnostics``: rate meters and the content of its three status tasks (ROS-free).

The node's ``diagnostic_updater`` tasks only copy a :class:`Status` into the ``DiagnosticStatusWrapper``; the
fields, their meaning and the levels are decided here (and documented in the README, "Diagnostics"):

- ``inputs``: per input rate, messages received and state (``ok``, ``missing``, ``not seen``), incompatible-QoS
  events. WARN when an input is missing or below half its expected rate, ERROR when both are silent.
- ``sync``: pairs, pair rate, |Δt| mean/max, unpaired messages by reason, time jumps (pairing resets), idle
  flushes, seconds since the last pair. WARN when inputs flow but no pair was made for ``no_pair_warn_s``, and
  for 5 s after a time jump.
- ``inference``: published rate, latency (pair ready → published, wall clock), stamp age (node clock − header
  stamp: sim time with ``use_sim_time``), dropped pairs, skipped frames by cause and the last cause, frames fused
  with one input missing, camera_info problems, device, resident memory.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

OK, WARN, ERROR, STALE = 0, 1, 2, 3


class RateMeter:
    """Events per second over a sliding window, on a caller-supplied clock (seconds; default monotonic)."""

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not (window_s > 0):
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self.clock = clock
        self.times: deque[float] = deque()
        self.count = 0
        self.last: float | None = None

    def _trim(self, now: float) -> None:
        while self.times and now - self.times[0] > self.window_s:
            self.times.popleft()

    def tick(self) -> None:
        now = self.clock()
        self.times.append(now)
        self.count += 1
        self.last = now
        self._trim(now)

    def rate(self) -> float:
        """Events in the last ``window_s`` seconds / ``window_s``."""
        self._trim(self.clock())
        return len(self.times) / self.window_s


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux ``/proc/self/statm``; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Status:
    """One diagnostic status: level, one-line summary, key/value fields in display order."""

    level: int
    message: str
    values: list[tuple[str, str]] = field(default_factory=list)

    def add(self, key: str, value: object) -> None:
        self.values.append((key, value if isinstance(value, str) else _fmt(value)))

    def raise_to(self, level: int, message: str) -> None:
        if level > self.level:
            self.level = level
        self.message = message if self.message in ("", "ok") else f"{self.message}; {message}"


def _fmt(v: object) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def percentile(values: Iterable[float], q: float) -> float:
    import numpy as np

    v = list(values)
    return float(np.percentile(np.asarray(v, np.float64), q)) if v else float("nan")


def inputs_status(rates: Mapping[str, float], received: Mapping[str, int], expected_hz: Mapping[str, float],
                  states: Mapping[str, str], incompatible_qos: int, single_modality: bool) -> Status:
    s = Status(OK, "ok")
    for k in rates:
        s.add(f"{k} rate (Hz)", rates[k])
        s.add(f"{k} received", received[k])
        s.add(f"{k} state", states.get(k, "not seen"))
    s.add("incompatible QoS events", incompatible_qos)
    missing = [k for k, v in states.items() if v == "missing"]
    if all(rates[k] == 0 for k in rates):
        s.raise_to(ERROR, "no input")
    for k in missing:
        alive = [o for o in rates if o != k]
        s.raise_to(WARN, f"{k} missing: " + (f"publishing {alive[0]} only" if single_modality and alive
                                             else "nothing published"))
    for k in rates:
        if k not in missing and 0 < rates[k] < 0.5 * expected_hz[k]:
            s.raise_to(WARN, f"{k} {rates[k]:.1f} Hz < expected {expected_hz[k]:.0f}")
    if incompatible_qos:
        s.raise_to(WARN, "incompatible QoS: set qos.input_reliability:=best_effort")
    if s.message == "ok":
        s.message = "inputs at expected rates"
    return s


def sync_status(pairs: int, pair_rate: float, mean_abs_dt_ms: float, max_abs_dt_ms: float,
                unpaired: Mapping[str, int], time_jumps: int, seconds_since_jump: float | None,
                idle_flushes: int, seconds_since_pair: float | None, inputs_flowing: bool,
                no_pair_warn_s: float) -> Status:
    s = Status(OK, "ok")
    s.add("pair rate (Hz)", pair_rate)
    s.add("pairs", pairs)
    s.add("mean |dt| (ms)", f"{mean_abs_dt_ms:.2f}")
    s.add("max |dt| (ms)", f"{max_abs_dt_ms:.2f}")
    for reason, n in sorted(unpaired.items()):
        s.add(f"unpaired: {reason}", n)
    s.add("time jumps (pairing reset)", time_jumps)
    s.add("idle flushes", idle_flushes)
    s.add("seconds since last pair", "-" if seconds_since_pair is None else f"{seconds_since_pair:.1f}")
    if inputs_flowing and (seconds_since_pair is None or seconds_since_pair > no_pair_warn_s):
        s.raise_to(WARN, "inputs flow but no pairs (check sync.slop / sync.thermal_offset)")
    if seconds_since_jump is not None and seconds_since_jump < 5.0:
        s.raise_to(WARN, "time went backwards: pairing reset")
    if s.message == "ok":
        s.message = "pairing" if pairs else "waiting for pairs"
    return s


def inference_status(published_rate: float, latency_ms: Iterable[float], stamp_age_ms: Iterable[float],
                     dropped: int, skipped: Mapping[str, int], last_skip: str | None,
                     singles: Mapping[str, int], camera_info_errors: Mapping[str, int], device: str,
                     memory_mb: float) -> Status:
    lat, ages = list(latency_ms), list(stamp_age_ms)
    s = Status(OK, "running")
    s.add("published rate (Hz)", published_rate)
    s.add("latency p50 (ms)", percentile(lat, 50))
    s.add("latency p95 (ms)", percentile(lat, 95))
    s.add("stamp age p50 (ms)", percentile(ages, 50))
    s.add("stamp age p95 (ms)", percentile(ages, 95))
    s.add("dropped pairs (worker busy)", dropped)
    s.add("frames skipped", sum(skipped.values()))
    for kind, n in sorted(skipped.items()):
        s.add(f"frames skipped: {kind}", n)
    if last_skip:
        s.add("last skip reason", last_skip)
    for missing, n in sorted(singles.items()):
        s.add(f"frames without {missing}", n)
    for reason, n in sorted(camera_info_errors.items()):
        s.add(f"camera_info not published: {reason}", n)
    s.add("device", device)
    s.add("resident memory (MB)", memory_mb)
    return s
