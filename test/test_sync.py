"""The optimal approximate-time synchroniser: the real sample bag's ground truth, synthetic edge cases, the adapter."""

from __future__ import annotations

import json
import random
import sys
import types
from types import SimpleNamespace

import pytest

from moe_fusion_ros.sync import RGB, THERMAL, PairSynchronizer

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000


def bag_events(data_dir) -> list[tuple[str, int]]:
    """(stream, header stamp) of every image message of sample_small, in bag arrival order."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    topics = {"/thermal/image_raw": THERMAL, "/camera/image_raw": RGB}
    out = []
    with Reader(data_dir / "bags" / "sample_small") as r:
        conns = [c for c in r.connections if c.topic in topics]
        for c, _, raw in r.messages(connections=conns):
            m = ts.deserialize_cdr(raw, c.msgtype)
            out.append((topics[c.topic], m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec))
    return out


def greedy_reference(events: list[tuple[str, int]], slop_ns: int, queue_size: int = 5) -> set[tuple[int, int]]:
    """rclpy message_filters.ApproximateTimeSynchronizer for two inputs: on each arrival, pair with the closest
    queued partner whose |Δt| < slop, at once (dict queues keyed by stamp, oldest evicted above queue_size)."""
    queues: dict[str, dict[int, int]] = {THERMAL: {}, RGB: {}}
    pairs = set()
    for stream, stamp in events:
        mine, other = queues[stream], queues[RGB if stream == THERMAL else THERMAL]
        mine[stamp] = stamp
        while len(mine) > queue_size:
            del mine[min(mine)]
        cands = sorted((abs(s - stamp), s) for s in other if abs(s - stamp) <= slop_ns)
        for delta, s in cands:
            if delta < slop_ns:
                del mine[stamp]
                del other[s]
                pairs.add((stamp, s) if stream == THERMAL else (s, stamp))
                break
    return pairs


def run_sync(events, slop=0.02, queue_size=5, offset=0.0):
    unpaired = []
    s = PairSynchronizer(slop, queue_size, offset, on_unpaired=unpaired.append)
    pairs = []
    for stream, stamp in events:
        pairs += s.add(stream, stamp, (stream, stamp))
    pairs += s.flush()
    return {(p.thermal_stamp_ns, p.rgb_stamp_ns) for p in pairs}, unpaired, s


def test_sample_bag_gives_exactly_the_ground_truth_pairs_and_greedy_does_not(data_dir):
    gt = json.loads((data_dir / "bags" / "sample_small.groundtruth.json").read_text())
    expected = {(p["thermal_stamp_ns"], p["rgb_stamp_ns"]) for p in gt["pairs"]}
    events = bag_events(data_dir)
    assert len(events) == gt["expected"]["thermal_messages"] + gt["expected"]["rgb_messages"]
    got, unpaired, s = run_sync(events)
    assert got == expected
    assert len(unpaired) == gt["expected"]["unpaired_thermal"] + gt["expected"]["unpaired_rgb"]
    want_unpaired = {(m["topic"].startswith("/thermal"), m["stamp_ns"]) for m in gt["messages"]
                     if m["role"] == "unpaired"}
    assert {(u.stream == THERMAL, u.stamp_ns) for u in unpaired} == want_unpaired
    assert {u.reason for u in unpaired} <= {"no_partner_within_slop", "superseded"}
    assert s.pending() == {THERMAL: 0, RGB: 0}
    greedy = greedy_reference(events, 20 * MS)
    assert len(greedy & expected) == 17 and len(greedy - expected) == 3  # the test discriminates


def test_result_does_not_depend_on_arrival_interleaving(data_dir):
    gt = json.loads((data_dir / "bags" / "sample_small.groundtruth.json").read_text())
    expected = {(p["thermal_stamp_ns"], p["rgb_stamp_ns"]) for p in gt["pairs"]}
    events = bag_events(data_dir)
    th = [e for e in events if e[0] == THERMAL]
    rgb = [e for e in events if e[0] == RGB]
    rng = random.Random(3)
    for _ in range(20):  # random merges that keep each stream in order, with bounded skew
        a, b, merged = list(th), list(rgb), []
        while a or b:
            if not b or (a and a[0][1] < b[0][1] - 60 * MS):
                take_a = True
            elif not a or b[0][1] < a[0][1] - 60 * MS:
                take_a = False
            else:
                take_a = rng.random() < 0.5
            merged.append(a.pop(0) if take_a else b.pop(0))
        got, _, _ = run_sync(merged, queue_size=10)
        assert got == expected


def test_waits_for_a_better_partner_instead_of_committing_greedily():
    s = PairSynchronizer(0.02)
    assert s.add(RGB, T0) == []
    assert s.add(THERMAL, T0 + 18 * MS) == []  # within slop, but a closer thermal may still come
    assert s.add(THERMAL, T0 + 2 * MS) == []  # out of order w.r.t. the thermal stream: dropped
    assert s.stats.unpaired["out_of_order"] == 1
    s2 = PairSynchronizer(0.02)
    s2.add(THERMAL, T0 - 17 * MS)
    s2.add(RGB, T0)
    s2.add(THERMAL, T0 + 3 * MS)  # better partner arrives before anything was committed
    pairs = s2.add(RGB, T0 + 40 * MS) + s2.add(THERMAL, T0 + 36 * MS)
    assert [(p.thermal_stamp_ns, p.rgb_stamp_ns) for p in pairs] == [(T0 + 3 * MS, T0)]


def test_partner_dropped_frames_are_reported_without_partner():
    ev = [(RGB, T0), (THERMAL, T0 + 2 * MS), (RGB, T0 + 40 * MS), (THERMAL, T0 + 80 * MS), (RGB, T0 + 81 * MS),
          (THERMAL, T0 + 120 * MS), (RGB, T0 + 160 * MS), (THERMAL, T0 + 159 * MS)]
    got, unpaired, _ = run_sync(ev)
    assert got == {(T0 + 2 * MS, T0), (T0 + 80 * MS, T0 + 81 * MS), (T0 + 159 * MS, T0 + 160 * MS)}
    assert sorted((u.stream, u.stamp_ns, u.reason) for u in unpaired) == [
        (RGB, T0 + 40 * MS, "no_partner_within_slop"), (THERMAL, T0 + 120 * MS, "no_partner_within_slop")]


def test_duplicates_out_of_order_and_overflow_are_dropped_with_reasons():
    unpaired = []
    s = PairSynchronizer(0.02, queue_size=2, on_unpaired=unpaired.append)
    s.add(THERMAL, T0)
    s.add(THERMAL, T0)  # duplicate stamp
    s.add(THERMAL, T0 - 5 * MS)  # older than the newest thermal
    for k in range(1, 4):  # no RGB at all: the queue overflows
        s.add(THERMAL, T0 + k * 33 * MS)
    reasons = [u.reason for u in unpaired]
    assert reasons[:2] == ["duplicate_stamp", "out_of_order"]
    assert reasons.count("queue_overflow") == 2
    assert s.pending()[THERMAL] == 2
    s.flush()
    assert s.pending() == {THERMAL: 0, RGB: 0}
    assert [u.reason for u in unpaired[-2:]] == ["no_partner_within_slop"] * 2


def test_thermal_offset_is_applied_before_matching():
    ev = [(THERMAL, T0 - 250 * MS + k * 100 * MS) for k in range(5)] + [(RGB, T0 + k * 100 * MS) for k in range(5)]
    ev.sort(key=lambda e: e[1])
    got, _, _ = run_sync(ev)
    assert got == set()
    got, _, s = run_sync(ev, offset=0.25)
    assert got == {(T0 - 250 * MS + k * 100 * MS, T0 + k * 100 * MS) for k in range(5)}
    assert s.stats.abs_dt_max_ns == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="slop"):
        PairSynchronizer(0.0)
    with pytest.raises(ValueError, match="queue_size"):
        PairSynchronizer(0.02, 0)
    with pytest.raises(ValueError, match="stream"):
        PairSynchronizer().add("depth", T0)


def test_message_filters_adapter_with_a_stand_in_module(monkeypatch):
    class SimpleFilter:
        def __init__(self):
            self.callbacks = {}

        def registerCallback(self, cb, *args):
            conn = len(self.callbacks)
            self.callbacks[conn] = (cb, args)
            return conn

        def signalMessage(self, *msg):
            for cb, args in self.callbacks.values():
                cb(*(msg + args))

    fake = types.ModuleType("message_filters")
    fake.SimpleFilter = SimpleFilter
    monkeypatch.setitem(sys.modules, "message_filters", fake)
    import moe_fusion_ros.sync as sync_mod

    monkeypatch.setattr(sync_mod, "_ADAPTER_CLASS", None)
    th_sub, rgb_sub = SimpleFilter(), SimpleFilter()
    ats = sync_mod.optimal_approximate_time_synchronizer([th_sub, rgb_sub], queue_size=5, slop=0.02)
    got = []
    ats.registerCallback(lambda t, r: got.append((t.name, r.name)))

    def m(name, stamp):
        return SimpleNamespace(name=name, header=SimpleNamespace(stamp=SimpleNamespace(
            sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000)))

    rgb_sub.signalMessage(m("r0", T0))
    th_sub.signalMessage(m("t_extra", T0 + 17 * MS))
    th_sub.signalMessage(m("t0", T0 + 50 * MS))
    assert got == []  # t_extra is within slop of r0, but a closer thermal frame could still arrive
    rgb_sub.signalMessage(m("r1", T0 + 45 * MS))
    assert got == [("t_extra", "r0")]
    th_sub.signalMessage(m("t1", T0 + 90 * MS))
    rgb_sub.signalMessage(m("r2", T0 + 95 * MS))
    assert got == [("t_extra", "r0"), ("t0", "r1")]
    ats.flush()
    assert got[-1] == ("t1", "r2")


def test_sample_bag_played_twice_pairs_both_plays_after_the_time_jump(data_dir):
    gt = json.loads((data_dir / "bags" / "sample_small.groundtruth.json").read_text())
    expected = sorted((p["thermal_stamp_ns"], p["rgb_stamp_ns"]) for p in gt["pairs"])
    events = bag_events(data_dir)
    resets = []
    s = PairSynchronizer(0.02, on_reset=lambda stream, newest, stamp: resets.append((stream, newest - stamp)))
    pairs = []
    for stream, stamp in events + events:  # `ros2 bag play` twice, or --loop
        pairs += s.add(stream, stamp, None)
    pairs += s.flush()
    got = [(p.thermal_stamp_ns, p.rgb_stamp_ns) for p in pairs]
    assert sorted(got) == sorted(expected + expected)  # every intended pair, both times, none wrong
    assert s.stats.time_jumps == 1 and len(resets) == 1
    assert resets[0][1] > 0.25e9  # it jumped back by most of the bag's 0.84 s
    assert s.stats.unpaired["out_of_order"] == 0


def test_small_backward_steps_are_out_of_order_and_large_ones_reset_pairing():
    unpaired = []
    s = PairSynchronizer(0.02, time_jump=0.25, on_unpaired=unpaired.append)
    s.add(RGB, T0)
    s.add(THERMAL, T0 + 40 * MS)
    s.add(THERMAL, T0 + 30 * MS)  # 10 ms back: a reordered frame, dropped
    assert s.stats.unpaired["out_of_order"] == 1 and s.stats.time_jumps == 0
    assert s.add(THERMAL, T0 - 2_000 * MS) == []  # 2 s back: a new timeline
    assert s.stats.time_jumps == 1
    assert [(u.stamp_ns - T0, u.reason) for u in unpaired] == [
        (0, "no_partner_within_slop"), (30 * MS, "out_of_order"),
        (40 * MS, "no_partner_within_slop")]  # the last one: the old timeline, flushed at the jump
    assert s.pending() == {THERMAL: 1, RGB: 0}
    pairs = s.add(RGB, T0 - 2_003 * MS) + s.add(THERMAL, T0 - 1_960 * MS) + s.add(RGB, T0 - 1_963 * MS)
    assert [(p.thermal_stamp_ns, p.rgb_stamp_ns) for p in pairs] == [(T0 - 2_000 * MS, T0 - 2_003 * MS)]


def test_settings_change_between_messages():
    s = PairSynchronizer(0.005)
    s.add(RGB, T0)
    s.add(THERMAL, T0 + 15 * MS)
    assert s.flush() == []  # 15 ms apart: not within 5 ms
    s.configure(0.02, 5, 0.0)
    s.add(RGB, T0 + 100 * MS)
    s.add(THERMAL, T0 + 115 * MS)
    assert [p.dt_ns for p in s.flush()] == [15 * MS]
    with pytest.raises(ValueError, match="time_jump"):
        s.configure(0.02, 5, 0.0, time_jump=0.0)
