"""Automatic registration (``register --auto``, ``registration.auto``) on real pairs warped by known homographies."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from moe_fusion_core import autoreg
from moe_fusion_core.image_io import read_image, read_ir, read_vis, write_image
from moe_fusion_ros.auto_registration import APPLIED, FAILED, RUNNING, AutoRegistration
from moe_fusion_ros.cli import main as cli
from moe_fusion_ros.params import load_params_file, validate

# frames of one M3SVD test recording (a rig the thresholds were not tuned on)
SEQ = ("0111_1716_v0029", "0111_1716_v0067", "0111_1716_v0125")


def pair(data_dir, ds: str, stem: str) -> tuple[np.ndarray, np.ndarray]:
    return read_ir(data_dir / ds / "ir" / f"{stem}.png"), read_vis(data_dir / ds / "vis" / f"{stem}.png")


def rig(data_dir, stems=SEQ, seed: int = 3, thermal_scale: float = 0.625):
    """Frames of one sequence warped by one random homography: ([(thermal, rgb)], H thermal → RGB)."""
    out, h = [], None
    for stem in stems:
        th, rgb, h = autoreg.simulate_rig(*pair(data_dir, "m3svd", stem), np.random.default_rng(seed), thermal_scale)
        out.append((th, rgb))
    return out, h


def test_one_warped_pair_of_another_resolution_is_recovered_within_4_px(data_dir):
    (frame,), h_true = rig(data_dir, SEQ[:1])
    assert frame[0].shape != frame[1].shape[:2]  # thermal 320x240, RGB 512x384
    est = autoreg.estimate_pair(*frame)
    assert est.ok, est.summary()
    assert autoreg.corner_error(est.h, h_true, frame[0].shape[::-1]) < 4.0
    assert autoreg.corner_error(np.diag([1.6, 1.6, 1.0]), h_true, frame[0].shape[::-1]) > 15  # the warp is real


def test_several_frames_are_registered_jointly_within_4_px(data_dir):
    frames, h_true = rig(data_dir)
    est, each = autoreg.estimate_multi(frames)
    assert est.ok and each == [] and est.details["frames"] == 3, est.summary()  # the joint estimate decided
    assert autoreg.corner_error(est.h, h_true, frames[0][0].shape[::-1]) < 4.0


def test_a_dark_night_image_and_a_flat_one_are_refused_with_the_reason(data_dir):
    est = autoreg.estimate_pair(*pair(data_dir, "msrs_more", "00022N"))  # a night frame, mean brightness ~10
    assert not est.ok and est.h is None and "too dark" in est.reason
    ir, vis = pair(data_dir, "m3svd", SEQ[0])
    flat = cv2.GaussianBlur(vis, (0, 0), 25)  # fog: no structure left
    est = autoreg.estimate_pair(ir, flat)
    assert not est.ok and "structure" in est.reason


def test_frames_that_disagree_are_refused_and_agreeing_ones_combined(data_dir):
    frames, h_true = rig(data_dir)
    each = [autoreg.estimate_pair(*f) for f in frames]
    size, rgb_size = frames[0][0].shape[::-1], frames[0][1].shape[1::-1]
    est = autoreg.combine(each, size, rgb_size)
    assert est.ok and est.details["agreeing"] == 3 and autoreg.corner_error(est.h, h_true, size) < 4.0
    wrong = autoreg.Estimate(each[0].h @ np.array([[1, 0, 40.0], [0, 1, 0], [0, 0, 1]]), 0.5, True)
    est = autoreg.combine([each[0], wrong], size, rgb_size)  # two confident frames 40 px apart
    assert not est.ok and est.h is None and "agree" in est.reason


def cli_auto(tmp_path, frames, *extra: str) -> tuple[int, object]:
    (tmp_path / "th").mkdir(exist_ok=True)
    (tmp_path / "rgb").mkdir(exist_ok=True)
    for i, (th, rgb) in enumerate(frames):
        write_image(tmp_path / "th" / f"{i:03d}.png", th)
        write_image(tmp_path / "rgb" / f"{i:03d}.png", rgb)
    out = tmp_path / "reg.yaml"
    return cli(["register", "--auto", "--thermal", str(tmp_path / "th"), "--rgb", str(tmp_path / "rgb"),
                "--out", str(out), *extra]), out


def test_register_auto_cli_writes_a_confident_homography_and_a_checkerboard(data_dir, tmp_path, capsys):
    frames, h_true = rig(data_dir, SEQ[:2], seed=5, thermal_scale=1.0)
    prev = tmp_path / "check.png"
    code, out = cli_auto(tmp_path, frames, "--preview", str(prev))
    err = capsys.readouterr().err
    assert code == 0, err
    h = np.reshape(validate(load_params_file(out)).homography(), (3, 3))
    assert autoreg.corner_error(h, h_true, frames[0][0].shape[::-1]) < 4.0
    assert "confidence" in out.read_text() and "confidence" in err
    assert "joint estimate of 2 frame pairs" in err
    board = read_image(prev)
    assert board.shape == frames[0][1].shape
    assert (board[..., 0] == board[..., 1]).mean() > 0.4  # half the tiles are the grey thermal image


def test_register_auto_cli_refuses_with_exit_3_and_writes_nothing(data_dir, tmp_path, capsys):
    code, out = cli_auto(tmp_path, [pair(data_dir, "msrs_more", "00022N")])
    err = capsys.readouterr().err
    assert code == 3 and not out.exists()
    assert "refused, nothing written" in err and "too dark" in err


def test_register_cli_bad_arguments_exit_2(tmp_path, capsys):
    assert cli(["register", "--auto", "--thermal", str(tmp_path)]) == 2
    assert "--auto needs --thermal and --rgb" in capsys.readouterr().err
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert cli(["register", "--auto", "--thermal", str(tmp_path / "a"), "--rgb", str(tmp_path / "b")]) == 2
    assert "no file stem appears in both" in capsys.readouterr().err
    assert cli(["register", "--auto", "--thermal", str(tmp_path / "a"), "--rgb", str(tmp_path / "x.png")]) == 2
    with pytest.raises(SystemExit) as e:
        cli(["register", "--auto", "--points", str(tmp_path / "p.csv")])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_auto_registration_applies_only_a_confident_estimate():
    clock, applied = FakeClock(), []
    h = np.diag([1.5, 1.5, 1.0])
    answers = iter([autoreg.Estimate(h, 0.1, False, "the structure maps correlate too weakly"),
                    autoreg.Estimate(h @ np.array([[1, 0, 30.0], [0, 1, 0], [0, 0, 1]]), 0.3, False, "ambiguous"),
                    autoreg.Estimate(h, 0.4, True)])
    a = AutoRegistration(applied.append, min_gap_s=0.5, clock=clock, estimator=lambda t, r: next(answers))
    th, rgb = np.zeros((240, 320), np.uint8), np.zeros((480, 640, 3), np.uint8)
    assert not a.offer(th, rgb)  # not started
    a.start(max_frames=5, timeout_s=60)
    assert a.offer(th, rgb, background=False) and applied == [] and a.state == RUNNING
    assert not a.wants()  # min_gap_s between frames
    clock.t += 1
    a.offer(th, rgb, background=False)
    assert applied == [] and a.state == RUNNING  # one weak frame and one that disagrees: not applied
    clock.t += 1
    a.offer(th, rgb, background=False)
    assert a.state == APPLIED and len(applied) == 1 and np.allclose(applied[0].h, h)
    vals = dict(a.values())
    assert vals["registration.auto"] == "applied" and vals["registration.homography"].startswith("[1.5, 0, 0,")
    assert not a.wants()
    a.stop()
    assert a.state == "off" and dict(a.values())["registration.auto"] == "off"


def test_auto_registration_gives_up_after_max_frames_or_timeout_and_restarts():
    clock, applied = FakeClock(), []
    weak = autoreg.Estimate(None, 0.0, False, "the RGB image is too dark to register")
    a = AutoRegistration(applied.append, min_gap_s=0.0, clock=clock, estimator=lambda t, r: weak)
    th, rgb = np.zeros((240, 320), np.uint8), np.zeros((480, 640, 3), np.uint8)
    a.start(max_frames=2, timeout_s=60)
    a.offer(th, rgb, background=False)
    a.offer(th, rgb, background=False)
    assert a.state == FAILED and "too dark" in a.reason and applied == [] and not a.wants()
    assert a.status().level == 1 and "configured homography stays" in a.status().message
    a.start(max_frames=100, timeout_s=10)  # re-estimation on request
    assert a.state == RUNNING and a.frames == []
    clock.t += 11
    assert not a.wants() and a.state == FAILED and "within 10 s" in a.reason


def test_auto_registration_estimates_in_its_own_thread(data_dir):
    frames, h_true = rig(data_dir, SEQ[:1])
    done = threading.Event()
    got = []
    a = AutoRegistration(lambda e: (got.append(e), done.set()))
    a.start(max_frames=3, timeout_s=60)
    assert a.offer(*frames[0])
    assert a.thread is not None and a.thread is not threading.current_thread()
    assert done.wait(600) and a.state == APPLIED
    assert autoreg.corner_error(got[0].h, h_true, frames[0][0].shape[::-1]) < 4.0


def test_auto_registration_applies_the_joint_estimate_of_pairs_each_refused_alone(data_dir):
    """Two MSRS night pairs of one rig: each alone is refused and they disagree, so the consensus refuses; the
    joint estimate of both (their structure maps averaged) is confident and within 10 px of the truth. The node's
    runner uses it."""
    frames, h_true = [], None
    for stem in ("00007N", "00033N"):
        th, rgb, h_true = autoreg.simulate_rig(*pair(data_dir, "msrs_more", stem), np.random.default_rng(3), 0.625)
        frames.append((th, rgb))
    size = frames[0][0].shape[::-1]
    runs = {}
    for joint in (True, False):
        clock, applied = FakeClock(), []
        kw = {} if joint else {"joint_estimator": None}
        a = AutoRegistration(applied.append, min_gap_s=0.0, clock=clock, **kw)
        a.start(max_frames=5, timeout_s=600)
        for th, rgb in frames:
            assert a.offer(th, rgb, background=False)
        runs[joint] = a, applied
    a, applied = runs[False]  # consensus only: each frame refused, and the two disagree
    assert [e.ok for e in a.frames] == [False, False] and a.state == RUNNING and applied == []
    a, applied = runs[True]
    assert a.state == APPLIED and len(applied) == 1, a.reason
    est = applied[0]
    assert est.details["frames"] == 2 and est is a.joint, est.summary()  # the joint estimate decided
    assert autoreg.corner_error(est.h, h_true, size) < 10.0  # (MSRS truth is itself off by 2–5 px)
    assert dict(a.values())["registration.auto"] == "applied"
