"""Optimal approximate-time pairing of a thermal and an RGB stream (ROS-free), plus a message_filters adapter.

rclpy's ``message_filters.ApproximateTimeSynchronizer`` is greedy: it pairs a message with the closest partner
*already queued* the moment it arrives, so a surplus thermal frame that arrives before the true partner steals
the RGB frame (ros2_conventions §2.3). :class:`PairSynchronizer` instead follows the idea of the C++
ApproximateTime policy: a pair is committed only once no message that can still arrive could give a better match.

For two streams this has a compact exact form. Candidate edges are the (thermal, RGB) pairs in the queues with
``|Δt| <= slop`` (thermal stamps shifted by ``thermal_offset`` first). An edge ``(t, r)`` with gap ``d`` is
committed when

1. it is the smallest edge touching ``t`` or ``r`` (ties broken by stamps), and
2. no future message can undercut it: streams arrive in stamp order, so this holds once the thermal stream has
   delivered a stamp ``>= r + d`` and the RGB stream one ``>= t + d`` (or at :meth:`~PairSynchronizer.flush`).

The committed pairs are therefore exactly the closest-stamp one-to-one matching within the slop (greedy by
``|Δt|`` over the whole stream), whatever the arrival interleaving. A message that can no longer get a partner is
reported as unpaired with a reason: ``no_partner_within_slop`` (nothing of the other stream ever came within
slop), ``superseded`` (its candidates were matched more closely), ``queue_overflow`` (more than ``queue_size``
undecided messages in its stream), ``out_of_order`` / ``duplicate_stamp`` (stamp older than / equal to the
stream's newest; such a message is dropped at once, since pairs before it may already be committed).

Time going backwards by more than ``time_jump`` seconds in either stream (a bag replayed or looped, a simulator
reset) is not an ordering error but a new timeline: the old one ends there (its waiting messages are flushed as
at the end of a stream: what can pair is committed, the rest reported unpaired), both streams forget their
newest stamp, ``stats.time_jumps`` counts it, ``on_reset`` is called, and the new timeline pairs from its first
message.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

THERMAL, RGB = "thermal", "rgb"
STREAMS = (THERMAL, RGB)
REASONS = ("no_partner_within_slop", "superseded", "queue_overflow", "out_of_order", "duplicate_stamp")
NS = 1_000_000_000


@dataclass
class Pair:
    """One committed thermal/RGB pair; stamps are the messages' own (un-shifted) header stamps in ns."""

    thermal: Any
    rgb: Any
    thermal_stamp_ns: int
    rgb_stamp_ns: int
    dt_ns: int  # (thermal stamp + offset) - rgb stamp


@dataclass
class Unpaired:
    """A message that left the synchroniser without a partner."""

    stream: str
    stamp_ns: int
    reason: str
    msg: Any = None


@dataclass
class _Entry:
    key: int  # stamp used for matching (thermal: + offset)
    stamp_ns: int
    msg: Any
    had_candidate: bool = False


@dataclass
class SyncStats:
    """Counters for diagnostics and reports."""

    received: Counter = field(default_factory=Counter)  # stream -> messages offered
    pairs: int = 0
    unpaired: Counter = field(default_factory=Counter)  # reason -> count
    abs_dt_sum_ns: int = 0
    abs_dt_max_ns: int = 0
    last_stamp_ns: dict[str, int] = field(default_factory=dict)
    time_jumps: int = 0

    @property
    def mean_abs_dt_ms(self) -> float:
        return self.abs_dt_sum_ns / self.pairs / 1e6 if self.pairs else float("nan")


class PairSynchronizer:
    """Pairs thermal and RGB messages optimally (see the module docstring). Not thread-safe: lock outside."""

    def __init__(self, slop: float = 0.02, queue_size: int = 5, thermal_offset: float = 0.0,
                 on_pair: Callable[[Pair], None] | None = None,
                 on_unpaired: Callable[[Unpaired], None] | None = None, time_jump: float = 0.25,
                 on_reset: Callable[[str, int, int], None] | None = None) -> None:
        self.on_pair = on_pair
        self.on_unpaired = on_unpaired
        self.on_reset = on_reset  # (stream, newest stamp before, stamp that jumped back), in ns
        self.configure(slop, queue_size, thermal_offset, time_jump)
        self._queues: dict[str, list[_Entry]] = {THERMAL: [], RGB: []}
        self._newest: dict[str, int | None] = {THERMAL: None, RGB: None}
        self.stats = SyncStats()

    # ------------------------------------------------------------------ public API
    def configure(self, slop: float, queue_size: int, thermal_offset: float, time_jump: float = 0.25) -> None:
        """Set (or change between messages) the pairing settings; the next message uses them."""
        if not (slop > 0):
            raise ValueError(f"slop must be > 0 seconds, got {slop}")
        if int(queue_size) < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not (time_jump > 0):
            raise ValueError(f"time_jump must be > 0 seconds, got {time_jump}")
        self.slop_ns = round(slop * NS)
        self.queue_size = int(queue_size)
        self.offset_ns = round(thermal_offset * NS)
        self.time_jump_ns = round(time_jump * NS)

    def add(self, stream: str, stamp_ns: int, msg: Any = None) -> list[Pair]:
        """Offer one message (in arrival order); returns the pairs this arrival made final."""
        if stream not in STREAMS:
            raise ValueError(f"stream must be {THERMAL!r} or {RGB!r}, got {stream!r}")
        stamp_ns = int(stamp_ns)
        self.stats.received[stream] += 1
        self.stats.last_stamp_ns[stream] = stamp_ns
        key = stamp_ns + (self.offset_ns if stream == THERMAL else 0)
        newest = self._newest[stream]
        out: list[Pair] = []
        if newest is not None and newest - key > self.time_jump_ns:  # a new timeline: the old one ends here
            out = self._process(final=True)
            self._newest = {THERMAL: None, RGB: None}
            self.stats.time_jumps += 1
            if self.on_reset is not None:
                self.on_reset(stream, newest, key)
            newest = None
        if newest is not None and key <= newest:
            self._drop(stream, _Entry(key, stamp_ns, msg), "duplicate_stamp" if key == newest else "out_of_order")
            return []
        self._newest[stream] = key
        self._queues[stream].append(_Entry(key, stamp_ns, msg))
        out += self._process(final=False)
        while len(self._queues[stream]) > self.queue_size:
            self._drop(stream, self._queues[stream].pop(0), "queue_overflow")
            out += self._process(final=False)
        return out

    def add_thermal(self, stamp_ns: int, msg: Any = None) -> list[Pair]:
        return self.add(THERMAL, stamp_ns, msg)

    def add_rgb(self, stamp_ns: int, msg: Any = None) -> list[Pair]:
        return self.add(RGB, stamp_ns, msg)

    def flush(self, spare: str | None = None) -> list[Pair]:
        """End of stream: commit what can still pair, report the rest as unpaired, empty the queues.

        ``spare``: the leftover messages of that stream are kept (not reported) for :meth:`take`."""
        return self._process(final=True, spare=spare)

    def take(self, stream: str) -> list[tuple[int, Any]]:
        """Remove and return the (stamp, message) still waiting in ``stream``, oldest first, without reporting them."""
        out = [(e.stamp_ns, e.msg) for e in self._queues[stream]]
        self._queues[stream] = []
        return out

    def pending(self) -> dict[str, int]:
        """Messages still waiting for a decision, per stream."""
        return {s: len(q) for s, q in self._queues.items()}

    # ------------------------------------------------------------------ internals
    def _drop(self, stream: str, e: _Entry, reason: str) -> None:
        self.stats.unpaired[reason] += 1
        if self.on_unpaired is not None:
            self.on_unpaired(Unpaired(stream, e.stamp_ns, reason, e.msg))

    def _edges(self) -> list[tuple[int, int, int, _Entry, _Entry]]:
        edges = []
        for t in self._queues[THERMAL]:
            for r in self._queues[RGB]:
                d = abs(t.key - r.key)
                if d <= self.slop_ns:
                    t.had_candidate = r.had_candidate = True
                    edges.append((d, t.key, r.key, t, r))
        edges.sort(key=lambda e: e[:3])
        return edges

    def _safe(self, t: _Entry, r: _Entry, d: int) -> bool:
        nt, nr = self._newest[THERMAL], self._newest[RGB]
        return nt is not None and nr is not None and nt >= r.key + d and nr >= t.key + d

    def _process(self, final: bool, spare: str | None = None) -> list[Pair]:
        out: list[Pair] = []
        while True:
            edges = self._edges()
            seen: set[int] = set()
            chosen = None
            for d, _, _, t, r in edges:  # in increasing order: the first edge touching t or r is their best
                if id(t) not in seen and id(r) not in seen and (final or self._safe(t, r, d)):
                    chosen = (t, r)
                    break
                seen.add(id(t))
                seen.add(id(r))
            if chosen is None:
                break
            t, r = chosen
            self._queues[THERMAL].remove(t)
            self._queues[RGB].remove(r)
            pair = Pair(t.msg, r.msg, t.stamp_ns, r.stamp_ns, t.key - r.key)
            self.stats.pairs += 1
            self.stats.abs_dt_sum_ns += abs(pair.dt_ns)
            self.stats.abs_dt_max_ns = max(self.stats.abs_dt_max_ns, abs(pair.dt_ns))
            if self.on_pair is not None:
                self.on_pair(pair)
            out.append(pair)
        # messages without any candidate left, and none possible in future, are final
        touched = {id(x) for e in self._edges() for x in e[3:]}
        for stream, other in ((THERMAL, RGB), (RGB, THERMAL)):
            newest_other = self._newest[other]
            keep = []
            for e in self._queues[stream]:
                dead = id(e) not in touched and stream != spare and (
                    final or (newest_other is not None and newest_other >= e.key + self.slop_ns))
                if dead:
                    self._drop(stream, e, "superseded" if e.had_candidate else "no_partner_within_slop")
                else:
                    keep.append(e)
            self._queues[stream] = keep
        return out


# ---------------------------------------------------------------------- message_filters adapter
_ADAPTER_CLASS: type | None = None


def _stamp_ns(msg: Any) -> int:
    st = msg.header.stamp
    return int(st.sec) * NS + int(st.nanosec)


class _PairSource:
    """What the adapter feeds: a bare :class:`PairSynchronizer`, as an ``offer``/``tick`` source."""

    def __init__(self, sync: PairSynchronizer) -> None:
        self.sync = sync

    def offer(self, stream: str, msg: Any) -> list[Pair]:
        return self.sync.add(stream, _stamp_ns(msg), msg)

    def tick(self, clock_stalled: bool = False) -> list[Pair]:
        return []


def message_filters_class() -> type:
    """The ``message_filters.SimpleFilter`` subclass wrapping :class:`PairSynchronizer` (imports message_filters)."""
    global _ADAPTER_CLASS
    if _ADAPTER_CLASS is not None:
        return _ADAPTER_CLASS
    import message_filters

    class OptimalApproximateTimeSynchronizer(message_filters.SimpleFilter):
        """Drop-in for ``ApproximateTimeSynchronizer`` on (thermal, rgb) inputs; callback gets ``(thermal, rgb)``.

        With ``source`` (an :class:`~moe_fusion_ros.inputs.InputFrontEnd`) it also signals single messages whose
        partner input is missing, as ``(thermal, None)`` or ``(None, rgb)``, and :meth:`tick` signals the pairs
        committed by the idle flush."""

        def __init__(self, fs: list[Any], queue_size: int = 5, slop: float = 0.02, thermal_offset: float = 0.0,
                     on_unpaired: Callable[[Unpaired], None] | None = None,
                     sync: PairSynchronizer | None = None, source: Any = None) -> None:
            message_filters.SimpleFilter.__init__(self)
            if source is None:
                sync = sync if sync is not None else PairSynchronizer(slop, queue_size, thermal_offset,
                                                                      on_unpaired=on_unpaired)
                source = _PairSource(sync)
            self.source = source
            self.sync = source.sync
            self.lock = threading.Lock()
            self.input_connections: list[Any] = []
            self.connectInput(fs)

        def connectInput(self, fs: list[Any]) -> None:  # message_filters API name
            if len(fs) != 2:
                raise ValueError(f"expected two inputs (thermal, rgb), got {len(fs)}")
            self.input_connections = [f.registerCallback(self.add, stream) for f, stream in zip(fs, STREAMS)]

        def _signal(self, items: list[Any]) -> None:
            for p in items:
                self.signalMessage(p.thermal, p.rgb)

        def add(self, msg: Any, stream: str) -> None:
            with self.lock:
                items = self.source.offer(stream, msg)
            self._signal(items)

        def tick(self, clock_stalled: bool = False) -> None:
            with self.lock:
                items = self.source.tick(clock_stalled)
            self._signal(items)

        def flush(self) -> None:
            with self.lock:
                pairs = self.sync.flush()
            self._signal(pairs)

    _ADAPTER_CLASS = OptimalApproximateTimeSynchronizer
    return _ADAPTER_CLASS


def optimal_approximate_time_synchronizer(fs: list[Any], queue_size: int = 5, slop: float = 0.02,
                                          thermal_offset: float = 0.0,
                                          on_unpaired: Callable[[Unpaired], None] | None = None,
                                          sync: PairSynchronizer | None = None, source: Any = None) -> Any:
    """Create the message_filters adapter for ``fs = [thermal_filter, rgb_filter]`` (needs message_filters).

    Pass ``sync`` to reuse an existing :class:`PairSynchronizer` (its slop/queue/offset then apply), or ``source``
    (an :class:`~moe_fusion_ros.inputs.InputFrontEnd`) for idle flush and single-input fallback."""
    return message_filters_class()(fs, queue_size, slop, thermal_offset, on_unpaired, sync, source)
