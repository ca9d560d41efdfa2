"""The vision-encoder contract: pixels in, the requested hidden layers out as patch tokens.

Every backend (timm, open_clip, HF CLIP/SigLIP) implements :class:`VisionEncoder`. Bridges only ever see
:class:`VisionFeatures`, so a bridge never knows which library produced its input.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class VisionFeatures:
    """Hidden states of one encoder for a batch of images (video frames are flattened into the batch).

    Attributes:
        hidden: one tensor per requested layer, in request order, each ``(N, P, D)``; ``P = h * w`` patch tokens
            in row-major grid order, plus ``num_prefix`` leading tokens (CLS) if they were asked for.
        layers: the absolute (non-negative) layer index of each entry of ``hidden``.
        grid: the patch grid ``(h, w)``.
        width: the hidden size ``D``.
        num_prefix: leading non-patch tokens kept in each tensor (0 unless CLS was requested).
    """

    hidden: tuple[torch.Tensor, ...]
    layers: tuple[int, ...]
    grid: tuple[int, int]
    width: int
    num_prefix: int = 0

    def __post_init__(self) -> None:
        if len(self.hidden) != len(self.layers):
            raise ValueError(f"VisionFeatures: {len(self.hidden)} tensors for {len(self.layers)} layer indices")

    @property
    def last(self) -> torch.Tensor:
        """The last requested layer, ``(N, P, D)``."""
        return self.hidden[-1]

    @property
    def num_images(self) -> int:
        return self.hidden[0].shape[0]

    def layer(self, index: int) -> torch.Tensor:
        """The tensor of absolute layer ``index`` (which must have been requested)."""
        try:
            return self.hidden[self.layers.index(index)]
        except ValueError:
            raise KeyError(f"Layer {index} was not requested; available layers: {list(self.layers)}") from None

    def patches(self, i: int = -1) -> torch.Tensor:
        """Entry ``i`` of ``hidden`` without its prefix tokens, ``(N, h*w, D)``."""
        return self.hidden[i][:, self.num_prefix :]


def resolve_layers(layers: int | Sequence[int], num_layers: int) -> tuple[int, ...]:
    """Turn a layer index, negative index (-2 = penultimate) or list into absolute indices in ``[0, num_layers)``.

    Index ``i`` means the output of transformer block ``i`` (0-based), so -1 is the final block's output.
    """
    items = [layers] if isinstance(layers, int) else list(layers)
    if not items:
        raise ValueError("Request at least one encoder layer")
    out = []
    for idx in items:
        absolute = idx + num_layers if idx < 0 else idx
        if not 0 <= absolute < num_layers:
            raise ValueError(
                f"Encoder layer {idx} is out of range for an encoder with {num_layers} layers "
                f"(valid: {-num_layers}..{num_layers - 1})"
            )
        out.append(absolute)
    return tuple(out)


class VisionEncoder(nn.Module, abc.ABC):
    """Base class of every vision backbone wrapper.

    Subclasses set ``width``, ``num_layers``, ``image_size`` (H, W), ``patch_grid`` (h, w), ``mean``/``std``
    (the normalisation their weights expect) and implement :meth:`forward` and :meth:`blocks`.
    Encoders are frozen at construction unless their config says otherwise.
    """

    width: int
    num_layers: int
    image_size: tuple[int, int]
    patch_grid: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @abc.abstractmethod
    def forward(self, pixels: torch.Tensor, layers: int | Sequence[int] = -1, with_cls: bool = False) -> VisionFeatures:
        """Encode normalised ``pixels (N, C, H, W)`` and return only the requested ``layers``."""

    @abc.abstractmethod
    def blocks(self) -> Sequence[nn.Module]:
        """The encoder's sequential blocks, input to output (for partial unfreezing and FSDP wrapping)."""

    def freeze(self) -> None:
        self.requires_grad_(False)

    def unfreeze_last_k(self, k: int) -> None:
        """Make the last ``k`` blocks trainable (the rest stays frozen)."""
        self.freeze()
        if k > 0:
            for block in list(self.blocks())[-k:]:
                block.requires_grad_(True)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map images in ``[0, 1]`` to this encoder's input normalisation."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(-1, 1, 1)
        return (images - mean) / std
