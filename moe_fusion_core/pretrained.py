"""Starting the detectors from torchvision checkpoints that the user already owns (never downloaded).

The file is identified by its torchvision name (``<arch>-<hash8>.pth``) and checked against the published
sha256 before it is opened; it is read with ``torch.load(..., weights_only=True)`` (no unpickling of code).
ImageNet classification checkpoints initialise the backbone body; COCO Faster R-CNN checkpoints initialise the
backbone body and, where the shapes match, the FPN.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

from .model import MoEFusion

# Full sha256 of torchvision releases (shared/weights/README.md). Others are checked by their 8-hex prefix.
KNOWN_SHA256 = {
    "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth":
        "fb6a3cc702b1df54c18a44b26708cd083614211062d0c36d2ca7bf9270df3533",
    "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth":
        "907ea3f91ff92242bc1baea8049276a3e76bca48ce7560bd268cc029f37977b5",
    "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth":
        "258fb6c638b15964ddcdd1ae0748c5eef1be9e732750120cc857feed3faac384",
    "resnet18-f37072fd.pth": "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec",
}
_NAME = re.compile(r"^(?P<arch>[a-z0-9_]+)-(?P<hash>[0-9a-f]{8})\.pth$")


class PretrainedError(ValueError):
    """A pretrained weight file is missing, not genuine, or does not fit the model."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | Path) -> str:
    """Check a torchvision checkpoint against its published sha256; return the architecture name."""
    p = Path(path)
    if not p.is_file():
        raise PretrainedError(f"{p}: no such file (weights are never downloaded; give the path of your copy)")
    m = _NAME.match(p.name)
    if m is None:
        raise PretrainedError(f"{p.name}: not a torchvision checkpoint name (<arch>-<8 hex>.pth); keep the "
                              "original file name so its checksum can be verified")
    digest = sha256_of(p)
    expected = KNOWN_SHA256.get(p.name)
    if expected is not None and digest != expected:
        raise PretrainedError(f"{p}: sha256 {digest} does not match the published {expected}")
    if expected is None and not digest.startswith(m["hash"]):
        raise PretrainedError(f"{p}: sha256 {digest[:16]}… does not start with {m['hash']} from its name")
    return m["arch"]


def load_detector_backbones(model: MoEFusion, path: str | Path) -> dict[str, int]:
    """Initialise both detectors' backbones (and FPNs when shapes match) from a verified checkpoint.

    Returns how many tensors were loaded per detector. Raises :class:`PretrainedError` when nothing fits.
    """
    if model.detectors is None:
        raise PretrainedError("this model has no detectors to initialise")
    arch = verify(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if arch.startswith("fasterrcnn_"):
        src = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    else:
        src = {f"body.{k}": v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
        if "mobilenet" in arch:
            src = {k.replace("body.features.", "body."): v for k, v in src.items()}
    loaded = {}
    for name in ("backbone_vis", "backbone_ir"):
        target = getattr(model.detectors, name)
        own = target.state_dict()
        fit = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
        if not any(k.startswith("body.") for k in fit):
            raise PretrainedError(f"{Path(path).name} ({arch}) does not fit the {model.cfg.detector.backbone} "
                                  f"backbone of this config")
        own.update(fit)
        target.load_state_dict(own)
        loaded[name] = len(fit)
    return loaded
