"""Per-encoder image transform: resize to the encoder's input size, then its own normalisation.

A plain picklable callable (DataLoader workers can carry it), vectorised over any leading dimensions, so a
frame stack ``(F, C, H, W)`` or a whole batch ``(N, F, C, H, W)`` is one interpolate call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange


@dataclass(frozen=True)
class ImageTransform:
    """Map float images in ``[0, 1]``, ``(..., C, H, W)``, to the encoder's input ``(..., C, size[0], size[1])``.

    Attributes:
        size: target ``(H, W)``; inputs already at this size are not resampled.
        mean: per-channel mean of the encoder's normalisation.
        std: per-channel std.
        interpolation: ``bicubic`` (CLIP/SigLIP/timm processors) or ``bilinear``; antialiased, then clamped to
            ``[0, 1]`` because bicubic overshoots (the reference processors resample uint8 images).
    """

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() < 3:
            raise ValueError(f"Expected images (..., C, H, W); got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"Expected float images in [0, 1]; got dtype {images.dtype}. Use images.float() / 255.")
        channels = images.shape[-3]
        if channels != len(self.mean):
            raise ValueError(f"Expected {len(self.mean)} channels; got {channels} (shape {tuple(images.shape)})")
        lead = images.shape[:-3]
        flat = rearrange(images, "... c h w -> (...) c h w")
        if tuple(flat.shape[-2:]) != tuple(self.size):
            flat = F.interpolate(flat, size=self.size, mode=self.interpolation, antialias=True, align_corners=False)
            flat = flat.clamp(0.0, 1.0)
        mean = flat.new_tensor(self.mean).view(-1, 1, 1)
        std = flat.new_tensor(self.std).view(-1, 1, 1)
        return ((flat - mean) / std).reshape(*lead, *flat.shape[-3:])
