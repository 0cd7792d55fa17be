"""Diagnostics content (ROS-free): rate meters and the three status tasks' levels and fields."""

from __future__ import annotations

import pytest

from moe_fusion_ros import health
from moe_fusion_ros.health import ERROR, OK, WARN, RateMeter


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def test_rate_meter_counts_a_sliding_window():
    c = Clock()
    r = RateMeter(window_s=2.0, clock=c)
    for _ in range(30):  # 30 Hz for 1 s
        r.tick()
        c.t += 1 / 30
    assert r.rate() == pytest.approx(15.0)  # 30 events in a 2 s window
    c.t += 1.5
    assert r.rate() == pytest.approx(15 / 2, abs=1)  # the older half has left the window
    c.t += 5
    assert r.rate() == 0 and r.count == 30
    with pytest.raises(ValueError):
        RateMeter(0)


def fields(s: health.Status) -> dict[str, str]:
    return dict(s.values)


def test_inputs_status_warns_about_a_missing_input_and_names_the_qos_fix():
    expected = {"thermal": 30.0, "rgb": 25.0}
    ok = health.inputs_status({"thermal": 30.0, "rgb": 25.0}, {"thermal": 300, "rgb": 250}, expected,
                              {"thermal": "ok", "rgb": "ok"}, 0, True)
    assert ok.level == OK and fields(ok)["thermal state"] == "ok"
    miss = health.inputs_status({"thermal": 0.0, "rgb": 25.0}, {"thermal": 3, "rgb": 250}, expected,
                                {"thermal": "missing", "rgb": "ok"}, 0, True)
    assert miss.level == WARN and "thermal missing: publishing rgb only" in miss.message
    assert fields(miss)["thermal state"] == "missing"
    qos = health.inputs_status({"thermal": 0.0, "rgb": 0.0}, {"thermal": 0, "rgb": 0}, expected, {}, 2, True)
    assert qos.level == ERROR and "best_effort" in qos.message and fields(qos)["incompatible QoS events"] == "2"


def test_sync_status_reports_time_jumps_and_missing_pairs():
    s = health.sync_status(20, 5.0, 4.2, 9.0, {"superseded": 4}, 1, 2.0, 3, 0.1, True, 1.0)
    assert s.level == WARN and "time went backwards" in s.message
    f = fields(s)
    assert f["time jumps (pairing reset)"] == "1" and f["unpaired: superseded"] == "4" and f["idle flushes"] == "3"
    quiet = health.sync_status(20, 5.0, 4.2, 9.0, {}, 1, 60.0, 0, 0.1, True, 1.0)
    assert quiet.level == OK
    stuck = health.sync_status(0, 0.0, float("nan"), 0.0, {}, 0, None, 0, None, True, 1.0)
    assert stuck.level == WARN and "sync.slop" in stuck.message


def test_inference_status_lists_skips_by_cause_and_memory():
    s = health.inference_status(4.0, [10.0, 20.0, 30.0], [40.0], 7, {"MalformedImage": 2, "InvalidThermal": 1},
                                "MalformedImage: step", {"thermal": 5}, {}, "cpu", 812.5)
    f = fields(s)
    assert f["frames skipped"] == "3" and f["frames skipped: MalformedImage"] == "2"
    assert f["latency p50 (ms)"] == "20.0" and f["dropped pairs (worker busy)"] == "7"
    assert f["frames without thermal"] == "5" and f["resident memory (MB)"] == "812.5"
    assert health.rss_mb() > 10
