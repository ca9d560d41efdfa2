"""Hugging Face ``CLIPVisionModel`` / ``SiglipVisionModel`` towers (LLaVA, MMFuser, Eagle's CLIP; SigLIP-so400m).

The forward runs the embeddings and then the encoder layers one by one up to the deepest requested layer, keeping
only the requested outputs (HF's ``output_hidden_states`` would keep all of them and run every layer). Layer
``i`` is the output of encoder layer ``i``, i.e. HF ``hidden_states[i + 1]``; so ``-2`` is LLaVA's
``hidden_states[-2]`` and MMFuser's ``[-22, -17, -12, -7, -2]`` map one to one. ``post_layernorm`` and SigLIP's
pooling head are not applied (LLaVA/Eagle/MMFuser use raw layer outputs).

A new ``image_size`` resamples the position embedding once at build (bicubic, like HF's
``interpolate_pos_encoding``), so CLIP-L/14-336 runs at 448 with a 32x32 grid as in Eagle, and the stored
parameter is the one that trains if unfrozen.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, PretrainedConfig, PreTrainedModel
from transformers import SiglipVisionConfig, SiglipVisionModel

from encoders.backbone import Backbone, LayerOutput
from encoders.builder import ENCODERS
from encoders.config import EncoderConfig, local_path, pretrained_error
from encoders.pos_embed import resize_position_table

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class HFCLIPConfig(EncoderConfig):
    """An HF ``CLIPVisionModel`` (shared fields: :class:`~encoders.config.EncoderConfig`).

    Attributes:
        architecture: ``CLIPVisionConfig`` fields (``hidden_size``, ``num_hidden_layers``, ``patch_size``,
            ``image_size`` = the native size the position table was trained at, ...). With a hub id or HF
            directory in ``pretrained`` the config is read from there and these fields override it.
        attn_implementation: HF attention backend (``sdpa``, ``eager``, ``flash_attention_2``).
    """

    architecture: dict[str, Any] = field(default_factory=dict)
    attn_implementation: str = "sdpa"


@dataclass
class HFSiglipConfig(EncoderConfig):
    """An HF ``SiglipVisionModel``; fields as :class:`HFCLIPConfig` (``SiglipVisionConfig`` fields)."""

    architecture: dict[str, Any] = field(default_factory=dict)
    attn_implementation: str = "sdpa"


class _HFVision(Backbone):
    config_class: ClassVar[type[PretrainedConfig]]
    model_class: ClassVar[type[PreTrainedModel]]
    mean_std: ClassVar[tuple[tuple[float, ...], tuple[float, ...]]]

    def _build(self, config: HFCLIPConfig | HFSiglipConfig, external: str | None) -> None:
        arch = dict(config.architecture)
        if external is None:
            hf_config = self.config_class(**arch, attn_implementation=config.attn_implementation)
            if config.meta_device:
                with torch.device("meta"):
                    self.model = self.model_class(hf_config)
            else:
                self.model = self.model_class(hf_config)
        else:
            try:
                hf_config = self.config_class.from_pretrained(external, **arch)
                model = self.model_class.from_pretrained(
                    external, config=hf_config, attn_implementation=config.attn_implementation
                )
            except OSError as err:
                if local_path(external) is not None:
                    raise
                raise pretrained_error(self.registry_name, external, err) from err
            self.model = model.float()  # fp32 like the other backends; cast down explicitly if wanted
        hf_config = self.model.config
        params = inspect.signature(self._layers[0].forward).parameters
        self._layer_kwargs = {"causal_attention_mask": None} if "causal_attention_mask" in params else {}
        if config.image_size and config.image_size != hf_config.image_size:
            self._resize(config.image_size)
        patch = int(hf_config.patch_size)
        self.width = int(hf_config.hidden_size)
        self.num_layers = len(self._layers)
        self.layer_widths = (self.width,) * self.num_layers
        self.layer_reductions = (patch,) * self.num_layers
        self.image_size = (int(hf_config.image_size),) * 2
        self.patch_grid = (self.image_size[0] // patch,) * 2

    # The tower's parts, looked up on demand: storing them as attributes would register them twice.
    @property
    def _tower(self) -> nn.Module:
        return getattr(self.model, "vision_model", self.model)  # transformers < 5 nests the tower

    @property
    def _embeddings(self) -> nn.Module:
        return self._tower.embeddings

    @property
    def _layers(self) -> nn.ModuleList:
        return self._tower.encoder.layers

    def _resize(self, size: int) -> None:
        """Resample the position table to a ``size`` x ``size`` input and update the embedding's bookkeeping."""
        emb = self._embeddings
        old = emb.image_size // emb.patch_size
        new = size // emb.patch_size
        table = emb.position_embedding.weight
        if table.is_meta:
            resized = torch.empty(self.num_prefix_tokens + new * new, table.shape[1], device="meta", dtype=table.dtype)
        else:
            resized = resize_position_table(table.detach(), (old, old), (new, new), self.num_prefix_tokens)
        emb.position_embedding = nn.Embedding.from_pretrained(resized, freeze=False)
        emb.image_size = size
        emb.num_patches = new * new
        emb.num_positions = resized.shape[0]
        positions = torch.arange(emb.num_positions, device=table.device).expand((1, -1))
        emb.register_buffer("position_ids", positions, persistent=False)
        self.model.config.image_size = size

    def _intermediates(self, pixels: torch.Tensor, indices: list[int], with_cls: bool) -> list[LayerOutput]:
        hidden = self._embeddings(pixels)
        pre_norm = getattr(self._tower, "pre_layrnorm", None)  # CLIP only
        if pre_norm is not None:
            hidden = pre_norm(hidden)
        drop = 0 if with_cls else self.num_prefix_tokens
        wanted, outputs = set(indices), []
        for i, layer in enumerate(self._layers[: indices[-1] + 1]):
            hidden = layer(hidden, None, **self._layer_kwargs)
            if isinstance(hidden, tuple):  # transformers < 5 returns (hidden, attn)
                hidden = hidden[0]
            if i in wanted:
                outputs.append((hidden[:, drop:], tuple(self.patch_grid)))
        return outputs

    def blocks(self) -> list[nn.Module]:
        return list(self._layers)

    def default_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.mean_std


@ENCODERS.register("hf_clip", HFCLIPConfig)
class HFCLIPEncoder(_HFVision):
    """HF CLIP vision tower; one prefix token (CLS), OpenAI CLIP normalisation."""

    config_class = CLIPVisionConfig
    model_class = CLIPVisionModel
    mean_std = (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    num_prefix_tokens = 1


@ENCODERS.register("hf_siglip", HFSiglipConfig)
class HFSiglipEncoder(_HFVision):
    """HF SigLIP vision tower; no prefix token, normalisation to [-1, 1]."""

    config_class = SiglipVisionConfig
    model_class = SiglipVisionModel
    mean_std = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    num_prefix_tokens = 0
