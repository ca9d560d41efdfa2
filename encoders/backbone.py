"""The machinery every encoder backend shares: build, freeze, train/eval policy, layer selection, save/load.

A backend (timm, open_clip, HF) subclasses :class:`Backbone` and implements three things: :meth:`_build` (make
the library model, loading library-format weights), :meth:`_intermediates` (only the requested block outputs)
and :meth:`blocks`. Everything a bridge sees goes through :meth:`forward`, which returns
:class:`~encoders.base.VisionFeatures` in request order.

Train/eval policy (why ``train()`` is overridden): a frozen encoder must behave identically in every step, so
dropout stays off and BatchNorm statistics stay fixed. After ``nn.Module.train(mode)``, every submodule whose
subtree holds parameters but none trainable is put back in eval mode; parameter-free submodules (dropout,
activations) follow their parent. So a fully frozen encoder is always in eval mode, ``unfreeze_last_k`` blocks
train normally, and code that changes ``requires_grad`` later (a training stage that unfreezes the encoder)
should call ``train()`` afterwards for the policy to see it.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from encoders.base import VisionEncoder, VisionFeatures, resolve_layers
from encoders.config import (
    FORMAT_VERSION,
    SAVED_CONFIG,
    SAVED_WEIGHTS,
    adopt_saved_config,
    config_to_dict,
    is_saved_dir,
    load_state_file,
)
from encoders.registry import ConfigError
from encoders.transforms import ImageTransform

# One requested layer's output: tokens (N, P, D) with any kept prefix first, and that layer's grid (h, w).
LayerOutput = tuple[torch.Tensor, tuple[int, int]]


class Backbone(VisionEncoder):
    """Common base of the timm, open_clip and HF encoders.

    Attributes set by subclasses in :meth:`_build`:
        model: the wrapped library module (its ``state_dict`` is what ``save_pretrained`` writes).
        width: hidden size of the last layer (ViTs: every layer).
        num_layers: number of selectable layers (ViT blocks; ConvNet feature stages).
        layer_widths: width of each layer, ``(num_layers,)``; differs per stage for ConvNets.
        layer_reductions: stride of each layer's grid w.r.t. the input pixels.
        image_size: ``(H, W)`` the encoder is built for (what :meth:`transform` resizes to).
        patch_grid: grid of the last layer at ``image_size``.
        num_prefix_tokens: leading non-patch tokens the model carries (CLS, registers); 0 for ConvNets/SigLIP.
        mean, std: the normalisation the weights expect.
        fixed_size: whether inputs must be exactly ``image_size`` (ViTs without dynamic size).
    """

    registry_name: ClassVar[str]
    model: nn.Module
    layer_widths: tuple[int, ...]
    layer_reductions: tuple[int, ...]
    num_prefix_tokens: int = 0
    fixed_size: bool = True

    def __init__(self, config: Any) -> None:
        super().__init__()
        config = adopt_saved_config(config, self.registry_name)
        if config.unfreeze_last_k < 0:
            raise ConfigError(f"unfreeze_last_k must be >= 0; got {config.unfreeze_last_k}")
        if config.unfreeze_last_k and not config.frozen:
            raise ConfigError("unfreeze_last_k only applies to a frozen encoder; set frozen: true or drop it.")
        self.config = config
        saved = is_saved_dir(config.pretrained)
        external = None if (saved or config.meta_device) else config.pretrained
        self._build(config, external)
        if saved and not config.meta_device:
            self.model.load_state_dict(load_state_file(Path(config.pretrained).expanduser() / SAVED_WEIGHTS))
        self._set_normalisation(config)
        if config.unfreeze_last_k > self.num_layers:
            raise ConfigError(f"unfreeze_last_k={config.unfreeze_last_k} exceeds the {self.num_layers} blocks")
        if config.frozen:
            self.unfreeze_last_k(config.unfreeze_last_k)
        self.train()

    # ---- what a backend implements -------------------------------------------------------------------------

    @abc.abstractmethod
    def _build(self, config: Any, external: str | None) -> None:
        """Create ``self.model`` (on the meta device if asked) and set the attributes listed in the class doc.

        ``external`` is ``config.pretrained`` unless it is a saved directory or the build is on the meta device;
        the backend loads it (local file/directory or library id) in its own format.
        """

    @abc.abstractmethod
    def _intermediates(self, pixels: torch.Tensor, indices: list[int], with_cls: bool) -> list[LayerOutput]:
        """Outputs of the sorted, unique absolute ``indices``, without computing later layers."""

    def default_mean_std(self) -> tuple[Sequence[float], Sequence[float]]:
        """The normalisation the weights expect when the config does not override it."""
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    # ---- shared behaviour ------------------------------------------------------------------------------------

    def forward(self, pixels: torch.Tensor, layers: int | Sequence[int] = -1, with_cls: bool = False) -> VisionFeatures:
        """Encode normalised ``pixels (N, C, H, W)``; return the requested ``layers`` in request order.

        ``with_cls`` keeps the model's prefix tokens (CLS and any registers) in front of the patch tokens;
        ``VisionFeatures.num_prefix`` says how many (0 for models without prefix tokens). For ConvNets each stage map
        ``(N, C, h, w)`` becomes tokens ``(N, h*w, C)``; stages differ in grid and width, so ``grid`` and ``width``
        describe the last requested layer and ``layer_widths``/``layer_reductions`` give the others.
        """
        self._check_pixels(pixels)
        absolute = resolve_layers(layers, self.num_layers)
        wanted = sorted(set(absolute))
        if pixels.shape[0] == 0:  # a batch without media: some attention kernels cannot reshape 0 elements
            computed = self._empty_outputs(pixels, wanted, with_cls)
        else:
            computed = self._intermediates(pixels.to(self._dtype()), wanted, with_cls)
        outputs = dict(zip(wanted, computed, strict=True))
        last = absolute[-1]
        return VisionFeatures(
            hidden=tuple(outputs[i][0] for i in absolute),
            layers=absolute,
            grid=outputs[last][1],
            width=self.layer_widths[last],
            num_prefix=self.num_prefix_tokens if with_cls else 0,
        )

    def grid_for(self, layer: int = -1, image_size: tuple[int, int] | None = None) -> tuple[int, int]:
        """The grid of ``layer`` for inputs of ``image_size`` (default: the built size).

        Exact when the size is a multiple of the layer's stride (ResNet-style padded stems round up otherwise;
        ``forward`` always reports the true grid).
        """
        (index,) = resolve_layers(layer, self.num_layers)
        height, width = image_size or self.image_size
        stride = self.layer_reductions[index]
        return height // stride, width // stride

    def transform(self) -> ImageTransform:
        """Resize to ``image_size`` and normalise; takes float images in ``[0, 1]``, ``(..., C, H, W)``."""
        return ImageTransform(tuple(self.image_size), tuple(self.mean), tuple(self.std))

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode:
            _keep_frozen_in_eval(self)
        return self

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``encoder.json`` (registry name + resolved config) and ``model.safetensors``; return the path."""
        if any(p.is_meta for p in self.model.parameters()):
            raise RuntimeError("A meta-device encoder has no weights to save; build it with meta_device: false.")
        from safetensors.torch import save_file

        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        config = config_to_dict(dataclasses.replace(self.config, pretrained=None, meta_device=False))
        meta = {"format": FORMAT_VERSION, "name": self.registry_name, "config": config, "versions": _versions()}
        (directory / SAVED_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(directory / SAVED_WEIGHTS))
        return directory

    def extra_repr(self) -> str:
        return (
            f"name={self.registry_name}, width={self.width}, num_layers={self.num_layers}, "
            f"image_size={tuple(self.image_size)}, grid={tuple(self.patch_grid)}"
        )

    # ---- helpers ---------------------------------------------------------------------------------------------

    def _set_normalisation(self, config: Any) -> None:
        mean, std = self.default_mean_std()
        self.mean = tuple(float(v) for v in (config.mean if config.mean is not None else mean))
        self.std = tuple(float(v) for v in (config.std if config.std is not None else std))
        if len(self.mean) != len(self.std):
            raise ConfigError(f"mean has {len(self.mean)} entries but std has {len(self.std)}")

    def _empty_outputs(self, pixels: torch.Tensor, indices: list[int], with_cls: bool) -> list[LayerOutput]:
        prefix = self.num_prefix_tokens if with_cls else 0
        size = (pixels.shape[-2], pixels.shape[-1])
        out = []
        for i in indices:
            grid = self.grid_for(i, size)
            shape = (0, prefix + grid[0] * grid[1], self.layer_widths[i])
            out.append((pixels.new_zeros(shape, dtype=self._dtype()), grid))
        return out

    def _dtype(self) -> torch.dtype | None:
        param = next(self.model.parameters(), None)
        return None if param is None else param.dtype

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        if pixels.dim() != 4:
            hint = ""
            if pixels.dim() == 5:
                hint = " Flatten frames into the batch: rearrange(x, 'n f c h w -> (n f) c h w')."
            raise ValueError(f"{self.registry_name}: expected pixels (N, C, H, W); got {tuple(pixels.shape)}.{hint}")
        if pixels.shape[1] != len(self.mean):
            raise ValueError(f"{self.registry_name}: expected {len(self.mean)} channels; got {pixels.shape[1]}")
        if self.fixed_size and tuple(pixels.shape[-2:]) != tuple(self.image_size):
            (height, width), got = self.image_size, f"{pixels.shape[-2]}x{pixels.shape[-1]}"
            raise ValueError(
                f"{self.registry_name}: built for {height}x{width} inputs; got {got}. "
                f"Resize with encoder.transform(), or build it with image_size: {pixels.shape[-1]} "
                f"(position embeddings are interpolated)."
            )


def _keep_frozen_in_eval(root: nn.Module) -> None:
    """Put every submodule whose parameters are all frozen in eval mode (see the module docstring)."""
    has_params: dict[int, bool] = {}
    trainable: dict[int, bool] = {}
    modules = list(root.modules())
    for module in reversed(modules):  # children come after parents in modules(); go bottom-up
        own = list(module.parameters(recurse=False))
        kids = list(module.children())
        has_params[id(module)] = bool(own) or any(has_params[id(k)] for k in kids)
        trainable[id(module)] = any(p.requires_grad for p in own) or any(trainable[id(k)] for k in kids)

    def visit(module: nn.Module, parent_training: bool) -> None:
        training = trainable[id(module)] if has_params[id(module)] else parent_training
        module.training = training and module.training
        for child in module.children():
            visit(child, module.training)

    visit(root, root.training)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("torch", "timm", "open_clip_torch", "transformers"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out
