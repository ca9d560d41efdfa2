"""Named bridge presets: paper-scale configurations (with the sizes the papers report) and tiny test ones.

Each bridge module registers its presets here at import time. ``bridgelab params`` builds every paper preset on
the meta device and prints its trainable parameters beside ``expected_params`` (figures from BRIDGES.md 7.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridges.base import BridgeIO


@dataclass(frozen=True)
class BridgePreset:
    """A bridge config at a given scale, with the encoder/LM facts it is built against.

    Attributes:
        bridge: registry name of the bridge.
        name: preset name, unique per bridge (e.g. ``llava15_7b``, ``tiny``).
        overrides: config fields that differ from the dataclass defaults.
        io: the encoders and LM the preset assumes.
        expected_params: trainable parameter count the paper/reference reports, or ``None``.
        source: where ``expected_params`` comes from (paper table, reference config, BRIDGES.md section).
        count: which parameters ``expected_params`` counts when not the whole bridge (e.g. ``"xattn"``); the
            bridge's :meth:`param_groups` names the group.
    """

    bridge: str
    name: str
    overrides: dict[str, Any]
    io: BridgeIO
    expected_params: int | None = None
    source: str = ""
    count: str = "bridge"
    extra: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[tuple[str, str], BridgePreset] = {}


def register_preset(preset: BridgePreset) -> BridgePreset:
    key = (preset.bridge, preset.name)
    if key in PRESETS:
        raise KeyError(f"Duplicate bridge preset {key}")
    PRESETS[key] = preset
    return preset


def get_preset(bridge: str, name: str) -> BridgePreset:
    try:
        return PRESETS[(bridge, name)]
    except KeyError:
        known = sorted(n for b, n in PRESETS if b == bridge)
        raise KeyError(f"No preset '{name}' for bridge '{bridge}'. Known: {known}") from None


def paper_presets() -> list[BridgePreset]:
    return [p for p in PRESETS.values() if p.expected_params is not None]
