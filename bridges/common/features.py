"""Picking a bridge's input out of the encoders' features: the right encoder, the right layer, CLS as asked.

Every single-encoder bridge needs the same three steps (find its encoder's features, take one layer's tokens with
or without CLS while dropping register tokens, cast to the bridge's dtype); they live here once.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

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
