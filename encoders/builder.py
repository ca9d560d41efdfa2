"""The encoder registry and the one entry point that builds an encoder from a spec.

A spec is a registry name (``"timm_vit"``), a preset name (``"clip_vit_l14_336"``, a YAML file in
``experiments/configs/encoder/``), a mapping with ``name`` plus config fields, a mapping with ``preset`` plus
overrides, or an already-merged config dataclass.
"""

from __future__ import annotations

import json
from importlib import import_module
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from encoders.base import VisionEncoder
from encoders.config import RUNTIME_FIELDS, SAVED_CONFIG, is_saved_dir
from encoders.presets import resolve_preset
from encoders.registry import ConfigError, Registry

ENCODERS: Registry[VisionEncoder] = Registry("encoder", base=VisionEncoder)

EncoderSpec = str | Mapping[str, Any] | DictConfig | Any

BUILTIN_BACKENDS = ("encoders.timm_backend", "encoders.open_clip_backend", "encoders.hf_backend")


def register_builtin_backends() -> None:
    """Import the built-in backends (registering them in :data:`ENCODERS`); cheap after the first call."""
    for module in BUILTIN_BACKENDS:
        import_module(module)


def list_encoders() -> list[str]:
    """Registry names of the encoder backends."""
    register_builtin_backends()
    return ENCODERS.names()


def build_encoder(spec: EncoderSpec) -> VisionEncoder:
    """Build one encoder from a name, preset, mapping (``name`` or ``preset`` key) or config dataclass.

    Raises:
        RegistryError: unknown name (the message lists the known names and presets).
        ConfigError: unknown key or wrong type (the message names the key path and the valid keys).
    """
    register_builtin_backends()
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    return ENCODERS.build(resolve_preset(spec, ENCODERS))


def load_encoder(directory: str | Path, **overrides: Any) -> VisionEncoder:
    """Rebuild an encoder written by ``save_pretrained``; ``overrides`` may set e.g. ``frozen`` or ``meta_device``."""
    if not is_saved_dir(directory):
        raise FileNotFoundError(f"'{directory}' is not an encoder directory: {SAVED_CONFIG} is missing.")
    fixed = set(overrides) - set(RUNTIME_FIELDS) - {"pretrained"}
    if fixed:
        raise ConfigError(
            f"load_encoder can only override {', '.join(f for f in RUNTIME_FIELDS if f != 'pretrained')}; "
            f"{sorted(fixed)} are fixed by the saved weights. Build a new encoder from the saved config instead."
        )
    name = json.loads((Path(directory).expanduser() / SAVED_CONFIG).read_text())["name"]
    return build_encoder({"name": name, "pretrained": str(directory), **overrides})
