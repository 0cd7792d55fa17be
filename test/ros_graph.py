"""Helpers for tests that run the node in a live ROS 2 graph (imported only where rclpy is available).

- :func:`domain_id`: a ROS_DOMAIN_ID no other test session on this machine holds (lock files), so that parallel
  runs never see each other's topics; all traffic stays on loopback (``../shared/ros2/activate.sh``).
- :func:`colcon_build`: a colcon build of this repository into a scratch workspace, as a user builds it.
- :class:`Launched`: ``ros2 launch moe_fusion_ros fusion.launch.py ...`` in its own process group (what a
  terminal's Ctrl-C signals), with its output in a log file.
- :class:`Probe`: an rclpy node in the test process that publishes inputs and records every output message.
- :class:`BagPlayer`: plays a real rosbag2 (read with ``rosbags``) into the graph at the bag's timing, publishing
  each message's stored CDR bytes unchanged, optionally with ``/clock`` (like ``ros2 bag play --clock``).
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

REPO = Path(__file__).resolve().parents[1]
NS = 1_000_000_000
_LOCKS: list[Any] = []


def domain_id() -> int:
    """Reserve a ROS_DOMAIN_ID in 1..100 for this process (released when it exits)."""
    lock_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "moe_fusion_ros_test_domains"
    lock_dir.mkdir(exist_ok=True)
    start = os.getpid() % 100
    for k in range(100):
        d = 1 + (start + k) % 100
        f = open(lock_dir / f"{d}.lock", "w")  # noqa: SIM115 - held for the life of the process
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _LOCKS.append(f)
        return d
    raise RuntimeError("no free ROS_DOMAIN_ID in 1..100 (100 test sessions running?)")


def colcon_build(workspace: Path) -> Path:
    """``colcon build`` of this repository into ``workspace``; returns the install folder."""
    colcon = Path(sys.executable).with_name("colcon")
    cmd = [str(colcon if colcon.exists() else "colcon"), "build", "--base-paths", str(REPO),
           "--build-base", str(workspace / "build"), "--install-base", str(workspace / "install")]
    proc = subprocess.run(cmd, cwd=workspace, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"colcon build failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return workspace / "install"


def params_file(path: Path, overrides: dict[str, Any]) -> Path:
    """A ROS 2 parameter file: the package's config/fusion.yaml with ``overrides`` (dotted names) applied."""
    data = yaml.safe_load((REPO / "config" / "fusion.yaml").read_text())
    node = data["/**"]["ros__parameters"]
    for name, value in overrides.items():
        *parents, leaf = name.split(".")
        d = node
        for part in parents:
            d = d.setdefault(part, {})
        d[leaf] = value
    path.write_text(yaml.safe_dump(data))
    return path


class Launched:
    """``ros2 launch moe_fusion_ros fusion.launch.py ARGS`` from a colcon install, in a new process group."""

    def __init__(self, install: Path, args: dict[str, str], log: Path, env: dict[str, str] | None = None,
                 launch_file: str = "fusion.launch.py") -> None:
        self.log_path = log
        argv = " ".join(f"{k}:={v}" for k, v in args.items())
        cmd = f". {install}/setup.bash && exec ros2 launch moe_fusion_ros {launch_file} {argv}"
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(["bash", "-c", cmd], stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env or dict(os.environ))
        self.returncode: int | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_log(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if not self.alive():
                return text in self.log()
            time.sleep(0.2)
        return False

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int:
        """Signal the whole process group (a terminal's Ctrl-C does that) and wait for launch to exit."""
        if self.returncode is None:
            if self.alive():
                os.killpg(self.proc.pid, sig)
            try:
                self.returncode = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.returncode = self.proc.wait()
            self._log.close()
        return self.returncode

    def __enter__(self) -> Launched:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@dataclass
class Received:
    msg: Any
    t: float  # time.monotonic() at reception


class Probe:
    """A test-side rclpy node: input publishers, output recorders, and service/parameter helpers."""

    OUTPUTS: ClassVar[dict[str, str]] = {
        "image": "sensor_msgs.msg:Image", "detections": "vision_msgs.msg:Detection2DArray",
        "gates": "std_msgs.msg:Float32MultiArray", "camera_info": "sensor_msgs.msg:CameraInfo",
        "status": "diagnostic_msgs.msg:DiagnosticArray"}

    def __init__(self, name: str = "moe_fusion_probe", ns: str = "/fused", reliable_inputs: bool = True) -> None:
        import importlib

        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CameraInfo, Image

        self.rclpy = rclpy
        self.node = rclpy.create_node(name)
        self.got: dict[str, list[Received]] = defaultdict(list)
        self.lock = threading.Lock()
        rel = ReliabilityPolicy.RELIABLE if reliable_inputs else ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(depth=50, reliability=rel)
        self.pub = {"thermal": self.node.create_publisher(Image, "/thermal/image_raw", qos),
                    "rgb": self.node.create_publisher(Image, "/camera/image_raw", qos),
                    "rgb_info": self.node.create_publisher(CameraInfo, "/camera/camera_info", qos),
                    "clock": self.node.create_publisher(Clock, "/clock", 10)}
        out_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        for key, spec in self.OUTPUTS.items():
            mod, cls = spec.split(":")
            typ = getattr(importlib.import_module(mod), cls)
            self.node.create_subscription(typ, f"{ns}/{key}", self._recorder(key), out_qos)
        from diagnostic_msgs.msg import DiagnosticArray

        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._recorder("diagnostics"), 50)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self._spin_loop, daemon=True)
        self._running = True
        self._spin.start()

    def _spin_loop(self) -> None:
        while self._running and self.rclpy.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def _recorder(self, key: str) -> Callable[[Any], None]:
        def cb(msg: Any) -> None:
            with self.lock:
                self.got[key].append(Received(msg, time.monotonic()))

        return cb

    def clear(self) -> None:
        with self.lock:
            self.got.clear()

    def messages(self, key: str) -> list[Any]:
        with self.lock:
            return [r.msg for r in self.got[key]]

    def received(self, key: str) -> list[Received]:
        with self.lock:
            return list(self.got[key])

    def wait(self, cond: Callable[[], bool], timeout: float, poll: float = 0.1) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            time.sleep(poll)
        return cond()

    def wait_for_node(self, timeout: float = 300.0) -> bool:
        """Until the node subscribes to both inputs (it is active)."""
        return self.wait(lambda: self.pub["thermal"].get_subscription_count() > 0
                         and self.pub["rgb"].get_subscription_count() > 0, timeout, poll=0.2)

    def diagnostics(self, task: str) -> dict[str, str] | None:
        """The latest ``/diagnostics`` values of the node's task ``inputs`` / ``sync`` / ``inference``."""
        for msg in reversed(self.messages("diagnostics")):
            for st in msg.status:
                if st.name.endswith(f": {task}") and "moe_fusion" in st.name:
                    return {kv.key: kv.value for kv in st.values} | {"_level": st.level[0] if isinstance(
                        st.level, bytes) else int(st.level), "_message": st.message}
        return None

    def set_params(self, node: str, values: dict[str, Any], timeout: float = 10.0) -> list[Any]:
        """Set parameters through the node's parameter service; returns the SetParametersResult list."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        cli = self.node.create_client(SetParameters, f"{node}/set_parameters")
        try:
            if not cli.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"{node}/set_parameters not available")
            req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
            fut = cli.call_async(req)
            if not self.wait(fut.done, timeout, poll=0.02):
                raise TimeoutError(f"{node}/set_parameters did not answer")
            return list(fut.result().results)
        finally:
            self.node.destroy_client(cli)

    def lifecycle(self, node: str, transition: str | None = None, timeout: float = 120.0) -> str:
        """Trigger ``transition`` (by label) if given; returns the node's lifecycle state label afterwards."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState, GetState

        if transition is not None:
            ids = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
                   "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP,
                   "shutdown": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN}
            self._call(ChangeState, f"{node}/change_state",
                       ChangeState.Request(transition=Transition(id=ids[transition])), timeout)
        return self._call(GetState, f"{node}/get_state", GetState.Request(), timeout).current_state.label

    def _call(self, srv: Any, name: str, req: Any, timeout: float) -> Any:
        cli = self.node.create_client(srv, name)
        try:
            if not cli.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"{name} not available")
            fut = cli.call_async(req)
            if not self.wait(fut.done, timeout, poll=0.02):
                raise TimeoutError(f"{name} did not answer in {timeout} s")
            return fut.result()
        finally:
            self.node.destroy_client(cli)

    def close(self) -> None:
        self._running = False
        self._spin.join(timeout=2)
        self.executor.shutdown()
        self.node.destroy_node()


MSG_TYPES = {"thermal": "sensor_msgs/msg/Image", "rgb": "sensor_msgs/msg/Image",
             "rgb_info": "sensor_msgs/msg/CameraInfo"}  # probe publisher key -> message type


class BagPlayer:
    """Plays the image and camera_info topics of a rosbag2 into the graph at the bag's own timing."""

    TOPICS: ClassVar[dict[str, str]] = {"/thermal/image_raw": "thermal", "/camera/image_raw": "rgb",
                                        "/camera/camera_info": "rgb_info"}

    def __init__(self, bag: Path) -> None:
        from rosbags.rosbag2 import Reader

        self.messages: list[tuple[str, int, bytes]] = []  # (probe publisher key, bag time ns, CDR bytes)
        with Reader(bag) as r:
            conns = [c for c in r.connections if c.topic in self.TOPICS]
            for c, t, raw in r.messages(connections=conns):
                self.messages.append((self.TOPICS[c.topic], t, bytes(raw)))

    def play(self, probe: Probe, rate: float = 1.0, clock: bool = False, stamp_shift_ns: int = 0,
             skip: Callable[[str, int], bool] | None = None) -> None:
        """Publish every message at ``rate`` × the bag's speed; ``clock`` also publishes /clock = bag time before
        each message; ``stamp_shift_ns`` moves header stamps (and /clock) by a constant; ``skip(key, index)``
        leaves messages out."""
        from builtin_interfaces.msg import Time
        from rosbags.typesys import Stores, get_typestore
        from rosgraph_msgs.msg import Clock

        ts = get_typestore(Stores.ROS2_JAZZY)
        t0_bag, t0 = self.messages[0][1], time.monotonic()
        for i, (key, t, raw) in enumerate(self.messages):
            wait = t0 + (t - t0_bag) / NS / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if skip is not None and skip(key, i):
                continue
            if stamp_shift_ns:
                m = ts.deserialize_cdr(raw, MSG_TYPES[key])
                st = stamp_of(m) + stamp_shift_ns
                m.header.stamp.sec, m.header.stamp.nanosec = st // NS, st % NS
                raw = bytes(ts.serialize_cdr(m, MSG_TYPES[key]))
            if clock:
                now = t + stamp_shift_ns
                probe.pub["clock"].publish(Clock(clock=Time(sec=now // NS, nanosec=now % NS)))
            probe.pub[key].publish(raw)

    def decoded(self, key: str) -> list[Any]:
        """Every ``key`` message of the bag, deserialised, in bag order."""
        from rosbags.typesys import Stores, get_typestore

        ts = get_typestore(Stores.ROS2_JAZZY)
        return [ts.deserialize_cdr(raw, MSG_TYPES[key]) for k, _, raw in self.messages if k == key]

    def stamps(self, key: str) -> list[int]:
        return [stamp_of(m) for m in self.decoded(key)]

    def oracle(self, pairs: set[tuple[int, int]], max_side: int | None) -> Any:
        """A :class:`content.PairOracle` over the bag's intended (thermal stamp, rgb stamp) ``pairs``, the
        reference fused by the embedded model at the node's ``model.max_side``."""
        from content import PairOracle, pixels, reference_engine

        by_stamp = {k: {stamp_of(m): pixels(m) for m in self.decoded(k)} for k in ("thermal", "rgb")}
        return PairOracle(reference_engine(max_side),
                          {(t, r): (by_stamp["thermal"][t], by_stamp["rgb"][r]) for t, r in pairs})


def stamp_of(msg: Any) -> int:
    return msg.header.stamp.sec * NS + msg.header.stamp.nanosec


class Frames:
    """Real frames of a bag (the thermal / RGB / camera_info messages), re-stamped and re-serialised on demand;
    ``index`` picks the stream's k-th frame (each is a different picture, so the fused pixels tell which)."""

    def __init__(self, player: BagPlayer) -> None:
        from rosbags.typesys import Stores, get_typestore

        self.ts = get_typestore(Stores.ROS2_JAZZY)
        self.all: dict[str, list[Any]] = {key: player.decoded(key) for key in MSG_TYPES}
        self.msgs: dict[str, Any] = {key: msgs[0] for key, msgs in self.all.items()}

    def raw(self, key: str, stamp: int, index: int = 0, **fields: Any) -> bytes:
        """CDR bytes of the ``index``-th ``key`` frame with header stamp ``stamp`` and any fields replaced."""
        import copy

        m = copy.copy(self.all[key][index])
        m.header = copy.copy(m.header)
        m.header.stamp = type(m.header.stamp)(sec=stamp // NS, nanosec=stamp % NS)
        for k, v in fields.items():
            setattr(m, k, v)
        return bytes(self.ts.serialize_cdr(m, MSG_TYPES[key]))

    def oracle(self, pairs: dict[tuple[int, int], tuple[int, int]], max_side: int | None) -> Any:
        """A :class:`content.PairOracle`: (thermal stamp, rgb stamp) as published → (thermal index, rgb index)."""
        from content import PairOracle, pixels, reference_engine

        return PairOracle(reference_engine(max_side), {
            k: (pixels(self.all["thermal"][i]), pixels(self.all["rgb"][j])) for k, (i, j) in pairs.items()})


def stream(probe: Probe, frames: Frames, seconds: float, t0_stamp: int, thermal_hz: float = 30.0,
           rgb_hz: float = 25.0, thermal_offset_ns: int = 5_000_000,
           drop: Callable[[str, float], bool] | None = None) -> dict[int, float]:
    """Publish both cameras in real time for ``seconds`` (stamp = t0_stamp + time since start); ``drop(key, t)``
    leaves messages out. Returns {rgb stamp: time.monotonic() when published}."""
    start = time.monotonic()
    count = {"thermal": 0, "rgb": 0}
    hz = {"thermal": thermal_hz, "rgb": rgb_hz}
    sent: dict[int, float] = {}
    while True:
        key = min(count, key=lambda k: count[k] / hz[k])
        t = count[key] / hz[key]  # frame k at exactly k / hz: no accumulated rounding
        if t > seconds:
            return sent
        wait = start + t - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        count[key] += 1
        if drop is not None and drop(key, t):
            continue
        stamp = t0_stamp + round(t * NS) + (thermal_offset_ns if key == "thermal" else 0)
        probe.pub[key].publish(frames.raw(key, stamp))
        if key == "rgb":
            sent[stamp] = time.monotonic()


def fused_pairs(probe: Probe, oracle: Any) -> list[tuple[int, int]]:
    """(thermal stamp, rgb stamp) of every fused image received, read from its pixels: the candidate pair whose
    fused image it is (``oracle``, a :class:`content.PairOracle`); its header must carry that pair's RGB stamp."""
    from content import pixels

    out = []
    for m in probe.messages("image"):
        pair = oracle.identify(pixels(m))
        assert stamp_of(m) == pair[1], f"image stamped {stamp_of(m)} shows the pair {pair}"
        out.append(pair)
    return out
