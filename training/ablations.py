"""The paper's ablations (Table 2: full, w/o MoLE, w/o MoGE, Att-Local; Fig. 7: experts E and top-K) on the
validation split, with one short CPU schedule shared by every variant.

    .venv/bin/python training/ablations.py --data-root ../shared/data --out runs/ablations [--only full wo_mole]

For each variant: ``moe-fusion train`` of ``training/ablation.yaml`` plus the variant's overrides (fusion head
from scratch; detectors frozen, from ``--detectors``, so every variant gets the same attention maps), then
``moe-fusion fuse`` and ``moe-fusion evaluate --mode paper --gate-log`` on the validation split
(``training/make_split_view.py``), then one markdown table (``OUT/table.md``) of the eight paper-mode metrics
and the MoGE routing. Finished steps are skipped, so the script resumes after a kill (training resumes from its
last checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from moe_fusion_core.config import merge  # noqa: E402
from moe_fusion_core.metrics.fusion import METRIC_NAMES  # noqa: E402

FOLDERS = ("roadscene", "msrs", "llvip_det", "tno", "m3fd", "msrs_more", "m3svd", "tno_more", "llvip_more")
VARIANTS: dict[str, tuple[str, dict]] = {  # name: (config suffix, model overrides)
    "full": ("", {}),
    "wo_mole": ("+wo_mole", {}),
    "wo_moge": ("+wo_moge", {}),
    "att_local": ("+att_local", {}),
    "E2_K2": ("", {"mole": {"num_experts": 2}, "moge": {"num_experts": 2}}),
    "E8_K2": ("", {"mole": {"num_experts": 8}, "moge": {"num_experts": 8}}),
    "E4_K1": ("", {"mole": {"top_k": 1}, "moge": {"top_k": 1}}),
    "E4_K3": ("", {"mole": {"top_k": 3}, "moge": {"top_k": 3}}),
}


def _run(cmd: list[str], log: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run(["nice", "-n", "10", *cmd], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--detectors", type=Path, default=REPO / "runs" / "v2_warm",
                    help="checkpoint whose (frozen) detectors give every variant its attention maps")
    ap.add_argument("--only", nargs="+", default=None, choices=list(VARIANTS))
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args(argv)
    py = sys.executable
    cli = [py, "-m", "moe_fusion_ros.cli"]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    view = out / "val_view"
    data = [str(args.data_root / f) for f in FOLDERS]
    if not (view / "meta.csv").is_file() and not args.table_only:
        _run([py, "training/make_split_view.py", "--split", "training/splits/shared_val.txt", "--data",
              str(args.data_root), "--out", str(view)], out / "view.log")
    base = yaml.safe_load((REPO / "training" / "ablation.yaml").read_text())
    rows = {}
    for name in args.only or list(VARIANTS):
        suffix, model = VARIANTS[name]
        d = out / name
        d.mkdir(exist_ok=True)
        ev = d / "eval.json"
        if not args.table_only and not ev.is_file():
            cfg = merge(dict(base, base=base["base"] + suffix), {"model": model})
            (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            run = d / "run"
            if not (run / "final" / "model.safetensors").is_file():
                init = d / "init"
                if not (init / "model.safetensors").is_file():  # fresh fusion head, the shared frozen detectors
                    _run([py, "training/warm_start.py", "--from", str(args.detectors), "--config",
                          str(d / "config.yaml"), "--out", str(init), "--fresh-fusion"], d / "log.txt")
                resume = ["--resume"] if (run / "latest").is_file() else []
                _run([*cli, "train", "--config", str(d / "config.yaml"), "--init", str(init), "--data", *data,
                      "--out", str(run), "--no-progress", *resume], d / "log.txt")
            _run([*cli, "fuse", "--ir", str(view / "ir"), "--vis", str(view / "vis"), "--out", str(d / "fused"),
                  "--checkpoint", str(run / "final"), "--device", "cpu", "--no-progress"], d / "log.txt")
            _run([*cli, "evaluate", "--fused", str(d / "fused"), "--ir", str(view / "ir"), "--vis", str(view / "vis"),
                  "--mode", "paper", "--gate-log", str(d / "fused" / "gates.jsonl"), "--json", str(ev),
                  "--no-progress"], d / "log.txt")
        if ev.is_file():
            rows[name] = json.loads(ev.read_text())
    lines = ["| variant | " + " | ".join(METRIC_NAMES) + " | MoGE share (all) | MoGE day/night TV |",
             "|---|" + "---:|" * (len(METRIC_NAMES) + 2)]
    for name, r in rows.items():
        mean = r["paper"]["mean"]
        g = r.get("gates", {})
        share = g.get("share", {}).get("all", {}).get("moge")
        tv = g.get("tv_day_night", {}).get("moge")
        share_txt = " / ".join(f"{x:.0%}" for x in share) if share else "—"
        tv_txt = f"{tv:.3f}" if tv is not None else "—"
        lines.append(f"| {name} | " + " | ".join(f"{mean[k]:.4f}" for k in METRIC_NAMES)
                     + f" | {share_txt} | {tv_txt} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
