"""``moe-fusion replay BAG --out OUT_BAG``: run a rosbag2 through the node's fusion pipeline, without ROS.

Reads the thermal and RGB ``sensor_msgs/Image`` topics of a rosbag2 (sqlite3 or mcap) in arrival order, pairs
them with the optimal approximate-time synchroniser (:mod:`moe_fusion_ros.sync`), fuses every pair with the
same :class:`~moe_fusion_ros.pipeline.FusionPipeline` the node uses, and writes an output rosbag2 (same storage
as the input unless ``--storage``) with

- ``/fused/image`` (``sensor_msgs/msg/Image``, mono8; rgb8 with ``--color``),
- ``/fused/detections`` (``vision_msgs/msg/Detection2DArray``; the classes of ``--classes``, default all; ``id`` = a
  track ID kept while the object stays in view, empty with ``--no-tracking``),
- ``/fused/gates`` (``std_msgs/msg/Float32MultiArray``, with ``--gates``),
- ``/fused/camera_info`` (``sensor_msgs/msg/CameraInfo``): the RGB camera's, when the bag has it (by default the
  ``camera_info`` topic beside ``--rgb-topic``; ``--no-camera-info`` turns it off),

each stamped with the pair's RGB header (stamp and frame_id). The bag time of an output message is the bag
time of the input message whose arrival made its pair final (deterministic; what a live node could at best do).

``--report`` writes JSON: messages read per topic, the pairs (stamps, Δt), unpaired messages and why, frames that
failed and why, per-stage latency p50/p95, throughput, and the eight fusion metrics (mean over pairs).
``--html-report DIR`` writes a contact sheet per fused pair and ``DIR/index.html`` (:mod:`moe_fusion_core.report`).

Exit codes: 0 every message paired or legitimately left unpaired (no partner within slop / superseded by a closer
partner) and every pair fused; 1 some frames failed, messages were unreadable, messages were dropped for
an input error (out-of-order / duplicate stamp, queue overflow), or scoring a pair's metrics failed (the pair is
named on stderr and in the report's ``metrics_reason``); 2 unusable input (no such bag, unreadable or
truncated bag, missing topic, wrong message type) or an output bag that exists without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from moe_fusion_core.embedded import CHECKPOINT_HELP
from moe_fusion_core.preprocess import MODES, ThermalNormalization
from moe_fusion_core.report import PairMetrics
from moe_fusion_core.tracking import add_arguments as add_detection_arguments

from .health import percentile
from .pipeline import FusionPipeline
from .sync import RGB, THERMAL, PairSynchronizer

IMAGE_TYPE = "sensor_msgs/msg/Image"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
OUT_IMAGE, OUT_DETECTIONS, OUT_GATES = "/fused/image", "/fused/detections", "/fused/gates"
OUT_CAMERA_INFO = "/fused/camera_info"
EXPECTED_UNPAIRED = {"no_partner_within_slop", "superseded"}
# rosbag2 metadata version written per distribution. rosbags writes 8 or 9; version 9 stores the offered QoS
# profiles as a YAML list, which Humble's rosbag2 (it writes version 5, QoS as a string) does not parse.
BAG_VERSION = {"humble": 8, "jazzy": 9}


class InputError(Exception):
    """The input bag or topics cannot be used (exit code 2)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag", type=Path, help="input rosbag2 folder (sqlite3 or mcap)")
    p.add_argument("--out", required=True, type=Path, help="output rosbag2 folder (must not exist)")
    p.add_argument("--report", type=Path, default=None, help="write a JSON report here")
    p.add_argument("--thermal-topic", default="/thermal/image_raw")
    p.add_argument("--rgb-topic", default="/camera/image_raw")
    p.add_argument("--rgb-info-topic", default=None,
                   help="RGB CameraInfo topic (default: camera_info beside --rgb-topic, used when present)")
    p.add_argument("--no-camera-info", action="store_true", help="do not write /fused/camera_info")
    p.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP)
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--slop", type=float, default=0.02, help="max |stamp difference| of a pair, seconds")
    p.add_argument("--queue-size", type=int, default=5, help="undecided messages kept per topic")
    p.add_argument("--thermal-offset", type=float, default=0.0, help="seconds added to thermal stamps")
    p.add_argument("--thermal-norm", choices=MODES, default="percentile", help="16-bit thermal window")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="minimum detection score for every class (default: the model's own, per class)")
    add_detection_arguments(p)
    p.add_argument("--color", action="store_true", help="publish rgb8 colour fused images")
    p.add_argument("--gates", action="store_true", help="also write /fused/gates")
    p.add_argument("--storage", choices=["same", "mcap", "sqlite3"], default="same", help="output storage")
    p.add_argument("--distro", choices=sorted(BAG_VERSION), default="jazzy",
                   help="ROS 2 distribution that reads the output: its message definitions and rosbag2 metadata "
                        "version (humble: 8, QoS profiles as a YAML string; jazzy: 9)")
    p.add_argument("--metrics-mode", choices=["paper", "standard"], default="paper", help="fusion metrics mode")
    p.add_argument("--no-metrics", action="store_true", help="skip the fusion metrics")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--max-pairs", type=int, default=None, help="stop after fusing this many pairs")
    p.add_argument("--html-report", type=Path, default=None, metavar="DIR",
                   help="write a contact sheet per fused pair and DIR/index.html (latency, metrics)")


def _open_reader(bag: Path) -> Any:
    from rosbags.rosbag2 import Reader

    if not bag.exists():
        raise InputError(f"{bag}: no such bag")
    try:
        reader = Reader(bag)
        reader.open()
    except Exception as e:  # rosbags raises several types for unreadable/truncated bags
        raise InputError(f"{bag}: cannot read bag ({type(e).__name__}: {e})") from e
    return reader


def _connections(reader: Any, topic: str, msgtype: str = IMAGE_TYPE) -> list[Any]:
    """The bag's connections of ``topic``, which must exist and carry ``msgtype``."""
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        present = sorted({c.topic for c in reader.connections if c.msgtype == msgtype})
        raise InputError(f"topic {topic!r} not in bag; {msgtype.rsplit('/', 1)[-1]} topics present: "
                         f"{', '.join(present) or 'none'}")
    bad = {c.msgtype for c in conns if c.msgtype != msgtype}
    if bad:
        raise InputError(f"topic {topic!r} has type {', '.join(sorted(bad))}, expected {msgtype}")
    return conns


def rgb_info_topic(rgb_topic: str) -> str:
    """The image_transport sibling: ``/ns/image_raw`` → ``/ns/camera_info``."""
    ns = rgb_topic.rsplit("/", 1)[0]
    return f"{ns}/camera_info"


def _info_connections(reader: Any, args: argparse.Namespace) -> tuple[list[Any], str | None, str]:
    """(connections, topic, status) of the RGB CameraInfo; an explicitly named topic must exist."""
    if args.no_camera_info:
        return [], None, "disabled (--no-camera-info)"
    topic = args.rgb_info_topic or rgb_info_topic(args.rgb_topic)
    if not any(c.topic == topic for c in reader.connections):
        if args.rgb_info_topic is not None:
            raise InputError(f"--rgb-info-topic {topic!r} not in bag")
        return [], topic, "not in bag"
    return _connections(reader, topic, CAMERA_INFO_TYPE), topic, "used"


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise InputError(f"{out} exists; pass --overwrite to replace it")
        if out.is_dir() and (not any(out.iterdir()) or (out / "metadata.yaml").is_file()):
            shutil.rmtree(out)
        else:
            raise InputError(f"{out} exists and is not a rosbag2 folder; refusing to delete it")
    out.parent.mkdir(parents=True, exist_ok=True)


def _storage_plugin(reader: Any, choice: str) -> Any:
    from rosbags.rosbag2 import StoragePlugin

    if choice == "same":
        files = [Path(f) for f in getattr(reader, "paths", [])] or list(Path(reader.path).iterdir())
        choice = "mcap" if any(f.suffix == ".mcap" for f in files) else "sqlite3"
    return StoragePlugin.MCAP if choice == "mcap" else StoragePlugin.SQLITE3


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except InputError as e:
        print(f"moe-fusion replay: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from rosbags.rosbag2 import Writer

    from moe_fusion_core.engine import FusionEngine

    from .msg_defs import build, typestore_for

    if args.max_pairs is not None and args.max_pairs < 1:
        raise InputError(f"--max-pairs must be >= 1, got {args.max_pairs}")
    if args.thermal_topic == args.rgb_topic:
        raise InputError("--thermal-topic and --rgb-topic must differ")
    try:  # bad sync settings fail before anything is read or written
        PairSynchronizer(args.slop, args.queue_size, args.thermal_offset)
    except ValueError as e:
        raise InputError(str(e)) from e
    html_report = None
    if args.html_report is not None:  # a bad report folder fails before anything is read or written
        from moe_fusion_core.report import HtmlReport

        try:
            html_report = HtmlReport(args.html_report, f"moe-fusion replay: {args.bag}")
        except ValueError as e:
            raise InputError(str(e)) from e
    reader = _open_reader(args.bag)
    try:
        th_conns = _connections(reader, args.thermal_topic)
        rgb_conns = _connections(reader, args.rgb_topic)
        info_conns, info_topic, info_status = _info_connections(reader, args)
        _prepare_out(args.out, args.overwrite)
        engine = FusionEngine(args.checkpoint, device=args.device, precision=args.precision,
                              score_threshold=args.score_threshold)
        pipe = FusionPipeline(engine, slop=args.slop, queue_size=args.queue_size,
                              thermal_offset=args.thermal_offset, color=args.color,
                              normalization=ThermalNormalization(mode=args.thermal_norm), classes=args.classes,
                              tracking=not args.no_tracking)
        ts = typestore_for(args.distro)
        in_ts = typestore_for("jazzy")  # sensor_msgs/Image is identical in every ROS 2 distro
        stream_of = {c.id: THERMAL for c in th_conns} | {c.id: RGB for c in rgb_conns}
        info_ids = {c.id for c in info_conns}
        total = sum(c.msgcount for c in th_conns + rgb_conns + info_conns)
        counts = {args.thermal_topic: 0, args.rgb_topic: 0} | ({info_topic: 0} if info_conns else {})
        info_written = 0
        read_errors: list[dict[str, Any]] = []
        pair_log: list[dict[str, Any]] = []
        metrics = PairMetrics(args.metrics_mode, enabled=not args.no_metrics)
        written = 0
        stopped_early = False
        t_start = time.perf_counter()
        writer = Writer(args.out, version=BAG_VERSION[args.distro],
                        storage_plugin=_storage_plugin(reader, args.storage))
        with writer:
            c_img = writer.add_connection(OUT_IMAGE, IMAGE_TYPE, typestore=ts)
            c_det = writer.add_connection(OUT_DETECTIONS, "vision_msgs/msg/Detection2DArray", typestore=ts)
            c_gates = writer.add_connection(OUT_GATES, "std_msgs/msg/Float32MultiArray", typestore=ts) \
                if args.gates else None
            c_info = writer.add_connection(OUT_CAMERA_INFO, CAMERA_INFO_TYPE, typestore=ts) if info_conns else None

            def put(conn: Any, data: dict[str, Any], log_time: int) -> None:
                writer.write(conn, log_time, ts.serialize_cdr(build(ts, conn.msgtype, data), conn.msgtype))

            def handle(pairs: list, log_time: int) -> bool:
                nonlocal written, info_written
                for p in pairs:
                    out = pipe.process(p.thermal, p.rgb)
                    entry = {"thermal_stamp_ns": p.thermal_stamp_ns, "rgb_stamp_ns": p.rgb_stamp_ns,
                             "dt_ms": round(p.dt_ns / 1e6, 3), "fused": out is not None}
                    pair_log.append(entry)
                    if out is None:
                        continue
                    put(c_img, out.image, log_time)
                    put(c_det, out.detections, log_time)
                    if c_gates is not None:
                        put(c_gates, out.gates, log_time)
                    if c_info is not None and out.camera_info is not None:
                        put(c_info, out.camera_info, log_time)
                        info_written += 1
                    written += 1
                    ir, vis, res = pipe.last
                    rgb_s = _seconds(p.rgb_stamp_ns)
                    scores = metrics.add(res.fused, ir, vis, f"rgb {rgb_s} + thermal {_seconds(p.thermal_stamp_ns)}")
                    if html_report is not None:
                        html_report.add_pair(
                            f"{written:03d}_rgb_{rgb_s}", ir, vis,
                            res.color if res.color is not None else res.fused, res.detections, res.gates,
                            tag=f"thermal Δt {entry['dt_ms']:+.1f} ms",
                            timings_ms={"fuse": res.timings_ms.get("total", float("nan"))},
                            metrics=scores)
                    if args.max_pairs is not None and written >= args.max_pairs:
                        return False
                return True

            bar = None
            if not args.no_progress:
                from tqdm import tqdm

                bar = tqdm(total=total, desc="replay", unit="msg", file=sys.stderr)
            last_time = 0
            try:
                for conn, log_time, raw in reader.messages(connections=th_conns + rgb_conns + info_conns):
                    last_time = log_time
                    counts[conn.topic] += 1
                    if bar is not None:
                        bar.update(1)
                    try:
                        msg = in_ts.deserialize_cdr(raw, conn.msgtype)
                    except Exception as e:  # a corrupt message is counted and skipped
                        read_errors.append({"topic": conn.topic, "log_time_ns": log_time,
                                            "reason": f"undecodable message: {type(e).__name__}: {e}"})
                        continue
                    if conn.id in info_ids:
                        pipe.set_camera_info(msg)
                        continue
                    if not handle(pipe.add(stream_of[conn.id], msg), log_time):
                        stopped_early = True
                        break
            except InputError:
                raise
            except Exception as e:  # a bag that breaks mid-way: keep what was read
                read_errors.append({"topic": None, "log_time_ns": last_time,
                                    "reason": f"bag read failed: {type(e).__name__}: {e}"})
            if not stopped_early:
                handle(pipe.flush(), last_time)
            if bar is not None:
                bar.close()
        elapsed = time.perf_counter() - t_start
    finally:
        reader.close()

    metric_values, metric_reason = metrics.result()
    unpaired_by_reason = dict(pipe.unpaired_counts)
    input_errors = sum(v for k, v in unpaired_by_reason.items() if k not in EXPECTED_UNPAIRED)
    fused_ms = pipe.timings.get("total", [])
    report = {
        "bag": str(args.bag),
        "out": str(args.out),
        "topics": {"thermal": args.thermal_topic, "rgb": args.rgb_topic},
        "messages_read": counts,
        "pairs": len(pair_log),
        "fused": written,
        "stopped_early": stopped_early,
        "pair_list": pair_log,
        "unpaired": {"count": sum(unpaired_by_reason.values()), "by_reason": unpaired_by_reason,
                     "messages": [{"stream": u.stream, "stamp_ns": u.stamp_ns, "reason": u.reason}
                                  for u in pipe.unpaired]},
        "failed": [{"thermal_stamp_ns": f.thermal_stamp_ns, "rgb_stamp_ns": f.rgb_stamp_ns, "reason": f.reason}
                   for f in pipe.failures],
        "read_errors": read_errors,
        "resized_thermal": pipe.resized,
        "camera_info": {"topic": info_topic, "status": info_status, "written": info_written,
                        "not_written": dict(pipe.camera_info_errors)},
        "latency_ms": pipe.latency_summary(),
        "throughput": {"pairs_per_s": written / elapsed if elapsed > 0 else None,
                       "pipeline_pairs_per_s": 1e3 / percentile(fused_ms, 50) if fused_ms else None,
                       "wall_s": elapsed},
        "sync": {"slop_s": args.slop, "queue_size": args.queue_size, "thermal_offset_s": args.thermal_offset,
                 "mean_abs_dt_ms": pipe.sync.stats.mean_abs_dt_ms if pipe.sync.stats.pairs else None,
                 "max_abs_dt_ms": pipe.sync.stats.abs_dt_max_ns / 1e6},
        "metrics": metric_values,
        "metrics_reason": metric_reason,
        "checkpoint": str(engine.checkpoint),
        "device": str(engine.device),
    }
    if html_report is not None:
        report["html_report"] = str(html_report.write(
            latency=report["latency_ms"], metrics=metric_values, metrics_note=metric_reason,
            summary={"bag": args.bag, "messages read": sum(counts.values()), "pairs": len(pair_log),
                     "fused": written, "unpaired": report["unpaired"]["count"], "failed": len(pipe.failures),
                     "checkpoint": report["checkpoint"], "device": report["device"]}))
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1))
    problems = len(pipe.failures) + len(read_errors) + input_errors + (metrics.failed is not None)
    print(f"replayed {sum(counts.values())} messages: {len(pair_log)} pairs, {written} fused into {args.out}; "
          f"{report['unpaired']['count']} unpaired {unpaired_by_reason or ''}; {len(pipe.failures)} failed",
          file=sys.stderr)
    if html_report is not None:
        print(f"report: {report['html_report']}", file=sys.stderr)
    for f in pipe.failures[:10]:
        print(f"  failed pair rgb {f.rgb_stamp_ns}: {f.reason}", file=sys.stderr)
    for e in read_errors[:10]:
        print(f"  read error: {e['reason']}", file=sys.stderr)
    if metrics.failed is not None:
        print(f"  fusion metrics: {metrics.failed}", file=sys.stderr)
    for reason, n in pipe.camera_info_errors.items():
        print(f"  /fused/camera_info not written for {n} frame(s): {reason}", file=sys.stderr)
    if written == 0 and sum(counts.values()) > 0 and not pair_log:
        print("  no pair was made: check --slop / --thermal-offset and the stamps of both topics", file=sys.stderr)
    return 1 if problems else 0


def _seconds(stamp_ns: int) -> str:
    """A stamp as ``sec.nanosec`` (9 digits), the way pairs are named in the report and on stderr."""
    sec, nsec = divmod(stamp_ns, 1_000_000_000)
    return f"{sec}.{nsec:09d}"
