"""open_clip image towers: open_clip's own ViT and its timm trunks (ConvNeXt-XXL in Eagle, EVA ViT-g).

Only ``model.visual`` is kept. Without external weights the tower is built alone from the open_clip model config
(no text tower); with an open_clip tag or checkpoint file the full model is created by ``open_clip.create_model``
(which downloads/loads and resizes position embeddings) and its text tower dropped.

Layers: open_clip ViT -> transformer block ``i`` (before ``ln_post``), with its CLS as the one prefix token; a timm
trunk -> as in :mod:`encoders.timm_backend` (ViT blocks, or ConvNet feature stages as tokens).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from torch import nn

from encoders.backbone import Backbone, LayerOutput
from encoders.builder import ENCODERS
from encoders.config import EncoderConfig, local_path, pretrained_error
from encoders.registry import ConfigError
from encoders.timm_backend import convnet_intermediates, vit_intermediates


@dataclass
class OpenCLIPConfig(EncoderConfig):
    """An open_clip image tower (shared fields: :class:`~encoders.config.EncoderConfig`).

    Attributes:
        architecture: open_clip model name (``open_clip.list_models()``), e.g. ``ViT-L-14-336``,
            ``convnext_xxlarge``, ``EVA01-g-14``.
        model_kwargs: overrides of that model's ``vision_cfg`` (``width``, ``layers``, ``patch_size``,
            ``head_width``, ``mlp_ratio``, ...); the input size goes in ``image_size``.

    ``pretrained``: an open_clip tag for ``architecture`` (``laion2b_s34b_b82k_augreg_soup``) or a full open_clip
    checkpoint file; a directory written by ``save_pretrained`` holds only the visual tower.
    """

    architecture: str = "ViT-B-32"
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def _model_config(config: OpenCLIPConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(full open_clip model config, its vision_cfg with the overrides applied)."""
    base = open_clip.get_model_config(config.architecture)
    if base is None:
        raise ConfigError(
            f"Unknown open_clip architecture '{config.architecture}'. Known: {', '.join(open_clip.list_models())}"
        )
    vision_cfg = {**base["vision_cfg"], **config.model_kwargs}
    if "image_size" in config.model_kwargs:
        raise ConfigError("Set the input size with image_size, not model_kwargs.image_size.")
    if config.image_size:
        vision_cfg["image_size"] = config.image_size
    if vision_cfg.get("patch_dropout", 0.0) > 0:
        raise ConfigError("patch_dropout drops patch tokens, so the grid is lost; set it to 0.")
    return base, vision_cfg


class _QuietOpenCLIP(logging.Filter):
    """Hides open_clip's 'No pretrained weights loaded' warning for a deliberately random tower."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights" not in record.getMessage()


def _build_visual(config: OpenCLIPConfig, external: str | None) -> nn.Module:
    base, vision_cfg = _model_config(config)
    quick_gelu = bool(base.get("quick_gelu", False))
    if external is None:
        if vision_cfg.get("timm_model_name"):
            vision_cfg["timm_model_pretrained"] = False
        build = open_clip.model._build_vision_tower  # the tower alone: no text tower to build and discard
        if config.meta_device:
            with torch.device("meta"):
                return build(base["embed_dim"], vision_cfg, quick_gelu=quick_gelu)
        return build(base["embed_dim"], vision_cfg, quick_gelu=quick_gelu)
    path = local_path(external)
    quiet = _QuietOpenCLIP()
    logging.getLogger().addFilter(quiet)
    try:
        model = open_clip.create_model(
            config.architecture, pretrained=str(path) if path else external, vision_cfg=vision_cfg
        )
    except Exception as err:  # download/cache errors come in many types
        if path is not None:
            raise
        raise pretrained_error("open_clip", external, err) from err
    finally:
        logging.getLogger().removeFilter(quiet)
    return model.visual


@ENCODERS.register("open_clip", OpenCLIPConfig)
class OpenCLIPEncoder(Backbone):
    """An open_clip image tower: its own ViT, or a timm trunk (ViT-family or ConvNet)."""

    def _build(self, config: OpenCLIPConfig, external: str | None) -> None:
        self.model = _build_visual(config, external)
        visual = self.model
        if isinstance(visual, VisionTransformer):
            self._kind = "openclip_vit"
            patch = visual.patch_size[0]
            self.width = int(visual.transformer.width)
            self.num_layers = len(visual.transformer.resblocks)
            self.layer_reductions = (patch,) * self.num_layers
            self.layer_widths = (self.width,) * self.num_layers
            self.image_size = tuple(visual.image_size)
            self.patch_grid = tuple(visual.grid_size)
            self.num_prefix_tokens = 1
        elif isinstance(visual, TimmModel) and hasattr(visual.trunk, "patch_embed"):
            self._kind = "timm_vit"
            trunk = visual.trunk
            self.width = int(trunk.embed_dim)
            self.num_layers = len(trunk.blocks)
            self.layer_widths = (self.width,) * self.num_layers
            self.layer_reductions = (trunk.patch_embed.patch_size[0],) * self.num_layers
            self.image_size = tuple(trunk.patch_embed.img_size)
            self.patch_grid = tuple(trunk.patch_embed.grid_size)
            self.num_prefix_tokens = int(trunk.num_prefix_tokens)
            if config.image_size and self.image_size != (config.image_size,) * 2:
                raise ConfigError(
                    f"open_clip builds the timm trunk of '{config.architecture}' at {self.image_size}; to run it at "
                    f"{config.image_size} px use the timm_vit backend (it interpolates the position embedding)."
                )
        elif isinstance(visual, TimmModel) and getattr(visual.trunk, "feature_info", None):
            self._kind = "timm_convnet"
            info = list(visual.trunk.feature_info)
            self.num_layers = len(info)
            self.layer_widths = tuple(int(i["num_chs"]) for i in info)
            self.layer_reductions = tuple(int(i["reduction"]) for i in info)
            self.width = self.layer_widths[-1]
            self.image_size = tuple(visual.image_size)
            self.fixed_size = False
            self.patch_grid = self.grid_for(-1)
            self._stage_names = [i["module"] for i in info]
        else:
            raise ConfigError(f"Unsupported open_clip visual tower {type(visual).__name__} for '{config.architecture}'")

    def _intermediates(self, pixels: torch.Tensor, indices: list[int], with_cls: bool) -> list[LayerOutput]:
        if self._kind == "timm_vit":
            return vit_intermediates(self.model.trunk, pixels, indices, with_cls)
        if self._kind == "timm_convnet":
            return convnet_intermediates(self.model.trunk, pixels, indices)
        out = self.model.forward_intermediates(
            pixels,
            indices=indices,
            stop_early=True,
            intermediates_only=True,
            output_fmt="NLC",
            output_extra_tokens=with_cls,
        )
        grid = tuple(self.patch_grid)
        tokens = out["image_intermediates"]
        if with_cls:
            tokens = [torch.cat([p, t], dim=1) for p, t in zip(out["image_intermediates_prefix"], tokens, strict=True)]
        return [(t, grid) for t in tokens]

    def blocks(self) -> list[nn.Module]:
        if self._kind == "openclip_vit":
            return list(self.model.transformer.resblocks)
        if self._kind == "timm_vit":
            return list(self.model.trunk.blocks)
        return [self.model.trunk.get_submodule(name) for name in self._stage_names]

    def default_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        mean = getattr(self.model, "image_mean", None)
        std = getattr(self.model, "image_std", None)
        if mean is None and self.config.pretrained and local_path(self.config.pretrained) is None:
            tag = open_clip.get_pretrained_cfg(self.config.architecture, self.config.pretrained) or {}
            mean, std = tag.get("mean"), tag.get("std")
        return tuple(mean or OPENAI_DATASET_MEAN), tuple(std or OPENAI_DATASET_STD)
