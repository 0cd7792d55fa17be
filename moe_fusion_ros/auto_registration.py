"""``registration.auto``: estimate the thermal → RGB homography from live pairs, off the caller's thread (ROS-free).

:class:`AutoRegistration` takes a pair now and then (:meth:`AutoRegistration.wants`, at most one in flight, at least
``min_gap_s`` apart so that the scene moves between frames), estimates each in a background thread
(:func:`moe_fusion_core.autoreg.estimate_pair`) and then decides from all pairs so far as the folder path does
(:func:`moe_fusion_core.autoreg.estimate_multi`): once ≥ 2 pairs with a usable RGB frame are in, one joint
estimate from their averaged structure maps (:func:`moe_fusion_core.autoreg.estimate_joint`, over the last
``JOINT_PAIRS`` of them); when that is refused, the consensus of the per-frame estimates
(:func:`moe_fusion_core.autoreg.combine`). The first confident result is handed to ``on_result`` (the node applies
it); a low-confidence one never is. After ``max_frames`` pairs or ``timeout_s`` it gives up and says why. Fusion
goes on with the configured homography all the while.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from moe_fusion_core.autoreg import Estimate, combine, estimate_joint, estimate_pair
from moe_fusion_core.registration import homography_yaml

from . import health

IDLE, RUNNING, APPLIED, FAILED = "off", "estimating", "applied", "gave up"
JOINT_PAIRS = 10  # the joint estimate uses at most this many of the latest usable pairs (as register --auto)


class AutoRegistration:
    """State of one automatic registration run (see the module docstring). Thread-safe."""

    def __init__(self, on_result: Callable[[Estimate], None], *, min_gap_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic,
                 estimator: Callable[[np.ndarray, np.ndarray], Estimate] = estimate_pair,
                 joint_estimator: Callable[[Sequence[tuple[np.ndarray, np.ndarray]]], Estimate] | None
                 = estimate_joint) -> None:
        self.on_result = on_result
        self.min_gap_s = min_gap_s
        self.clock = clock
        self.estimator = estimator
        self.joint_estimator = joint_estimator  # None: per-frame consensus only
        self.state = IDLE
        self.result: Estimate | None = None
        self.frames: list[Estimate] = []
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []  # the usable pairs of the run in flight (joint estimate)
        self.joint: Estimate | None = None  # the last joint estimate of this run
        self.reason = ""
        self._lock = threading.Lock()
        self._busy = False
        self._run = 0
        self._t0 = self._last = 0.0
        self.max_frames, self.timeout_s = 10, 120.0
        self.thread: threading.Thread | None = None

    def start(self, max_frames: int, timeout_s: float) -> None:
        """Begin (or restart) an estimate from the next pairs; a run in flight is abandoned."""
        with self._lock:
            self._run += 1
            self.state, self.result, self.frames, self.reason = RUNNING, None, [], ""
            self.pairs, self.joint = [], None
            self.max_frames, self.timeout_s = max_frames, timeout_s
            self._t0, self._last, self._busy = self.clock(), -float("inf"), False

    def stop(self) -> None:
        """``registration.auto: false``: abandon a run in flight; the state reads ``off`` again."""
        with self._lock:
            self._run += 1
            self.state, self.result, self.reason = IDLE, None, ""
            self.pairs, self.joint = [], None

    def wants(self) -> bool:
        """Whether the next pair should be offered (running, none in flight, ``min_gap_s`` since the last)."""
        with self._lock:
            self._check_timeout()
            return self.state == RUNNING and not self._busy and self.clock() - self._last >= self.min_gap_s

    def offer(self, thermal: np.ndarray, rgb: np.ndarray, background: bool = True) -> bool:
        """Estimate from this pair (thermal in its own pixels, RGB H×W×3) in a thread; False when not wanted."""
        if not self.wants():
            return False
        with self._lock:
            self._busy, self._last, run = True, self.clock(), self._run
        if background:
            self.thread = threading.Thread(target=self._estimate, args=(thermal, rgb, run), daemon=True,
                                           name="moe_fusion_autoreg")
            self.thread.start()
        else:
            self._estimate(thermal, rgb, run)
        return True

    def _estimate(self, thermal: np.ndarray, rgb: np.ndarray, run: int) -> None:
        try:
            e = self.estimator(thermal, rgb)
        except Exception as ex:  # a frame must never end the run silently
            e = Estimate(None, 0.0, False, f"{type(ex).__name__}: {ex}")
        with self._lock:
            if run != self._run:
                return  # restarted or stopped meanwhile
            frames, pairs, usable = [*self.frames, e], self.pairs, bool(e.details.get("usable"))
            if usable:  # the RGB frame is neither dark nor flat
                same = [p for p in pairs if p[0].shape == thermal.shape and p[1].shape == rgb.shape]
                pairs = [*same, (thermal, rgb)][-JOINT_PAIRS:]
        joint = None
        if self.joint_estimator is not None and usable and len(pairs) >= 2:
            try:  # still in this thread: all usable pairs so far, one warp
                joint = self.joint_estimator(pairs)
            except Exception as ex:
                joint = Estimate(None, 0.0, False, f"{type(ex).__name__}: {ex}")
        size, rgb_size = (thermal.shape[1], thermal.shape[0]), (rgb.shape[1], rgb.shape[0])
        est = joint if joint is not None and joint.ok else combine(frames, size, rgb_size)
        if not est.ok and joint is not None:
            est = dataclasses.replace(
                est, reason=f"joint estimate of {len(pairs)} pairs: {joint.reason}; per frame: {est.reason}")
        with self._lock:
            if run != self._run:
                return
            self._busy = False
            self.frames = frames
            if self.state == RUNNING:  # (not after a timeout meanwhile)
                self.pairs = pairs
            if joint is not None:
                self.joint = joint
            if est.ok:
                self.state, self.result, self.reason, self.pairs = APPLIED, est, "", []
            else:
                self.reason = est.reason
                if len(self.frames) >= self.max_frames:
                    self.state, self.pairs = FAILED, []
                    self.reason = f"no confident estimate from {len(self.frames)} pairs: {est.reason}"
                else:
                    self._check_timeout()
        if est.ok:
            self.on_result(est)

    def _check_timeout(self) -> None:
        if self.state == RUNNING and self.clock() - self._t0 > self.timeout_s:
            self.state, self.pairs = FAILED, []
            self.reason = (f"no confident estimate within {self.timeout_s:g} s ({len(self.frames)} pairs"
                           + (f"; last: {self.reason})" if self.reason else ")"))

    def values(self) -> list[tuple[str, str]]:
        """Key/value pairs for diagnostics and ``fused/status``: state, confidence, homography, or why not."""
        with self._lock:
            self._check_timeout()
            out = [("registration.auto", self.state), ("registration.auto pairs tried", str(len(self.frames)))]
            if self.result is not None and self.result.h is not None:
                out += [("registration.auto confidence", f"{self.result.confidence:.3f}"),
                        ("registration.homography", homography_yaml(self.result.h))]
            elif self.reason:
                out.append(("registration.auto reason", self.reason))
            return out

    def status(self) -> health.Status:
        """The ``registration`` diagnostic: WARN when the estimate gave up (the configured homography stays)."""
        vals = self.values()
        level = health.WARN if self.state == FAILED else health.OK
        msg = {IDLE: "registration.auto off", RUNNING: "estimating the homography",
               APPLIED: "estimated homography applied",
               FAILED: "no confident estimate: the configured homography stays"}[self.state]
        return health.Status(level, msg, vals)
