"""Several vision encoders run side by side, each with its own input transform (Eagle's experts).

The order of the mapping is kept: multi-encoder bridges use it as their fixed expert order (it fixes the layout of
channel-concatenated features, hence of the projector's weights).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from encoders.base import VisionEncoder, VisionFeatures
from encoders.builder import EncoderSpec, build_encoder
from encoders.presets import PRESET_KEY
from encoders.registry import NAME_KEY, ConfigError
from encoders.transforms import ImageTransform

LayerSpec = int | Sequence[int]


class EncoderSet(nn.Module):
    """An ordered set of named encoders; ``forward`` returns one :class:`VisionFeatures` per encoder."""

    def __init__(self, encoders: Mapping[str, VisionEncoder]) -> None:
        super().__init__()
        if not encoders:
            raise ValueError("An EncoderSet needs at least one encoder")
        for name, encoder in encoders.items():
            if not isinstance(encoder, VisionEncoder):
                raise TypeError(f"Encoder '{name}' is a {type(encoder).__name__}, not a VisionEncoder")
            if name in (NAME_KEY, PRESET_KEY) or "." in name or not name:
                raise ValueError(f"Invalid encoder name '{name}': no dots, not empty, not '{NAME_KEY}'/'{PRESET_KEY}'")
        self.encoders = nn.ModuleDict(dict(encoders))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.encoders.keys())

    def __getitem__(self, name: str) -> VisionEncoder:
        if name not in self.encoders:
            raise KeyError(f"No encoder '{name}' in this set; encoders: {list(self.names)}")
        return self.encoders[name]

    def __len__(self) -> int:
        return len(self.encoders)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.encoders

    def forward(
        self,
        pixels: torch.Tensor | Mapping[str, torch.Tensor],
        layers: Mapping[str, LayerSpec] | LayerSpec = -1,
        with_cls: bool | Mapping[str, bool] = False,
    ) -> dict[str, VisionFeatures]:
        """Run every encoder on its pixels ``(N, C, H, W)``.

        Args:
            pixels: one tensor for all encoders (each must accept its size), or a mapping by encoder name (each
                encoder's own transform applied), with exactly this set's names.
            layers: layers for every encoder, or a mapping by encoder name.
            with_cls: keep prefix tokens, for all or by encoder name.
        """
        pixels_by = self._by_name(pixels, "pixels", torch.Tensor)
        layers_by = self._by_name(layers, "layers", (int, Sequence))
        cls_by = self._by_name(with_cls, "with_cls", bool)
        return {name: self.encoders[name](pixels_by[name], layers_by[name], cls_by[name]) for name in self.names}

    def transforms(self) -> dict[str, ImageTransform]:
        """Each encoder's transform (resize + normalisation) for float images in ``[0, 1]``, ``(..., C, H, W)``."""
        return {name: encoder.transform() for name, encoder in self.encoders.items()}

    def _by_name(self, value: Any, what: str, leaf: type | tuple[type, ...]) -> dict[str, Any]:
        if isinstance(value, Mapping):
            missing = [n for n in self.names if n not in value]
            extra = [n for n in value if n not in self.encoders]
            if missing or extra:
                raise KeyError(
                    f"{what} must be given for exactly the encoders {list(self.names)}; "
                    f"missing {missing}, unknown {extra}"
                )
            return {n: value[n] for n in self.names}
        if not isinstance(value, leaf):
            raise TypeError(f"{what}: expected {leaf} or a mapping by encoder name; got {type(value).__name__}")
        return {n: value for n in self.names}


def build_encoder_set(spec: EncoderSpec | Mapping[str, EncoderSpec]) -> EncoderSet:
    """Build an :class:`EncoderSet` from one encoder spec, or from a mapping ``encoder name -> spec``.

    A single spec (a string, or a mapping with ``name``/``preset``) gives a one-encoder set named after its
    preset or registry name.
    """
    single = isinstance(spec, str) or not isinstance(spec, Mapping) or NAME_KEY in spec or PRESET_KEY in spec
    if single:
        encoder = build_encoder(spec)
        key = str(spec.get(PRESET_KEY) or "") if isinstance(spec, Mapping) else ""
        if isinstance(spec, str) and ":" not in spec:
            key = spec
        return EncoderSet({key or encoder.registry_name: encoder})
    if not spec:
        raise ConfigError("An encoder set needs at least one encoder spec")
    return EncoderSet({str(name): build_encoder(sub) for name, sub in spec.items()})
