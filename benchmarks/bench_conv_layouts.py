"""Single layers of the fusion head at full resolution under ONNX Runtime and PyTorch, in the layouts the deploy
graph can choose between: the paired encoders' grouped convolutions against one groups=1 convolution with zero
weight across modalities (``interleaved_conv``), and the two-expert log-sum-exp as a reduction against its
element-wise form (``combine_pair``).

    PYTHONPATH=. python benchmarks/bench_conv_layouts.py --threads 1 --reps 5

Prints a table: layer, layout, ONNX Runtime p50, PyTorch p50 (ms).
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from torch import nn

from moe_fusion_core.model.deploy import combine_pair


class _Conv(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _ReduceLSE(nn.Module):
    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(e, dim=1)


class _PairLSE(nn.Module):
    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return combine_pair(e, torch.ones(e.shape[0], 2), "logsumexp")


def _time(fn, reps: int) -> float:
    fn()
    fn()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return 1000 * float(np.median(t))


def main() -> None:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--size", default="640x480")
    args = p.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    torch.set_num_threads(args.threads)
    cases: list[tuple[str, str, nn.Module, torch.Tensor]] = []
    for c in (8, 16):
        for n, name in ((1, "dense1"), (2, "dense2"), (3, "dense3")):
            x = torch.rand(1, 2 * n * c, h, w)
            cases.append((f"encoders {c} wide, {name} ({2 * n * c}→{2 * c})", "grouped (2 groups)",
                          _Conv(2 * n * c, 2 * c, 2), x))
            cases.append((f"encoders {c} wide, {name} ({2 * n * c}→{2 * c})", "interleaved (1 group)",
                          _Conv(2 * n * c, 2 * c, 1), x))
    e = torch.randn(1, 2, 8, h, w)
    cases.append(("combination of 2 experts, 8 channels", "ReduceLogSumExp", _ReduceLSE(), e))
    cases.append(("combination of 2 experts, 8 channels", "element-wise (combine_pair)", _PairLSE(), e))
    print("| layer | layout | ONNX Runtime p50 ms | PyTorch p50 ms |\n|---|---|---:|---:|")
    for layer, layout, mod, x in cases:
        f = io.BytesIO()
        torch.onnx.export(mod.eval(), (x,), f, opset_version=17, dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(f.getvalue(), so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.numpy()}
        t_ort = _time(lambda s=sess, d=feed: s.run(None, d), args.reps)
        with torch.no_grad():
            t_torch = _time(lambda m=mod, t=x: m(t), args.reps)
        print(f"| {layer} | {layout} | {t_ort:.1f} | {t_torch:.1f} |")


if __name__ == "__main__":
    main()
