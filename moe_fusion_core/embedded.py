"""The models shipped inside the package, and the one rule that turns a checkpoint argument into a path.

Every place that accepts a checkpoint (``FusionEngine``, ``load_model``, ``read_config``, the ``fuse``, ``replay``,
``bench``, ``export`` and ``info`` commands, the node's ``model.checkpoint``) goes through
:func:`resolve_checkpoint`:

- ``None`` or ``""``: the embedded ``default`` model;
- an existing file or folder: that path, even if it is called ``default`` or ``fast`` (a checkpoint you point at
  is never shadowed by a name);
- otherwise a name of :data:`EMBEDDED_MODELS` (``default``, ``fast``): that embedded model's folder;
- anything else is returned as given, for the loader to report it missing (its error lists the names).

Torch-free, so the command line can name the models in its help without importing PyTorch.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
# name -> folder holding model.safetensors (fp16) + config.yaml; installed as package data (setup.py)
EMBEDDED_MODELS: dict[str, Path] = {"default": _HERE / "default_model", "fast": _HERE / "fast_model"}
CHECKPOINT_KINDS = f"model folder, .safetensors file or embedded model name ({', '.join(EMBEDDED_MODELS)})"
CHECKPOINT_HELP = f"{CHECKPOINT_KINDS}; default: the embedded default model"


def resolve_checkpoint(spec: str | Path | None) -> Path:
    """The path a checkpoint argument stands for (the module docstring has the rule).

    Raises ``FileNotFoundError`` when an embedded model is named but its weights are not installed.
    """
    if spec is None or str(spec) == "":
        name = "default"
    elif Path(spec).exists() or str(spec) not in EMBEDDED_MODELS:
        return Path(spec)
    else:
        name = str(spec)
    folder = EMBEDDED_MODELS[name]
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"the embedded {name!r} model is missing from {folder}; reinstall the package "
                                "or give a checkpoint path")
    return folder
