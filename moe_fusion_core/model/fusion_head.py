"""The fusion network (spec §2, §4, §5): encoders → MoLE-fg / MoLE-bg → x_f → MoGE → fused image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig
from .attention import AttentionCombiner
from .encoder import Encoder
from .experts import GlobalExpert
from .gate import GateOutput
from .moge import MoGE
from .mole import AttLocal, MoLE


@dataclass
class FusionHeadOutput:
    """Raw fused image (B×1×H×W, unbounded), the gates that fired, and the load-balancing loss."""

    fused: torch.Tensor
    gates: dict[str, GateOutput]
    load_loss: torch.Tensor


class FusionHead(nn.Module):
    """Everything that the fusion losses train. Takes [0,1] grey images and a detached attention map Att."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c = cfg.encoder_channels
        self.local_mode = cfg.local_mode
        self.att = AttentionCombiner(cfg.att_mode)
        self.encoder_vis = Encoder(c)
        self.encoder_ir = Encoder(c)
        local_out = 0
        if cfg.local_mode == "mole":
            self.mole_fg = MoLE(c, cfg.local_hidden, cfg.mole, cfg.combine)
            self.mole_bg = MoLE(c, cfg.local_hidden, cfg.mole, cfg.combine)
            local_out = 2 * c
        elif cfg.local_mode == "att_local":
            self.local_fg = AttLocal(c, cfg.local_hidden)
            self.local_bg = AttLocal(c, cfg.local_hidden)
            local_out = 2 * c
        elif cfg.local_mode != "none":
            raise ValueError(f"unknown local_mode {cfg.local_mode!r} (mole | att_local | none)")
        global_in = 8 * c + local_out
        if cfg.use_moge:
            self.moge = MoGE(global_in, cfg.global_channels, cfg.moge, cfg.combine, cfg.global_reduce)
        else:
            self.decoder = GlobalExpert(global_in, cfg.global_channels, cfg.global_reduce)

    def forward(self, vis: torch.Tensor, ir: torch.Tensor, att: torch.Tensor) -> FusionHeadOutput:
        enc_v, dense_v = self.encoder_vis(vis)
        enc_i, dense_i = self.encoder_ir(ir)
        parts = [dense_v, dense_i]
        gates: dict[str, GateOutput] = {}
        load_loss = vis.new_zeros((), dtype=torch.float32)
        att = att.to(enc_v.dtype)
        if self.local_mode == "mole":
            fg = self.mole_fg(enc_v * att, enc_i * att)
            bg = self.mole_bg(enc_v * (1 - att), enc_i * (1 - att))
            parts += [fg.y.to(enc_v.dtype), bg.y.to(enc_v.dtype)]
            gates["mole_fg"], gates["mole_bg"] = fg.gate, bg.gate
            load_loss = load_loss + fg.gate.loss + bg.gate.loss
        elif self.local_mode == "att_local":
            parts += [self.local_fg(enc_v * att, enc_i * att), self.local_bg(enc_v * (1 - att), enc_i * (1 - att))]
        x_f = torch.cat(parts, 1)
        if hasattr(self, "moge"):
            g = self.moge(x_f)
            fused, gates["moge"] = g.y, g.gate
            load_loss = load_loss + g.gate.loss
        else:
            fused = self.decoder(x_f).float()
        return FusionHeadOutput(fused, gates, load_loss)
