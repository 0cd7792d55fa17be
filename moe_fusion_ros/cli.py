"""``moe-fusion``: the project's command line. Each sub-command lives in its own module.

A sub-command module provides ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code). Modules are
imported only when their command runs, so ``moe-fusion --help`` stays fast and no command pulls in another's
dependencies.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "fuse": ("moe_fusion_core.fuse", "fuse folders of infrared + visible images (pairs by file stem)"),
    "evaluate": ("moe_fusion_core.evaluate", "score fused images with the paper's eight fusion metrics"),
    "detection-protocol": (
        "moe_fusion_core.detection_protocol",
        "paper Table 3: train a detector on IR + visible, evaluate on IR, visible and fused images",
    ),
    "train": ("moe_fusion_core.train", "train a MoE-Fusion model from a config"),
    "replay": ("moe_fusion_ros.replay", "replay a rosbag2 through the fusion pipeline (no ROS needed)"),
    "bench": ("moe_fusion_core.bench", "latency / throughput benchmark per stage"),
    "info": ("moe_fusion_core.info", "parameter counts per component and the config"),
    "register": ("moe_fusion_core.registration",
                 "thermal-to-RGB homography from clicked point pairs or the images (--auto), as a ROS parameter "
                 "file"),
    "export": ("moe_fusion_core.checkpoint",
               "re-save a checkpoint for deployment (fp16 safetensors + config), or --onnx OUT.onnx"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="moe-fusion", description="MoE-Fusion thermal + RGB image fusion")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if argv[:1] == [name]:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (FileNotFoundError, ValueError) as e:  # user errors: one clear line (MOE_FUSION_DEBUG=1: traceback)
        if os.environ.get("MOE_FUSION_DEBUG"):
            raise
        print(f"moe-fusion {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
