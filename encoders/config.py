"""Fields every encoder config shares, and the on-disk format of a saved encoder.

A directory written by :meth:`encoders.backbone.Backbone.save_pretrained` holds ``encoder.json`` (the registry name
and the resolved config) and ``model.safetensors`` (the wrapped library model's own ``state_dict``, so a saved
timm encoder is also a plain timm state-dict file). Naming that directory as ``pretrained`` rebuilds the same
encoder: the saved architecture fields replace the spec's, while the spec keeps :data:`RUNTIME_FIELDS`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from encoders.registry import ConfigError

SAVED_CONFIG = "encoder.json"
SAVED_WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1

# Fields a spec keeps when it loads a saved directory; every other field comes from the saved config.
RUNTIME_FIELDS = ("pretrained", "frozen", "unfreeze_last_k", "meta_device")


@dataclass
class EncoderConfig:
    """Fields shared by every backend (each backend adds ``architecture`` and its own overrides).

    Attributes:
        image_size: input side in pixels; ``None`` keeps the architecture's native size. A ViT built at another
            size gets its position embedding interpolated once, at load (bicubic, as timm/HF/open_clip do), so
            e.g. CLIP-L/14-336 runs at 448 with a 32x32 grid as in Eagle.
        pretrained: where the weights come from: ``None`` (random init), a directory written by
            ``save_pretrained``, a local weights file or library directory, or a library id (HF hub id, timm
            tag, open_clip tag). Library ids need the network or a filled cache; offline they fail with an error
            that names the fix. Ignored when ``meta_device`` is set.
        frozen: freeze every parameter at build (the papers' default for the vision tower).
        unfreeze_last_k: with ``frozen``, make the last ``k`` blocks (ViT blocks / ConvNet stages) trainable.
        mean: per-channel normalisation mean; ``None`` uses what the weights expect (library metadata).
        std: per-channel normalisation std; ``None`` as for ``mean``.
        meta_device: build on the meta device (shapes only, no memory, no weights) for sizing paper-scale models.
    """

    image_size: int | None = None
    pretrained: str | None = None
    frozen: bool = True
    unfreeze_last_k: int = 0
    mean: list[float] | None = None
    std: list[float] | None = None
    meta_device: bool = False


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def is_saved_dir(path: str | Path | None) -> bool:
    """Whether ``path`` is a directory written by ``save_pretrained``."""
    return path is not None and (Path(path).expanduser() / SAVED_CONFIG).is_file()


def local_path(pretrained: str | None) -> Path | None:
    """``pretrained`` as an existing local path, or ``None`` when it is unset or a library/hub id."""
    if pretrained is None:
        return None
    path = Path(pretrained).expanduser()
    return path if path.exists() else None


def adopt_saved_config(config: Any, registry_name: str) -> Any:
    """If ``config.pretrained`` is a saved directory, return ``config`` with its architecture fields replaced."""
    if not is_saved_dir(config.pretrained):
        return config
    saved = json.loads((Path(config.pretrained).expanduser() / SAVED_CONFIG).read_text())
    if saved.get("name") != registry_name:
        raise ConfigError(
            f"'{config.pretrained}' holds a '{saved.get('name')}' encoder, not '{registry_name}'. "
            f"Use name: {saved.get('name')} (or encoders.load_encoder(path))."
        )
    known = {f.name for f in dataclasses.fields(config)}
    fields = {k: v for k, v in saved["config"].items() if k in known and k not in RUNTIME_FIELDS}
    return dataclasses.replace(config, **fields)


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch pickle (``weights_only``); unwrap common containers."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidates = [path / SAVED_WEIGHTS, path / "pytorch_model.bin", path / "model.pt", path / "model.pth"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise FileNotFoundError(
                f"No weights in directory '{path}': expected one of {', '.join(c.name for c in candidates)}."
            )
        path = found[0]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "module"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"'{path}' does not hold a state dict (got {type(state).__name__}).")
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def pretrained_error(registry_name: str, pretrained: str, err: Exception) -> RuntimeError:
    """The error for a library id that could not be loaded (usually: offline, or a typo)."""
    return RuntimeError(
        f"Encoder '{registry_name}' could not load pretrained weights '{pretrained}' ({type(err).__name__}: {err}). "
        "It is not an existing local path, so it was treated as a library/hub id, which needs the network or a "
        "filled cache (HF_HUB_OFFLINE=1 forbids downloads). Fix: download the weights and set pretrained to the "
        "local path, or set pretrained: null for random weights, or meta_device: true to size the model only."
    )
