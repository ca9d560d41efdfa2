"""A complete plug-in bridge, kept tested (``tests/test_reliability_config.py``): copy it to start your own.

Use it without editing bridgelab (the README prints these commands; the test runs them as printed)::

    PYTHONPATH=tests/plugins bridgelab train experiment=smoke 'plugins=[mean_pool]' '~bridge' +bridge.name=mean_pool
    PYTHONPATH=tests/plugins bridgelab train experiment=smoke '~bridge' +bridge.name=mean_pool:mean_pool

``'~bridge'`` drops the default bridge option's fields (they belong to the MLP's config); ``+bridge.<field>=...``
sets this bridge's own fields. Both commands describe the same run (the same config hash).

The contract (``bridges/base.py``):

* register a config dataclass and the class with ``@BRIDGES.register(name, ConfigClass)``; the constructor is
  ``__init__(self, config, io)`` where ``config`` is your dataclass (merged from the command line, unknown keys and
  wrong types rejected) and ``io`` is a :class:`~bridges.base.BridgeIO`:
  ``io.encoders`` a tuple of :class:`~bridges.base.EncoderInfo` (``name``, ``width``: the feature size ``Dv``,
  ``grid``: the ``(h, w)`` patch grid, ``num_layers``; ``io.encoder`` is the first) and ``io.lm`` an
  :class:`~bridges.base.LMInfo` (``hidden_size``: ``D_lm``, ``num_layers``, ``num_heads``, ``num_kv_heads``,
  ``head_dim``, ``vocab_size``, ``family``);
* ``needs`` -> :class:`~bridges.base.BridgeNeeds` (``num_encoders``: exact count or ``None`` for one or more,
  ``layers``: the encoder layers to request, ``needs_grid``, ``with_cls``); checked when the model is built;
* ``num_visual_tokens(num_frames)`` -> ``T``, the tokens per media item (what the LM sequence grows by);
* ``flops_per_media(num_frames)`` -> forward FLOPs (2 x multiply-adds) for one media item, LM excluded;
* ``forward(features, num_frames=1, instruction=None)``: ``features`` maps each encoder name to a
  :class:`~encoders.base.VisionFeatures` whose ``.last`` is ``(N_media * F, P, Dv)`` patch tokens (``.hidden`` holds
  one such tensor per requested layer, ``.grid`` is ``(h, w)``); return ``(N_media, T, D_lm)``. A wrong shape fails
  with both shapes named.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from bridges.base import BRIDGES, BridgeIO, BridgeNeeds, PrefixBridge
from encoders.base import VisionFeatures


@dataclass
class MeanPoolConfig:
    """Average the patch tokens into ``tokens`` groups, then project each group to the LM width."""

    tokens: int = 2

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ValueError(f"'bridge.tokens' = {self.tokens} is out of range: allowed >= 1")


@BRIDGES.register("mean_pool", MeanPoolConfig)
class MeanPoolBridge(PrefixBridge):
    """``(N*F, P, Dv)`` patches -> ``tokens`` mean-pooled groups -> linear -> ``(N, F * tokens, D_lm)``."""

    def __init__(self, config: MeanPoolConfig, io: BridgeIO) -> None:
        super().__init__(config, io)
        self.proj = nn.Linear(io.encoder.width, io.lm.hidden_size)

    @property
    def needs(self) -> BridgeNeeds:
        return BridgeNeeds(num_encoders=1, layers=(-1,))

    def num_visual_tokens(self, num_frames: int = 1) -> int:
        return self.config.tokens * num_frames

    def flops_per_media(self, num_frames: int = 1) -> int:
        return 2 * self.num_visual_tokens(num_frames) * self.proj.in_features * self.proj.out_features

    def forward(
        self,
        features: Mapping[str, VisionFeatures],
        num_frames: int = 1,
        instruction: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        patches = features[self.io.encoder.name].last  # (N*F, P, Dv)
        groups = torch.tensor_split(patches, self.config.tokens, dim=1)  # tokens x (N*F, P/tokens, Dv)
        pooled = torch.stack([g.mean(1) for g in groups], dim=1)  # (N*F, tokens, Dv)
        tokens = self.proj(pooled)  # (N*F, tokens, D_lm)
        return tokens.reshape(-1, num_frames * self.config.tokens, tokens.shape[-1])  # (N, F*tokens, D_lm)
