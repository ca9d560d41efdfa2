"""Vision encoders: pixels in, the requested hidden layers out as patch tokens (:class:`VisionFeatures`).

Backends (registry names): ``timm_vit``, ``timm_convnet``, ``open_clip``, ``hf_clip``, ``hf_siglip``. Build one
with :func:`build_encoder` from a registry name, a preset (``list_presets()``; YAML files in
``experiments/configs/encoder/``) or a mapping; several at once with :func:`build_encoder_set`.

The backends (and with them timm, open_clip and transformers) are imported on first use, so ``import bridges``
(which needs only :mod:`encoders.base`) stays cheap. ``encoders.ENCODERS`` and the backend classes are resolved
lazily; :func:`build_encoder` and :func:`list_encoders` import the backends themselves.
"""

from importlib import import_module
from typing import Any

from encoders.base import VisionEncoder, VisionFeatures, resolve_layers
from encoders.builder import build_encoder, list_encoders, load_encoder, register_builtin_backends
from encoders.config import EncoderConfig
from encoders.encoder_set import EncoderSet, build_encoder_set
from encoders.presets import list_presets, load_preset
from encoders.transforms import ImageTransform

_LAZY = {
    "ENCODERS": "encoders.builder",
    "Backbone": "encoders.backbone",
    "TimmViT": "encoders.timm_backend",
    "TimmViTConfig": "encoders.timm_backend",
    "TimmConvNet": "encoders.timm_backend",
    "TimmConvNetConfig": "encoders.timm_backend",
    "OpenCLIPEncoder": "encoders.open_clip_backend",
    "OpenCLIPConfig": "encoders.open_clip_backend",
    "HFCLIPEncoder": "encoders.hf_backend",
    "HFCLIPConfig": "encoders.hf_backend",
    "HFSiglipEncoder": "encoders.hf_backend",
    "HFSiglipConfig": "encoders.hf_backend",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        register_builtin_backends()
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'encoders' has no attribute '{name}'")


__all__ = [
    "EncoderConfig",
    "EncoderSet",
    "ImageTransform",
    "VisionEncoder",
    "VisionFeatures",
    "build_encoder",
    "build_encoder_set",
    "list_encoders",
    "list_presets",
    "load_encoder",
    "load_preset",
    "resolve_layers",
    *_LAZY,
]
