"""The input front end: idle flush, a missing input, clock resets (ROS-free, on a clock the test drives)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from moe_fusion_ros.inputs import InputFrontEnd, InputMonitor, Single, matching_qos
from moe_fusion_ros.sync import RGB, THERMAL, Pair, PairSynchronizer

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.t = 1_000 * MS

    def __call__(self) -> int:
        return self.t


def msg(stamp: int, name: str = "") -> SimpleNamespace:
    return SimpleNamespace(name=name, header=SimpleNamespace(stamp=SimpleNamespace(sec=stamp // 10**9,
                                                                                   nanosec=stamp % 10**9)))


def front(clock: Clock, **kw) -> tuple[InputFrontEnd, list]:
    changes: list = []
    f = InputFrontEnd(PairSynchronizer(0.02), clock, on_missing=lambda a, b: changes.append((a, b)), **kw)
    return f, changes


def test_last_pair_is_published_after_the_idle_timeout_not_held_forever():
    clock = Clock()
    f, _ = front(clock, idle_flush_s=0.5)
    assert f.offer(RGB, msg(T0)) == []
    clock.t += 10 * MS
    assert f.offer(THERMAL, msg(T0 + 3 * MS)) == []  # a closer thermal frame could still come
    clock.t += 400 * MS
    assert f.tick() == []  # not idle long enough
    clock.t += 200 * MS
    (p,) = f.tick()
    assert isinstance(p, Pair) and (p.thermal_stamp_ns, p.rgb_stamp_ns) == (T0 + 3 * MS, T0)
    assert f.idle_flushes == 1 and f.tick() == []


def test_a_stalled_clock_counts_as_idle():
    clock = Clock()
    f, _ = front(clock, idle_flush_s=0.5)
    f.offer(RGB, msg(T0))
    f.offer(THERMAL, msg(T0 + 3 * MS))
    assert f.tick() == []
    assert len(f.tick(clock_stalled=True)) == 1  # a bag's /clock stopped with the bag


def test_missing_input_gives_singles_then_pairs_again_when_it_returns():
    clock = Clock()
    f, changes = front(clock, missing_timeout_s=0.5)
    got = []
    for k in range(40):  # 2 s of RGB at 20 Hz; thermal stops after 0.25 s
        clock.t = 1_000 * MS + k * 50 * MS
        if k < 5:
            got += f.offer(THERMAL, msg(T0 + k * 50 * MS + 2 * MS, f"t{k}"))
        got += f.offer(RGB, msg(T0 + k * 50 * MS, f"r{k}"))
    singles = [g for g in got if isinstance(g, Single)]
    assert changes == [(None, THERMAL)] and f.missing() == THERMAL
    assert singles and all(s.stream == RGB and s.missing == THERMAL and s.thermal is None for s in singles)
    pairs = [g for g in got if isinstance(g, Pair)]
    assert [p.rgb.name for p in pairs] == [f"r{k}" for k in range(5)]
    # every later RGB frame goes out alone, including the queue_size (5) frames that waited for a partner until
    # thermal counted as missing; the 5 before them overflowed the queue meanwhile
    assert [s.msg.name for s in singles] == [f"r{k}" for k in range(10, 40)] and f.singles == 30
    assert f.sync.stats.unpaired["queue_overflow"] == 5
    assert got.index(singles[0]) > 0
    clock.t += 50 * MS  # thermal is back
    f.offer(THERMAL, msg(T0 + 40 * 50 * MS + 2 * MS, "t40"))
    assert changes[-1] == (THERMAL, None) and f.missing() is None
    clock.t += 5 * MS
    out = f.offer(RGB, msg(T0 + 40 * 50 * MS, "r40"))
    clock.t += 50 * MS
    out += f.offer(RGB, msg(T0 + 41 * 50 * MS, "r41")) + f.offer(THERMAL, msg(T0 + 41 * 50 * MS + 2 * MS, "t41"))
    assert [(p.thermal.name, p.rgb.name) for p in out] == [("t40", "r40")]


def test_without_single_modality_a_missing_input_publishes_nothing():
    clock = Clock()
    f, _ = front(clock, missing_timeout_s=0.2, single_modality=False)
    for k in range(20):
        clock.t += 50 * MS
        assert not [g for g in f.offer(RGB, msg(T0 + k * 50 * MS)) if isinstance(g, Single)]
    assert f.missing() == THERMAL  # still reported


def test_monitor_states_and_startup_grace():
    m = InputMonitor(0.5)
    m.seen(RGB, 0)
    assert m.missing(100 * MS) is None  # thermal may just be slower to start
    m.seen(RGB, 400 * MS)
    assert m.status(400 * MS) == {THERMAL: "not seen", RGB: "ok"}
    m.seen(RGB, 600 * MS)
    assert m.missing(600 * MS) == THERMAL and m.status(600 * MS)[THERMAL] == "missing"
    assert m.missing(5_000 * MS) is None  # both silent: the rig stopped, nothing is "missing"
    m.seen(RGB, 6_000 * MS)  # the rig restarts with the RGB camera first: thermal gets its grace period again
    assert m.missing(6_000 * MS) is None and m.missing(6_400 * MS) is None
    m.seen(RGB, 6_450 * MS)
    m.seen(THERMAL, 6_460 * MS)
    assert m.missing(6_600 * MS) is None
    with pytest.raises(ValueError):
        InputMonitor(0)


def test_clock_going_backwards_restarts_the_timeouts():
    clock = Clock()
    f, _ = front(clock, missing_timeout_s=0.5)
    for k in range(30):
        clock.t += 50 * MS
        f.offer(RGB, msg(T0 + k * 50 * MS))
    assert f.missing() == THERMAL
    clock.t = 10 * MS  # sim time reset (bag looped with --clock)
    f.offer(THERMAL, msg(T0, "t"))
    assert f.clock_resets == 1 and f.missing() is None


def test_auto_qos_matches_every_publisher_present():
    assert matching_qos([]) == ("best_effort", "volatile")  # nothing yet: matches whatever comes
    assert matching_qos([("reliable", "volatile")]) == ("reliable", "volatile")
    assert matching_qos([("reliable", "volatile"), ("best_effort", "volatile")]) == ("best_effort", "volatile")
    assert matching_qos([("reliable", "transient_local")] * 2) == ("reliable", "transient_local")
    assert matching_qos([("reliable", "transient_local"), ("reliable", "volatile")]) == ("reliable", "volatile")


def test_a_dropped_frame_of_a_slow_stream_is_not_a_missing_camera():
    """A 20 Hz rig played at a tenth of its rate (2 Hz): one dropped RGB frame is a 1 s gap, longer than the
    0.5 s timeout but only two of its frame intervals; a camera that really stops is missing after 3 intervals."""
    clock = Clock()
    f, changes = front(clock, missing_timeout_s=0.5)
    got = []
    for k in range(12):
        clock.t = 1_000 * MS + k * 500 * MS
        got += f.offer(THERMAL, msg(T0 + k * 500 * MS + 2 * MS, f"t{k}"))
        if k != 6:  # RGB frame 6 dropped
            got += f.offer(RGB, msg(T0 + k * 500 * MS, f"r{k}"))
        clock.t += 250 * MS
        got += f.tick()
    assert not [g for g in got if isinstance(g, Single)] and changes == []
    assert f.monitor.timeout(RGB) == 1_500 * MS and f.monitor.timeout(THERMAL) == 1_500 * MS
    assert len([g for g in got if isinstance(g, Pair)]) >= 10
    for k in range(12, 18):  # now the RGB camera stops for good: missing after 3 intervals (1.5 s)
        clock.t = 1_000 * MS + k * 500 * MS
        got += f.offer(THERMAL, msg(T0 + k * 500 * MS + 2 * MS, f"t{k}"))
    assert changes == [(None, RGB)]
    assert InputMonitor(0.5).timeout(RGB) == 500 * MS


def test_before_an_input_has_a_rate_the_other_inputs_rate_is_used():
    """The sample bag at a tenth of its rate: its second thermal frame comes 0.68 s after the first (one dropped)
    while RGB frames come every 0.4 s: thermal is not missing."""
    m = InputMonitor(0.5)
    m.seen(RGB, 0)
    m.seen(RGB, 426 * MS)
    assert m.timeout(THERMAL) == 500 * MS  # never seen: the configured timeout
    m.reset()
    m.seen(RGB, 0)
    m.seen(THERMAL, 133 * MS)
    m.seen(RGB, 426 * MS)
    m.seen(RGB, 802 * MS)
    assert m.timeout(THERMAL) == 1_203 * MS  # 3 x the RGB median interval (401 ms)
    assert m.missing(802 * MS) is None
    m.seen(THERMAL, 810 * MS)
    assert m.timeout(THERMAL) == 3 * 677 * MS  # now its own
    for k in range(1, 20):  # both streamed fast before, then paused: the old rate is forgotten on restart
        m.seen(RGB, 10_000 * MS + k * 40 * MS)
        m.seen(THERMAL, 10_000 * MS + k * 33 * MS)
    assert m.timeout(THERMAL) == 500 * MS
    m.seen(RGB, 20_000 * MS)
    m.seen(THERMAL, 20_133 * MS)
    m.seen(RGB, 20_426 * MS)
    assert m.timeout(THERMAL) == 3 * 426 * MS and m.missing(20_802 * MS) is None


def test_at_a_high_rate_the_configured_timeout_still_applies():
    m = InputMonitor(0.5)
    for k in range(20):  # 20 Hz: 3 intervals = 150 ms < 0.5 s
        m.seen(RGB, k * 50 * MS)
        m.seen(THERMAL, k * 50 * MS + MS)
    assert m.timeout(RGB) == 500 * MS
    for k in range(20, 32):  # thermal stops after 951 ms, RGB goes on
        m.seen(RGB, k * 50 * MS)
    assert m.missing(1_400 * MS) is None and m.missing(1_550 * MS) == THERMAL


def test_the_sample_bag_at_a_tenth_of_its_rate_with_a_dropped_rgb_frame_pairs_without_singles(data_dir, truth):
    """The real sample bag's arrival times × 10 (as `ros2 bag play --rate 0.1`), one RGB frame of an intended pair
    left out: every other intended pair is made and nothing is fused alone (a fixed 0.5 s rule loses pairs)."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    with Reader(data_dir / "bags" / "sample_small") as r:
        msgs = [(THERMAL if "thermal" in c.topic else RGB, t, ts.deserialize_cdr(raw, c.msgtype))
                for c, t, raw in r.messages() if c.topic.endswith("image_raw")]
    rgb = [i for i, (k, _, _) in enumerate(msgs) if k == RGB]
    drop = rgb[len(rgb) // 2]
    clock = Clock()
    f, changes = front(clock, missing_timeout_s=0.5)
    out, start = [], clock.t
    for i, (key, t, m) in enumerate(msgs):
        arrival = start + (t - msgs[0][1]) * 10
        while clock.t + 50 * MS < arrival:  # the node's 20 Hz tick
            clock.t += 50 * MS
            out += f.tick()
        clock.t = arrival
        if i != drop:
            out += f.offer(key, m)
    for _ in range(40):
        clock.t += 50 * MS
        out += f.tick()
    pairs = {(p.thermal_stamp_ns, p.rgb_stamp_ns) for p in out if isinstance(p, Pair)}
    lost = {p for p in truth["pairs"] if p[1] == stamp(msgs[drop][2])}
    assert len(lost) == 1 and pairs == truth["pairs"] - lost
    assert not [o for o in out if isinstance(o, Single)] and changes == []


def stamp(m) -> int:
    return m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec
