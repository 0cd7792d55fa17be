"""Static-shape inference graph of a trained :class:`~moe_fusion_core.model.MoEFusion` (the deploy path).

Same weights, same maths as the eager model in eval mode, rearranged so that a forward pass has no
data-dependent control flow and no host synchronisation (CUDA-graph capturable, ONNX/TensorRT exportable):

- **mixtures** (MoLE, MoGE): the gates are the model's own gate modules (top-K on the device, fp32); the
  experts run as grouped convolutions whose weights are either *gathered* for the K selected experts of each
  sample (``moe="gather"``: the FLOPs of sparse dispatch, static shapes) or all N experts with zero weight for
  the unselected ones (``moe="dense"``: N/K times the expert FLOPs, no per-sample weights). The combination is
  the eager model's (fp32); in an exported graph, with two selected experts, its log-sum-exp is written
  element-wise (:func:`combine_pair`), which ONNX Runtime runs ~3× faster than its ReduceLogSumExp.
- **two of everything, one call**: the two detector backbones + FPNs, the two attention heads and the two
  encoders each run as one module with grouped convolutions (channels ``[visible; infrared]``); batch-norm
  folded into the preceding convolution.
- **fused-only** work is cut to what the fused image depends on: the FPN output, mixing and attention of the
  attention level only (the eager model computes every level for the detection heads).

The detection heads are torchvision's RPN + RoI heads, called on the same features as the eager model (their
proposal filtering and NMS have data-dependent sizes; see docs/benchmarks.md).
"""

from __future__ import annotations

import copy
import itertools
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.misc import FrozenBatchNorm2d

from .detector import fpn_level
from .experts import combine
from .gate import gate_input
from .moe_fusion import MoEFusion

MOE_MODES = ("gather", "dense")


# ---------------------------------------------------------------- two modules → one grouped module
def _pair_conv(a: nn.Conv2d, b: nn.Conv2d) -> nn.Conv2d:
    c = nn.Conv2d(2 * a.in_channels, 2 * a.out_channels, a.kernel_size, a.stride, a.padding, a.dilation,
                  2 * a.groups, bias=a.bias is not None, padding_mode=a.padding_mode)
    with torch.no_grad():
        c.weight.copy_(torch.cat([a.weight, b.weight]))
        if a.bias is not None:
            c.bias.copy_(torch.cat([a.bias, b.bias]))
    return c.to(a.weight.device)


def interleaved_conv(paired: nn.Conv2d, pieces: int) -> nn.Conv2d:
    """A groups=2 conv of :func:`pair_modules` (input ``[v0 … v(n−1); i0 … i(n−1)]``, n = ``pieces`` equal
    pieces per modality) as one groups=1 conv reading ``[v0, i0, v1, i1, …]``: the same outputs, zero weight
    across modalities. Twice the multiply-adds, but ONNX Runtime's blocked kernels run it faster than the grouped
    one when each group has fewer than 16 channels (docs/benchmarks.md, "Graph layout of the fast model")."""
    if paired.groups != 2:
        raise ValueError(f"interleaved_conv: expected a paired conv (groups=2), got groups={paired.groups}")
    half_out = paired.out_channels // 2
    w_in = paired.in_channels // (2 * pieces)
    c = nn.Conv2d(paired.in_channels, paired.out_channels, paired.kernel_size, paired.stride, paired.padding,
                  paired.dilation, 1, bias=paired.bias is not None, padding_mode=paired.padding_mode)
    with torch.no_grad():
        c.weight.zero_()
        for m in range(2):  # modality: output rows m·half_out…, its own input pieces
            rows = slice(m * half_out, (m + 1) * half_out)
            for k in range(pieces):
                src = paired.weight[rows, k * w_in:(k + 1) * w_in]
                c.weight[rows, (2 * k + m) * w_in:(2 * k + m + 1) * w_in] = src
        if paired.bias is not None:
            c.bias.copy_(paired.bias)
    return c.to(paired.weight.device)


def _pair_bn(a: nn.Module, b: nn.Module) -> nn.Module:
    if isinstance(a, nn.BatchNorm2d):
        n = nn.BatchNorm2d(2 * a.num_features, a.eps, a.momentum, a.affine, a.track_running_stats)
    else:
        n = FrozenBatchNorm2d(2 * a.weight.numel(), a.eps)
    n.eval()
    with torch.no_grad():
        for name, t in list(a.named_parameters(recurse=False)) + list(a.named_buffers(recurse=False)):
            if t.dim() == 0:  # num_batches_tracked
                continue
            getattr(n, name).copy_(torch.cat([t, getattr(b, name)]))
    return n.to(a.weight.device)


def pair_modules(a: nn.Module, b: nn.Module) -> nn.Module:
    """One module computing ``a`` and ``b`` side by side: input and output channels ``[a's; b's]``.

    ``a`` and ``b`` must have the same structure and only channel-wise operations besides convolutions and
    batch-norms (true of ResNet, MobileNetV3, FPN and the attention heads). Inference only.
    """
    out = copy.deepcopy(a)
    mods_b = dict(b.named_modules())
    for name, m in list(out.named_modules()):
        if not name:
            continue
        other = mods_b[name]
        if isinstance(m, nn.Conv2d):
            new: nn.Module = _pair_conv(m, other)
        elif isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            new = _pair_bn(m, other)
        else:
            if any(True for _ in m.parameters(recurse=False)) or any(
                    t.dim() > 0 for t in m.buffers(recurse=False)):
                raise TypeError(f"pair_modules: cannot pair {name} ({type(m).__name__})")
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, leaf, new)
    return out.eval()


def _bn_scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(bn, FrozenBatchNorm2d):
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    else:
        scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) * (bn.running_var + bn.eps).rsqrt()
    bias = bn.bias if getattr(bn, "affine", True) else torch.zeros_like(scale)
    return scale, bias - bn.running_mean * scale


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode batch-norm that directly follows a convolution in an ``nn.Sequential`` into it."""
    for m in module.modules():
        if not isinstance(m, nn.Sequential):
            continue
        names = list(m._modules)
        for first, second in itertools.pairwise(names):
            conv, bn = m._modules[first], m._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                scale, shift = _bn_scale_shift(bn)
                with torch.no_grad():
                    w = conv.weight * scale.view(-1, 1, 1, 1)
                    b = shift + (conv.bias * scale if conv.bias is not None else 0)
                    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                    conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
                    new.weight.copy_(w)
                    new.bias.copy_(b)
                m._modules[first] = new.to(conv.weight.device)
                m._modules[second] = nn.Identity()
    return module


# ---------------------------------------------------------------- mixtures without data-dependent control flow
class StackedExperts(nn.Module):
    """The N experts of one mixture as per-layer weight stacks ((N·Cout)×Cin×k×k), ReLU between layers.

    Each expert must be a ``body`` of ``Conv2d, ReLU, …, Conv2d`` (the local and global experts are).
    """

    def __init__(self, experts: nn.ModuleList) -> None:
        super().__init__()
        convs: list[list[nn.Conv2d]] = []
        for e in experts:
            layers = list(e.body)
            ok = all(isinstance(m, nn.Conv2d) if i % 2 == 0 else isinstance(m, nn.ReLU) for i, m in enumerate(layers))
            if not ok or len(layers) % 2 == 0:
                raise TypeError(f"StackedExperts: expert body must alternate Conv2d and ReLU, got {e.body}")
            convs.append(layers[::2])
        self.num_experts = len(convs)
        self.num_layers = len(convs[0])
        self.padding = [c.padding for c in convs[0]]
        self.kernel_shapes = [tuple(c.weight.shape[1:]) for c in convs[0]]  # Cin, kh, kw
        self.out_channels = [c.weight.shape[0] for c in convs[0]]
        for i in range(self.num_layers):  # 4-D, so that .to(memory_format=torch.channels_last) applies
            self.register_buffer(f"w{i}", torch.cat([c[i].weight.detach() for c in convs]).clone())
            self.register_buffer(f"b{i}", torch.cat([c[i].bias.detach() for c in convs]).clone())

    def weight(self, i: int) -> torch.Tensor:
        return getattr(self, f"w{i}")

    def bias(self, i: int) -> torch.Tensor:
        return getattr(self, f"b{i}")

    def gathered(self, x: torch.Tensor, idx: torch.Tensor, shared: bool) -> torch.Tensor:
        """Selected experts per sample: ``idx`` B×S expert indices; ``x`` B×C×H×W (``shared``: every selected
        expert sees it) or B×S×C×H×W (slot s's input). Returns B×S×Cout×H×W."""
        bsz, slots = idx.shape
        h, w = x.shape[-2:]
        flat = idx.reshape(-1)
        y = x.reshape(1, -1, h, w)  # the batch folded into channels: one grouped conv per layer
        for i in range(self.num_layers):
            n, ks, cout = self.num_experts, self.kernel_shapes[i], self.out_channels[i]
            rows = -1
            if torch.jit.is_tracing():  # the TorchScript ONNX exporter needs the kernel's shape as constants
                rows = int(bsz) * int(slots) * cout
            # the selected experts' kernels, sample-major: (B·S·Cout)×Cin×kh×kw
            wt = torch.index_select(self.weight(i).view(n, cout, *ks), 0, flat).reshape(rows, *ks)
            b = torch.index_select(self.bias(i).view(n, cout), 0, flat).reshape(-1)
            groups = bsz if (i == 0 and shared) else bsz * slots
            if wt.dtype != y.dtype:  # kernels follow the activations (e.g. a half-precision model without autocast)
                wt, b = wt.to(y.dtype), b.to(y.dtype)
            y = F.conv2d(y, wt, b, padding=self.padding[i], groups=groups)
            if i < self.num_layers - 1:
                y = torch.relu(y)
        return y.reshape(bsz, slots, -1, h, w)

    def dense(self, x: torch.Tensor, input_groups: int = 1) -> torch.Tensor:
        """All N experts: ``x`` B×(input_groups·C)×H×W, expert i reading input group i·input_groups//N.
        Returns B×N×Cout×H×W."""
        n = self.num_experts
        y = x
        for i in range(self.num_layers):
            groups = input_groups if i == 0 else n
            y = F.conv2d(y, self.weight(i).to(y.dtype), self.bias(i).to(y.dtype), padding=self.padding[i],
                         groups=groups)
            if i < self.num_layers - 1:
                y = torch.relu(y)
        return y.reshape(y.shape[0], n, -1, *y.shape[-2:])


def modality_padded(experts: StackedExperts, num_visible: int, channels: int) -> StackedExperts:
    """A copy of MoLE's ``experts`` whose first layer reads both modalities ``[visible; infrared]`` (2·C channels),
    with zero weight on the modality an expert does not take (experts ``< num_visible`` are visible ones). Gathered
    with ``shared=True`` it gives the modality-routed outputs without materialising a per-slot input (one less
    B×K×C×H×W copy in an exported graph); twice the multiply-adds of the first layer."""
    out = copy.deepcopy(experts)
    w0 = experts.weight(0)
    n = experts.num_experts
    hidden, c, kh, kw = w0.shape[0] // n, w0.shape[1], w0.shape[2], w0.shape[3]
    if c != channels:
        raise ValueError(f"modality_padded: first layer reads {c} channels, expected {channels}")
    padded = w0.new_zeros((n, hidden, 2 * c, kh, kw))
    for i in range(n):
        m = 0 if i < num_visible else 1
        padded[i, :, m * c:(m + 1) * c] = w0.view(n, hidden, c, kh, kw)[i]
    out.w0 = padded.reshape(n * hidden, 2 * c, kh, kw).contiguous()
    out.kernel_shapes[0] = (2 * c, kh, kw)
    return out


def combine_pair(expert_outputs: torch.Tensor, top_k_gates: torch.Tensor, mode: str) -> torch.Tensor:
    """:func:`~moe_fusion_core.model.experts.combine`, the same maths; for K = 2 and ``logsumexp`` written as
    max(a, b) + log1p(exp(min(a, b) − max(a, b))) of a, b = log g + E (element-wise, no reduction)."""
    if mode != "logsumexp" or expert_outputs.shape[1] != 2:
        return combine(expert_outputs, top_k_gates, mode)
    e = expert_outputs.float()
    g = top_k_gates.float().view(*top_k_gates.shape, *([1] * (e.dim() - 2)))
    x = torch.log(g.clamp_min(2.2e-16)) + e
    a, b = x[:, 0], x[:, 1]
    hi = torch.maximum(a, b)
    return hi + torch.log1p(torch.exp(torch.minimum(a, b) - hi))


def combine_all(outputs: torch.Tensor, gates: torch.Tensor, mode: str) -> torch.Tensor:
    """:func:`combine` over all N experts with the full B×N gate vector (zero = unselected, contributes nothing)."""
    e = outputs.float()
    g = gates.float().view(*gates.shape, *([1] * (e.dim() - 2)))
    if mode == "logsumexp":
        log_g = torch.where(g > 0, torch.log(g.clamp_min(2.2e-16)), torch.full_like(g, float("-inf")))
        return torch.logsumexp(log_g + e, dim=1)
    if mode == "linear":
        return (g * e).sum(1)
    raise ValueError(f"unknown combine mode {mode!r} (logsumexp | linear)")


def area_pool_matrix(n: int | torch.Tensor, g: int, device: torch.device) -> torch.Tensor:
    """g×n averaging matrix of ``adaptive_avg_pool`` along one axis: row i averages [⌊i·n/g⌋, ⌈(i+1)·n/g⌉)."""
    y = torch.arange(n, device=device)
    i = torch.arange(g, device=device)
    start = torch.div(i * n, g, rounding_mode="floor")
    end = torch.div((i + 1) * n + g - 1, g, rounding_mode="floor")
    m = ((y[None] >= start[:, None]) & (y[None] < end[:, None])).float()
    return m / (end - start)[:, None].float()


def gate_features(x: torch.Tensor, grid: tuple[int, int], pool: str, export: str = "") -> torch.Tensor:
    """:func:`~moe_fusion_core.model.gate.gate_input` for inference; for a traced ONNX graph (``export``
    ``"static"`` or ``"dynamic"``) the same area pooling as a fixed-window average pool (static size divisible by
    the grid) or as two averaging matrices (any size), which every ONNX runtime runs."""
    if not export or pool != "area":
        return gate_input(x, grid, pool)
    x = x.float()
    h, w = (int(v) for v in x.shape[-2:])  # constants in a static graph
    if export == "static" and h % grid[0] == 0 and w % grid[1] == 0:
        return F.avg_pool2d(x, (h // grid[0], w // grid[1])).flatten(1)
    mh = area_pool_matrix(x.shape[-2], grid[0], x.device)
    mw = area_pool_matrix(x.shape[-1], grid[1], x.device)
    return torch.matmul(torch.matmul(mh, x), mw.t()).flatten(1)


# ---------------------------------------------------------------- the deploy graph
@dataclass
class DeployOutput:
    """Fused image (raw, B×1×H×W), gate vectors (B×N, fp32) and, when asked for, both detectors' features."""

    fused: torch.Tensor
    gates: dict[str, torch.Tensor]
    features: tuple[torch.Tensor, ...] | None = None  # per FPN level, B×2C×h×w ([visible; infrared])


class DeployFusion(nn.Module):
    """Inference-only twin of a :class:`MoEFusion` (see the module docstring). Build it from a trained model in
    eval mode; it copies the weights it needs, the source model is not changed."""

    def __init__(self, model: MoEFusion, moe: str = "gather") -> None:
        super().__init__()
        if moe not in MOE_MODES:
            raise ValueError(f"moe must be one of {', '.join(MOE_MODES)}, got {moe!r}")
        self.moe = moe
        self.export = ""  # "static" | "dynamic" while the ONNX exporter traces this module
        self.cfg = model.cfg
        fh = model.fusion
        self.local_mode = fh.local_mode
        self.combine_mode = model.cfg.combine
        self.att = fh.att
        self.encoders = pair_modules(fh.encoder_vis, fh.encoder_ir)
        self.channels = fh.encoder_vis.conv1.out_channels
        # Encoders narrower than 16 channels: an exported graph runs them as interleaved groups=1 convs
        # (interleaved_conv) and keeps their outputs in the order [a_v, a_i, b_v, b_i, …], so that no activation
        # is sliced apart and re-concatenated; x_f's consumers (MoGE's gate and first expert layer) read that
        # order through a channel permutation of their weights (set up below). Only where those consumers are
        # MoLE's and MoGE's (the method's layout).
        self.flat_encoders: nn.ModuleDict | None = None
        if self.channels < 16 and self.local_mode == "mole" and hasattr(fh, "moge"):
            e = self.encoders
            self.flat_encoders = nn.ModuleDict({
                "conv1": interleaved_conv(e.conv1, 1), "dense1": interleaved_conv(e.dense1, 1),
                "dense2": interleaved_conv(e.dense2, 2), "dense3": interleaved_conv(e.dense3, 3)})
        if self.local_mode == "mole":
            self.mole_fg, self.mole_bg = fh.mole_fg, fh.mole_bg  # gates used as they are
            self.local_fg = StackedExperts(fh.mole_fg.experts)
            self.local_bg = StackedExperts(fh.mole_bg.experts)
            self.num_visible = fh.mole_fg.num_visible
            # exported graphs: the first layer reads [visible; infrared] with zeros for the other modality
            self.padded_fg = modality_padded(self.local_fg, self.num_visible, self.channels)
            self.padded_bg = modality_padded(self.local_bg, self.num_visible, self.channels)
        elif self.local_mode == "att_local":
            self.att_local_fg, self.att_local_bg = fh.local_fg, fh.local_bg
        if hasattr(fh, "moge"):
            self.moge = fh.moge
            self.global_experts = StackedExperts(fh.moge.experts)
            if self.flat_encoders is not None:
                # x_f in the flat order [a_v, a_i, b_v, b_i, c_v, c_i, d_v, d_i, fg, bg] (blocks of C channels) →
                # the eager order [a_v, b_v, c_v, d_v, a_i, b_i, c_i, d_i, fg, bg]
                c = self.channels
                blocks = [m * 4 + k for k in range(4) for m in range(2)] + [8, 9]
                perm = torch.cat([torch.arange(b * c, (b + 1) * c) for b in blocks])
                self.register_buffer("xf_to_eager", torch.argsort(perm), persistent=False)
                self.flat_global_experts = copy.deepcopy(self.global_experts)
                w0 = self.global_experts.weight(0)
                self.flat_global_experts.w0 = w0[:, perm.to(w0.device)].contiguous()
        else:
            self.decoder = fh.decoder
        det = model.detectors
        self.has_detectors = det is not None
        if det is not None:
            self.detectors = det  # normalisation buffers and the detection heads, used as they are
            self.backbones = fold_batchnorm(pair_modules(det.backbone_vis, det.backbone_ir))
            self.mixing = det.mixing
            self.attention = fold_batchnorm(_attention_pair(det.attention_vis, det.attention_ir))
        self.eval()

    # -------------------------------------------------------------- pieces
    def _features(self, vis: torch.Tensor, ir: torch.Tensor, levels: str
                  ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Grouped backbones → (attention map pair at the attention level B×2×h×w, all levels' re-weighted
        features or None)."""
        x = torch.cat([self.detectors.normalize(vis), self.detectors.normalize(ir)], 1)
        body = self.backbones.body(x)
        fpn = self.backbones.fpn
        c = self.cfg.detector.fpn_channels
        if levels == "att":
            p = fpn_level(fpn, body, self.cfg.att_level)
            return self._mix_attend(p, c, reweight=False)[1], None
        levels_out = list(fpn(body).values())
        feats_out, att = [], None
        for i, p in enumerate(levels_out):
            f, a = self._mix_attend(p, c)
            feats_out.append(f)
            if i == self.cfg.att_level:
                att = a
        return att, feats_out

    def _mix_attend(self, p: torch.Tensor, c: int, reweight: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixing conv and both attention heads on a grouped level; ``reweight``: features·(1 + a) too."""
        m = torch.relu(self.mixing.conv(p))
        f = torch.cat([p[:, :c] + m, p[:, c:] + m], 1)
        a = self.attention(f)  # B×2×h×w: [visible, infrared]
        if reweight:
            f = f * (1 + torch.repeat_interleave(a, c, dim=1))
        return f, a

    def _encode_flat(self, vis: torch.Tensor, ir: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoders in the flat order: (x_enc as [d_v; d_i], x_dense of both as [a_v, a_i, b_v, … d_i] in two
        pieces, [a…c] and d, that x_f concatenates once)."""
        e = self.flat_encoders
        assert e is not None
        a = torch.relu(e["conv1"](torch.cat([vis, ir], 1)))
        b = e["dense1"](a)
        ab = torch.cat([a, b], 1)
        cc = e["dense2"](ab)
        abc = torch.cat([ab, cc], 1)
        d = e["dense3"](abc)
        return d, [abc, d]

    def _encode(self, vis: torch.Tensor, ir: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The paired encoders: (x_enc as [d_v; d_i], x_dense of the visible one, x_dense of the infrared one)."""
        e, c = self.encoders, self.channels
        a = torch.relu(e.conv1(torch.cat([vis, ir], 1)))
        b = e.dense1(a)
        av, ai, bv, bi = a[:, :c], a[:, c:], b[:, :c], b[:, c:]
        cc = e.dense2(torch.cat([av, bv, ai, bi], 1))
        cv, ci = cc[:, :c], cc[:, c:]
        d = e.dense3(torch.cat([av, bv, cv, ai, bi, ci], 1))
        dv, di = d[:, :c], d[:, c:]
        return d, torch.cat([av, bv, cv, dv], 1), torch.cat([ai, bi, ci, di], 1)

    def _combine(self, outputs: torch.Tensor, top_k_gates: torch.Tensor) -> torch.Tensor:
        """The selected experts' combination; in a traced ONNX graph the element-wise two-expert form."""
        return (combine_pair if self.export else combine)(outputs, top_k_gates, self.combine_mode)

    def _mole(self, mole: nn.Module, experts: StackedExperts, padded: StackedExperts, f: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``f``: the masked encoder features of both modalities, B×2C×H×W ``[visible; infrared]``; ``padded``:
        ``experts`` reading both (:func:`modality_padded`), used in exported graphs."""
        g = mole.gate(gate_features(f, mole.cfg.grid, mole.cfg.pool, self.export))
        fv, fi = f[:, :self.channels], f[:, self.channels:]
        if self.moe == "dense":
            if 2 * self.num_visible != experts.num_experts:
                raise ValueError("dense MoLE needs as many visible as infrared experts")
            y = combine_all(experts.dense(torch.cat([fv, fi], 1), input_groups=2), g.gates, self.combine_mode)
        elif self.export:
            y = self._combine(padded.gathered(f, g.top_k_indices, shared=True), g.top_k_gates)
        else:
            idx = g.top_k_indices
            is_vis = (idx < self.num_visible).view(*idx.shape, 1, 1, 1)
            x = torch.where(is_vis, fv.unsqueeze(1), fi.unsqueeze(1))  # B×K×C×H×W, modality routing
            y = self._combine(experts.gathered(x, idx, shared=False), g.top_k_gates)
        return y, g.gates

    def _moge(self, x_f: torch.Tensor, flat: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``flat``: ``x_f`` in the flat encoders' channel order (see ``__init__``)."""
        experts = self.flat_global_experts if flat else self.global_experts
        feats = gate_features(x_f, self.moge.cfg.grid, self.moge.cfg.pool, self.export)
        if flat:  # pooled channels back to the order the gate was trained on
            feats = feats.view(x_f.shape[0], x_f.shape[1], -1).index_select(1, self.xf_to_eager).flatten(1)
        g = self.moge.gate(feats)
        if self.moe == "dense":
            y = combine_all(experts.dense(x_f), g.gates, self.combine_mode)
        else:
            y = self._combine(experts.gathered(x_f, g.top_k_indices, shared=True), g.top_k_gates)
        return y, g.gates

    # -------------------------------------------------------------- forward
    def forward(self, ir: torch.Tensor, vis: torch.Tensor, vis_rgb: torch.Tensor | None = None,
                features: bool = False) -> DeployOutput:
        """[0,1] B×1×H×W infrared and visible luma (B×3×H×W ``vis_rgb`` for ``detector.rgb_visible`` configs).
        ``features``: also return every FPN level's re-weighted features for :meth:`detect`."""
        h, w = ir.shape[-2:]
        d = self.cfg.size_divisor
        ph, pw = (-h) % d, (-w) % d
        if ph or pw or self.export == "dynamic":  # a traced graph must not bake in "no padding needed"
            ir, vis = F.pad(ir, (0, pw, 0, ph)), F.pad(vis, (0, pw, 0, ph))
            if vis_rgb is not None:
                vis_rgb = F.pad(vis_rgb, (0, pw, 0, ph))
        size = (h + ph, w + pw)
        feats = None
        if self.has_detectors:
            det_vis = vis_rgb if (self.cfg.detector.rgb_visible and vis_rgb is not None) else vis
            a, feats = self._features(det_vis, ir, "all" if features else "att")
            att = self.att(a[:, :1], a[:, 1:], size)
        else:
            att = ir.new_full((ir.shape[0], 1, *size), self.cfg.fixed_att)
        flat = bool(self.export) and self.flat_encoders is not None
        if flat:
            enc, parts = self._encode_flat(vis, ir)
        else:
            enc, dense_v, dense_i = self._encode(vis, ir)
            parts = [dense_v, dense_i]
        att = att.to(enc.dtype)
        gates: dict[str, torch.Tensor] = {}
        if self.local_mode == "mole":
            fg, gates["mole_fg"] = self._mole(self.mole_fg, self.local_fg, self.padded_fg, enc * att)
            bg, gates["mole_bg"] = self._mole(self.mole_bg, self.local_bg, self.padded_bg, enc * (1 - att))
            parts += [fg.to(enc.dtype), bg.to(enc.dtype)]
        elif self.local_mode == "att_local":
            enc_v, enc_i = enc[:, :self.channels], enc[:, self.channels:]
            parts += [self.att_local_fg(enc_v * att, enc_i * att),
                      self.att_local_bg(enc_v * (1 - att), enc_i * (1 - att))]
        x_f = torch.cat(parts, 1)
        if hasattr(self, "moge"):
            fused, gates["moge"] = self._moge(x_f, flat)
        else:
            fused = self.decoder(x_f).float()
        return DeployOutput(fused[..., :h, :w], gates, tuple(feats) if feats is not None else None)

    def detect(self, features: tuple[torch.Tensor, ...], image_size: tuple[int, int], merge: bool = True
               ) -> list[dict[str, torch.Tensor]]:
        """Both detection heads on :meth:`forward`'s features, merged per image exactly as the eager model.
        ``image_size``: the unpadded input (H, W). ``merge=False`` returns both detectors' boxes concatenated,
        before the cross-detector merge (a greedy loop no graph exporter can trace): apply
        :func:`~moe_fusion_core.model.merge.merge_detections` to them, as :class:`~moe_fusion_core.engine.FusionEngine`
        does for exported graphs."""
        det = self.detectors
        d = self.cfg.size_divisor
        h, w = image_size
        # the heads read only the padded shape of the image tensor (anchor strides): no pixels needed
        image = features[0].new_zeros(()).expand(features[0].shape[0], 1, h + (-h) % d, w + (-w) % d)
        c = self.cfg.detector.fpn_channels
        names = [str(i) for i in range(len(features) - 1)] + ["pool"]
        f_vis = OrderedDict((k, f[:, :c]) for k, f in zip(names, features))
        f_ir = OrderedDict((k, f[:, c:]) for k, f in zip(names, features))
        sizes = [image_size] * image.shape[0]
        dv, _ = det.head_vis(f_vis, ImageList(image, sizes))
        di, _ = det.head_ir(f_ir, ImageList(image, sizes))
        if merge:
            return [det.merge(a, b) for a, b in zip(dv, di)]
        return [{k: torch.cat([a[k], b[k]]) for k in ("boxes", "scores", "labels")} for a, b in zip(dv, di)]


def _attention_pair(a: nn.Module, b: nn.Module) -> nn.Sequential:
    """The two spatial attention heads as one grouped Conv-BN-ReLU-Conv-BN-Sigmoid stack (B×2C → B×2)."""
    return pair_modules(nn.Sequential(a.conv1, a.bn1, nn.ReLU(), a.conv2, a.bn2, nn.Sigmoid()),
                        nn.Sequential(b.conv1, b.bn1, nn.ReLU(), b.conv2, b.bn2, nn.Sigmoid()))
