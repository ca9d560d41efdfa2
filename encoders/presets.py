"""Named encoder presets: the YAML files of the Hydra config group ``experiments/configs/encoder/``.

Each file is a mapping with ``name: <registry name>`` plus config fields. The paper encoders state their full
architecture, so they build on the meta device (``meta_device: true``) without a download and load real weights
when ``pretrained`` resolves (hub id with a cache, or a local path). The tiny ones build offline in milliseconds.

The files are data, read from disk: ``encoders`` imports nothing from ``experiments``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from encoders.registry import NAME_KEY, ConfigError, Registry, RegistryError

PRESET_KEY = "preset"


def preset_dir() -> Path:
    """The directory of the encoder preset YAML files."""
    spec = importlib.util.find_spec("experiments")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))) / "configs" / "encoder"
    return Path(__file__).resolve().parents[1] / "experiments" / "configs" / "encoder"


def list_presets() -> list[str]:
    """Names of the encoder presets (YAML file stems)."""
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """The preset ``name`` as a plain dict (``name`` key plus fields)."""
    path = preset_dir() / f"{name}.yaml"
    if not path.is_file():
        raise RegistryError(f"Unknown encoder preset '{name}'. Known presets: {', '.join(list_presets())}.")
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(data, dict) or NAME_KEY not in data:
        raise ConfigError(f"Encoder preset '{path}' must be a mapping with a '{NAME_KEY}' key.")
    return data


def resolve_preset(spec: Any, registry: Registry) -> Any:
    """Turn preset references in ``spec`` into a plain ``name`` + fields mapping; pass anything else through.

    ``"clip_vit_l14_336"`` loads that preset; ``{"preset": "clip_vit_l14_336", "image_size": 448}`` loads it and
    merges the overrides (nested dicts such as ``architecture`` merge key by key).
    """
    if dataclasses.is_dataclass(spec):
        return spec
    if isinstance(spec, str):
        if spec in registry or ":" in spec:
            return spec
        if (preset_dir() / f"{spec}.yaml").is_file():
            return load_preset(spec)
        raise RegistryError(
            f"Unknown encoder '{spec}'. Known encoders: {', '.join(registry.names())}; "
            f"known presets: {', '.join(list_presets())}."
        )
    if not isinstance(spec, Mapping):
        raise ConfigError(f"An encoder spec is a name, preset name, mapping or config; got {type(spec).__name__}.")
    spec = dict(spec)
    if PRESET_KEY not in spec:
        return spec
    base = load_preset(str(spec.pop(PRESET_KEY)))
    if NAME_KEY in spec and spec[NAME_KEY] != base[NAME_KEY]:
        raise ConfigError(f"Preset is a '{base[NAME_KEY]}' encoder but the spec says name: {spec[NAME_KEY]}.")
    return OmegaConf.to_container(OmegaConf.merge(base, spec), resolve=True)
