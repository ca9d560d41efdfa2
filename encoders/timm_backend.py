"""timm backbones: ViT-family models through ``forward_intermediates`` and ConvNets by feature stage.

``timm_vit`` covers every timm model with ``patch_embed``/``blocks`` and ``forward_intermediates`` (ViT, EVA, DeiT,
...); a layer is a transformer block. ``timm_convnet`` covers models with ``feature_info`` and
``forward_intermediates`` (ConvNeXt, ResNet, EfficientNet, RegNet, ...); a layer is a feature stage (the entries of
``model.feature_info``; for ResNets entry 0 is the stem at stride 2). Both run only up to the deepest requested
layer (``stop_early``) and keep the plain timm module, so ``model.state_dict()`` is an ordinary timm state dict.

The helpers :func:`vit_intermediates` and :func:`convnet_intermediates` are shared with the open_clip backend,
whose large towers (EVA, ConvNeXt-XXL) are timm trunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from einops import rearrange
from timm.layers import resample_abs_pos_embed
from torch import nn

from encoders.backbone import Backbone, LayerOutput
from encoders.builder import ENCODERS
from encoders.config import EncoderConfig, load_state_file, local_path, pretrained_error
from encoders.registry import ConfigError


@dataclass
class TimmViTConfig(EncoderConfig):
    """A timm ViT-family model (see :class:`~encoders.config.EncoderConfig` for the shared fields).

    Attributes:
        architecture: timm model name, e.g. ``vit_large_patch14_clip_336`` or ``eva_giant_patch14_clip_224``.
        model_kwargs: constructor overrides passed to ``timm.create_model`` (``patch_size``, ``depth``,
            ``embed_dim``, ``num_heads``, ``mlp_ratio``, ``class_token``, ``global_pool``, ``dynamic_img_size``, ...);
            the input size goes in ``image_size``, not ``img_size``.
        strict_load: require the checkpoint to have no keys the model lacks. ``False`` follows BLIP-2, which loads
            the 40-block EVA-CLIP checkpoint into a 39-block ViT-g (``depth: 39``) and drops the last block.
            Missing keys are an error either way.

    A ``pretrained`` local file or directory holds a plain timm ``state_dict`` (``.safetensors`` or torch); a
    position embedding of another grid is resampled (bicubic) and classifier-head keys are ignored. Any other
    string is a timm tag (``laion400m``), a full ``name.tag``, or ``hf-hub:org/repo``.
    """

    architecture: str = "vit_base_patch16_224"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    strict_load: bool = True


@dataclass
class TimmConvNetConfig(EncoderConfig):
    """A timm ConvNet used by feature stage (shared fields: :class:`~encoders.config.EncoderConfig`).

    Attributes:
        architecture: timm model name, e.g. ``convnext_xxlarge``, ``convnext_atto``, ``resnet50``.
        model_kwargs: constructor overrides for ``timm.create_model`` (ConvNeXt: ``depths``, ``dims``; ResNet:
            ``layers``, ``base_width`` ...). ``image_size`` only sets the transform size and the reported grid:
            convolutions take any input size.
        strict_load: as for :class:`TimmViTConfig`.
    """

    architecture: str = "convnext_atto"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    strict_load: bool = True


# ---- shared helpers (also used by the open_clip backend) --------------------------------------------------------


def vit_intermediates(model: nn.Module, pixels: torch.Tensor, indices: list[int], with_cls: bool) -> list[LayerOutput]:
    """Block outputs ``indices`` of a timm ViT-family model as ``(N, [prefix +] h*w, D)`` tokens with their grid."""
    keep_prefix = with_cls and model.num_prefix_tokens > 0
    outs = model.forward_intermediates(
        pixels,
        indices=indices,
        stop_early=True,
        output_fmt="NLC",
        intermediates_only=True,
        return_prefix_tokens=keep_prefix,
    )
    grid = vit_grid(model, tuple(pixels.shape[-2:]))
    if keep_prefix:
        return [(torch.cat([prefix, spatial], dim=1), grid) for spatial, prefix in outs]
    return [(tokens, grid) for tokens in outs]


def vit_grid(model: nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    patch_embed = model.patch_embed
    if getattr(model, "dynamic_img_size", False):
        return tuple(patch_embed.dynamic_feat_size(size))
    return tuple(patch_embed.grid_size)


def convnet_intermediates(model: nn.Module, pixels: torch.Tensor, indices: list[int]) -> list[LayerOutput]:
    """Feature stages ``indices`` of a timm ConvNet: each map ``(N, C, h, w)`` as tokens ``(N, h*w, C)``."""
    maps = model.forward_intermediates(pixels, indices=indices, stop_early=True, intermediates_only=True)
    return [(rearrange(m, "n c h w -> n (h w) c"), (m.shape[-2], m.shape[-1])) for m in maps]


def check_timm_model(model: nn.Module, kind: str, name: str) -> None:
    if not hasattr(model, "forward_intermediates"):
        raise ConfigError(f"timm model '{name}' has no forward_intermediates (timm >= 1.0 needed, or pick another).")
    if kind == "vit" and not (hasattr(model, "patch_embed") and hasattr(model, "blocks")):
        raise ConfigError(f"timm model '{name}' is not a ViT-family model (no patch_embed/blocks); use timm_convnet.")
    if kind == "convnet" and not getattr(model, "feature_info", None):
        raise ConfigError(f"timm model '{name}' has no feature_info; use timm_vit for transformer models.")


def load_timm_state(model: nn.Module, source: Path, strict: bool) -> None:
    """Load a plain timm state dict file/directory, resampling ``pos_embed`` to the model's grid."""
    state = load_state_file(source)
    own = model.state_dict()
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"], new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix
        )
    state = {k: v for k, v in state.items() if k in own or not k.startswith(("head.", "fc_norm.", "head_drop."))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise RuntimeError(f"Weights '{source}' lack {len(missing)} model keys, e.g. {missing[:5]}")
    if unexpected and strict:
        raise RuntimeError(
            f"Weights '{source}' have {len(unexpected)} keys the model lacks, e.g. {unexpected[:5]}. "
            "Set strict_load: false to drop them (as BLIP-2 does for EVA's last block)."
        )


def create_timm(
    config: TimmViTConfig | TimmConvNetConfig, external: str | None, kwargs: dict[str, Any], who: str
) -> nn.Module:
    """``timm.create_model`` with the config's weights: none, a local state dict, or a timm tag / hub id."""
    kwargs = {"num_classes": 0, **config.model_kwargs, **kwargs}
    if config.meta_device:
        with torch.device("meta"):
            return timm.create_model(config.architecture, pretrained=False, **kwargs)
    path = local_path(external)
    if external is None or path is not None:
        model = timm.create_model(config.architecture, pretrained=False, **kwargs)
        if path is not None:
            load_timm_state(model, path, config.strict_load)
        return model
    if external.startswith("hf-hub:") or "." in external:
        name = external
    else:
        name = f"{config.architecture}.{external}"
    try:
        return timm.create_model(name, pretrained=True, pretrained_strict=config.strict_load, **kwargs)
    except Exception as err:  # network/cache errors come in many types
        raise pretrained_error(who, external, err) from err


def timm_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.5, 0.5, 0.5))), tuple(cfg.get("std", (0.5, 0.5, 0.5)))


# ---- registered encoders ----------------------------------------------------------------------------------------


@ENCODERS.register("timm_vit", TimmViTConfig)
class TimmViT(Backbone):
    """A timm ViT-family model; layer ``i`` is the output of block ``i`` (before the final norm)."""

    def _build(self, config: TimmViTConfig, external: str | None) -> None:
        if "img_size" in config.model_kwargs:
            raise ConfigError("Set the input size with image_size, not model_kwargs.img_size.")
        kwargs = {"img_size": config.image_size} if config.image_size else {}
        self.model = create_timm(config, external, kwargs, self.registry_name)
        check_timm_model(self.model, "vit", config.architecture)
        patch = tuple(self.model.patch_embed.patch_size)
        if patch[0] != patch[1]:
            raise ConfigError(f"Non-square patches {patch} are not supported")
        self.width = int(self.model.embed_dim)
        self.num_layers = len(self.model.blocks)
        self.layer_widths = (self.width,) * self.num_layers
        self.layer_reductions = (patch[0],) * self.num_layers
        self.image_size = tuple(self.model.patch_embed.img_size)
        self.patch_grid = tuple(self.model.patch_embed.grid_size)
        self.num_prefix_tokens = int(self.model.num_prefix_tokens)
        self.fixed_size = not getattr(self.model, "dynamic_img_size", False)

    def _intermediates(self, pixels: torch.Tensor, indices: list[int], with_cls: bool) -> list[LayerOutput]:
        return vit_intermediates(self.model, pixels, indices, with_cls)

    def blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def default_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return timm_mean_std(self.model)


@ENCODERS.register("timm_convnet", TimmConvNetConfig)
class TimmConvNet(Backbone):
    """A timm ConvNet; layer ``i`` is feature stage ``i`` (``model.feature_info[i]``), returned as tokens."""

    fixed_size = False

    def _build(self, config: TimmConvNetConfig, external: str | None) -> None:
        self.model = create_timm(config, external, {}, self.registry_name)
        check_timm_model(self.model, "convnet", config.architecture)
        info = list(self.model.feature_info)
        self.num_layers = len(info)
        self.layer_widths = tuple(int(i["num_chs"]) for i in info)
        self.layer_reductions = tuple(int(i["reduction"]) for i in info)
        self.width = self.layer_widths[-1]
        native = self.model.pretrained_cfg.get("input_size", (3, 224, 224))[-2:]
        self.image_size = (config.image_size,) * 2 if config.image_size else tuple(native)
        self.patch_grid = self.grid_for(-1)
        self._stage_names = [i["module"] for i in info]

    def _intermediates(self, pixels: torch.Tensor, indices: list[int], with_cls: bool) -> list[LayerOutput]:
        return convnet_intermediates(self.model, pixels, indices)

    def blocks(self) -> list[nn.Module]:
        return [self.model.get_submodule(name) for name in self._stage_names]

    def default_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return timm_mean_std(self.model)
