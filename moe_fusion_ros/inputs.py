"""What to fuse next, given two camera streams that may stall, stop or restart (ROS-free).

:class:`InputFrontEnd` sits in front of the optimal pairing (:class:`~moe_fusion_ros.sync.PairSynchronizer`) and
adds the two behaviours a live stream needs beyond pairing, both on a clock the caller supplies (the node's ROS
clock, so that sim time from a bag is respected):

- **idle flush**: when no message of either input has arrived for ``idle_flush_s``, the pairs still waiting for
  a possibly better partner are committed (:meth:`InputFrontEnd.tick`). Without it the last pair of a stream is
  held until the next message, which may never come. A clock that stopped (a bag's /clock ends with the bag)
  counts as idle when the caller says so.
- **a missing input**: an input is *missing* when it has been silent for ``missing_timeout_s`` (or 3 of its
  recent frame intervals, when longer: a slow stream is not a dead one) while the other one streams
  (:class:`InputMonitor`). With ``single_modality`` each message of the surviving input is then returned on its
  own as a :class:`Single` (the caller fuses it with the missing image blank) instead of waiting in the
  synchroniser for a partner that does not come; when the missing input streams again, pairing resumes.

Items returned by :meth:`InputFrontEnd.offer` and :meth:`InputFrontEnd.tick` are :class:`~moe_fusion_ros.sync.Pair`
or :class:`Single`; both have ``thermal`` and ``rgb`` attributes (``None`` for the missing input of a Single).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from statistics import median
from typing import Any

from .sync import NS, RGB, STREAMS, THERMAL, Pair, PairSynchronizer
from .thermal import stamp_ns

OK, MISSING, NOT_SEEN = "ok", "missing", "not seen"


@dataclass
class Single:
    """One message to fuse alone: the other input is missing."""

    stream: str
    msg: Any
    stamp_ns: int
    missing: str  # the other stream

    @property
    def thermal(self) -> Any:
        return self.msg if self.stream == THERMAL else None

    @property
    def rgb(self) -> Any:
        return self.msg if self.stream == RGB else None


def other(stream: str) -> str:
    """The other input of ``thermal`` / ``rgb``."""
    return RGB if stream == THERMAL else THERMAL


class InputMonitor:
    """Arrival times of each input on a caller-supplied clock (ns), and which input is missing.

    An input is missing after a silence longer than the larger of ``missing_timeout_s`` and ``missing_intervals``
    × the median of its recent frame intervals (the other input's until it has two frames), so that one dropped
    frame of a slow stream (a bag played at a tenth of its rate, a 2 Hz camera) is not a dead camera."""

    RECENT = 9  # intervals in the median

    def __init__(self, missing_timeout_s: float = 0.5, missing_intervals: float = 3.0) -> None:
        self.set_timeout(missing_timeout_s)
        self.missing_intervals = missing_intervals
        self.streak: dict[str, int | None] = {s: None for s in STREAMS}  # since when the input streams again
        self.last: dict[str, int | None] = {s: None for s in STREAMS}
        self.intervals: dict[str, deque[int]] = {s: deque(maxlen=self.RECENT) for s in STREAMS}

    def set_timeout(self, missing_timeout_s: float) -> None:
        if not (missing_timeout_s > 0):
            raise ValueError(f"missing_timeout_s must be > 0, got {missing_timeout_s}")
        self.timeout_ns = round(missing_timeout_s * NS)

    def timeout(self, stream: str) -> int:
        """The silence (ns) after which ``stream`` counts as missing, from its recent frame rate (after its first
        frame and before it has a rate, the other input's: a slow rig whose second thermal frame was dropped is
        still starting; an input never seen gets ``missing_timeout_s``)."""
        iv = self.intervals[stream] or (self.intervals[other(stream)] if self.last[stream] is not None else ())
        return max(self.timeout_ns, round(self.missing_intervals * median(iv))) if iv else self.timeout_ns

    def seen(self, stream: str, now_ns: int) -> None:
        last = self.last[stream]
        if not self.live(stream, now_ns):
            self.streak[stream] = now_ns
            self.intervals[stream].clear()  # a stream that starts again may run at another rate (bag replayed)
        elif last is not None and now_ns > last:
            self.intervals[stream].append(now_ns - last)  # gaps that made it missing are not its rate
        self.last[stream] = now_ns

    def live(self, stream: str, now_ns: int) -> bool:
        last = self.last[stream]
        return last is not None and now_ns - last <= self.timeout(stream)

    def missing(self, now_ns: int) -> str | None:
        """The input that has been silent (or never came) for longer than its timeout while the other one streams
        (it sent a frame after that timeout: two cameras that stop together are a stopped rig, whatever their
        rates)."""
        for s in STREAMS:
            o = other(s)
            if not self.live(o, now_ns) or self.live(s, now_ns):
                continue
            since = max(t for t in (self.last[s], self.streak[o]) if t is not None)
            deadline = since + self.timeout(s)
            if now_ns > deadline and self.last[o] > deadline:  # the other still sent after s was due
                return s
        return None

    def status(self, now_ns: int) -> dict[str, str]:
        """``ok`` / ``missing`` / ``not seen`` per input (``ok`` also for both silent: the whole rig stopped)."""
        gone = self.missing(now_ns)
        return {s: MISSING if s == gone else (NOT_SEEN if self.last[s] is None else OK) for s in STREAMS}

    def idle_ns(self, now_ns: int) -> int | None:
        """Time since the last message of either input (``None`` before the first)."""
        lasts = [t for t in self.last.values() if t is not None]
        return now_ns - max(lasts) if lasts else None

    def reset(self) -> None:
        self.streak = {s: None for s in STREAMS}
        self.last = {s: None for s in STREAMS}
        self.intervals = {s: deque(maxlen=self.RECENT) for s in STREAMS}


class InputFrontEnd:
    """Pairing + idle flush + single-input fallback (see the module docstring). Thread-safe."""

    def __init__(self, sync: PairSynchronizer, clock: Callable[[], int], *, idle_flush_s: float = 0.5,
                 missing_timeout_s: float = 0.5, single_modality: bool = True,
                 on_missing: Callable[[str | None, str | None], None] | None = None) -> None:
        self.sync = sync
        self.clock = clock
        self.monitor = InputMonitor()
        self.on_missing = on_missing  # (before, now): the missing input changed
        self.configure(idle_flush_s, missing_timeout_s, single_modality)
        self.singles = 0
        self.idle_flushes = 0
        self.clock_resets = 0
        self._missing: str | None = None
        self._lock = threading.Lock()

    def configure(self, idle_flush_s: float, missing_timeout_s: float, single_modality: bool) -> None:
        if not (idle_flush_s > 0):
            raise ValueError(f"idle_flush_s must be > 0, got {idle_flush_s}")
        self.monitor.set_timeout(missing_timeout_s)
        self.idle_flush_ns = round(idle_flush_s * NS)
        self.single_modality = single_modality

    def _now(self) -> int:
        """The clock, with arrival times forgotten when it went backwards (sim time reset, bag looped)."""
        now = self.clock()
        idle = self.monitor.idle_ns(now)
        if idle is not None and idle < 0:
            self.monitor.reset()
            self.clock_resets += 1
        return now

    def _update_missing(self, now_ns: int) -> list[Pair | Single]:
        """Track which input is missing. When one goes missing, the pairs still waiting are committed, and the
        other input's messages that waited in vain for a partner are fused alone (with ``single_modality``)."""
        gone = self.monitor.missing(now_ns)
        if gone == self._missing:
            return []
        before, self._missing = self._missing, gone
        if self.on_missing is not None:
            self.on_missing(before, gone)
        if gone is None:
            return []
        alive = other(gone)
        out: list[Pair | Single] = list(self.sync.flush(spare=alive if self.single_modality else None))
        for stamp, msg in self.sync.take(alive):
            self.singles += 1
            out.append(Single(alive, msg, stamp, gone))
        return out

    def offer(self, stream: str, msg: Any) -> list[Pair | Single]:
        """One arriving Image message of ``stream``; returns what became ready to fuse."""
        with self._lock:
            now = self._now()
            self.monitor.seen(stream, now)
            out: list[Pair | Single] = list(self._update_missing(now))
            if self._missing == other(stream) and self.single_modality:
                self.singles += 1
                out.append(Single(stream, msg, stamp_ns(msg), self._missing))
            else:
                out += self.sync.add(stream, stamp_ns(msg), msg)
            return out

    def tick(self, clock_stalled: bool = False) -> list[Pair | Single]:
        """Call periodically: commits the waiting pairs once the inputs have been idle for ``idle_flush_s``.

        ``clock_stalled``: the caller's clock has not moved for ``idle_flush_s`` of real time (a bag's /clock
        stops when the bag ends), which counts as idle too."""
        with self._lock:
            now = self._now()
            out = self._update_missing(now)
            idle = self.monitor.idle_ns(now)
            idle_long = idle is not None and (idle >= self.idle_flush_ns or clock_stalled)
            if idle_long and any(self.sync.pending().values()):
                self.idle_flushes += 1
                out += self.sync.flush()
            return out

    def missing(self) -> str | None:
        """The input currently missing (as of the last offer or tick)."""
        return self._missing

    def status(self) -> dict[str, str]:
        with self._lock:
            return self.monitor.status(self.clock())



def matching_qos(offers: list[tuple[str, str]]) -> tuple[str, str]:
    """Subscription (reliability, durability) for ``qos.input_reliability: auto`` from the publishers' offers.

    ``offers``: (reliability, durability) of each publisher, lower-case names (``reliable`` / ``best_effort``,
    ``transient_local`` / ``volatile``). Reliable only when every publisher is reliable and transient-local only
    when every one is (a reliable or transient-local subscription hears nothing from a publisher that offers
    less); no publisher yet: best effort, volatile, which matches anything."""
    if not offers:
        return "best_effort", "volatile"
    rel = "reliable" if all(r == "reliable" for r, _ in offers) else "best_effort"
    dur = "transient_local" if all(d == "transient_local" for _, d in offers) else "volatile"
    return rel, dur
