"""Picking a bridge's input out of the encoders' features: the right encoder, the right layer, CLS as asked.

Every single-encoder bridge needs the same three steps (find its encoder's features, take one layer's tokens with
or without CLS while dropping register tokens, cast to the bridge's dtype); they live here once.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from einops import rearrange

from encoders.base import VisionFeatures


def encoder_features(features: Mapping[str, VisionFeatures], name: str) -> VisionFeatures:
    """``features[name]`` with an error that lists the encoders present."""
    try:
        return features[name]
    except KeyError:
        raise KeyError(f"No features for encoder '{name}'; got {sorted(features)}. Check the encoder names.") from None


def layer_tokens(
    feats: VisionFeatures, layer: int, keep_cls: bool = False, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Tokens of absolute ``layer``: ``(N, h*w, D)``, or ``(N, 1 + h*w, D)`` with CLS first when ``keep_cls``.

    Register tokens (prefix tokens after CLS) are always dropped.

    Raises:
        ValueError: ``keep_cls`` but the encoder returned patches only.
    """
    if keep_cls and feats.num_prefix < 1:
        raise ValueError(
            "This bridge keeps the CLS token but the encoder returned patches only: request it with with_cls=True "
            "(MultimodalLM does so from bridge.needs) or configure the bridge without CLS (with_cls=False, "
            "select_feature='patch'); encoders without a CLS token (e.g. tiny_vit) need the latter."
        )
    x = feats.layer(layer)
    if not keep_cls:
        x = x[:, feats.num_prefix :]
    elif feats.num_prefix > 1:
        x = torch.cat([x[:, :1], x[:, feats.num_prefix :]], dim=1)
    return x if dtype is None else x.to(dtype)


def check_frames(num_images: int, num_frames: int) -> None:
    """Raise when ``num_images`` stacked frames do not split into media items of ``num_frames`` frames each."""
    if num_images % num_frames:
        raise ValueError(f"{num_images} images is not a multiple of num_frames={num_frames}")


def frames_to_media(tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Per-frame tokens ``(N * F, T, D)`` -> per media item ``(N, F * T, D)``, frames in order."""
    check_frames(tokens.shape[0], num_frames)
    return rearrange(tokens, "(n f) t d -> n (f t) d", f=num_frames)
