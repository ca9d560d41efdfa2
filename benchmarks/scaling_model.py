"""The fixed small model of the scaling study: one encoder and one LM for every bridge, and a batch of N images.

Every bridge sees the same patches (a 4-block timm ViT, 64x64 images, patch 8 -> 64 patches of width 128) and feeds
the same LM (a 4-layer Qwen2, width 128, 4 heads / 2 KV heads), so the curves differ by the bridge alone. Bridge
sizes are shrunk alike (widths 128, 2 layers, 32 latents / queries); the prefix bridges put T tokens per image into
the LM (``mlp`` all 64 patches, ``qformer`` / ``perceiver`` 32), the inject bridges one ``<image>`` token per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from llm_adapters.batch import MultimodalBatch
from llm_adapters.multimodal_lm import MultimodalLM, build_multimodal_lm

ENCODER: dict[str, Any] = {
    "name": "timm_vit",
    "architecture": "vit_tiny_patch16_224",
    "image_size": 64,
    "pretrained": None,
    "model_kwargs": {
        "patch_size": 8, "depth": 4, "embed_dim": 128, "num_heads": 4, "mlp_ratio": 2, "class_token": False,
        "global_pool": "avg",
    },
}

LM: dict[str, Any] = {
    "name": "tiny_qwen2",
    "config": {
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 65536,
    },
}

BRIDGES: dict[str, dict[str, Any]] = {
    "mlp": {"name": "mlp"},
    "qformer": {
        "name": "qformer", "with_cls": False, "num_query_tokens": 32, "hidden_size": 128, "num_layers": 2,
        "num_heads": 4, "intermediate_size": 256,
    },
    "perceiver": {"name": "perceiver", "depth": 2, "heads": 4, "dim_head": 32, "num_latents": 32},
    "flamingo": {
        "name": "flamingo", "perceiver_depth": 2, "perceiver_heads": 4, "perceiver_dim_head": 32, "num_latents": 32,
        "xattn_heads": 4, "xattn_dim_head": 32, "cross_attn_every_n_layers": 4,
    },
    "hyper_attention": {"name": "hyper_attention", "hyper_layers": [0]},
}

#: The text around the images: the same for every N and every bridge.
PROMPT_BEFORE = "look at the images :"
PROMPT_AFTER = "which image shows the red square ? answer :"


@dataclass(frozen=True)
class Setup:
    """What the study builds (the module constants by default; tests may shrink them)."""

    encoder: dict[str, Any] = field(default_factory=lambda: dict(ENCODER))
    lm: dict[str, Any] = field(default_factory=lambda: dict(LM))
    bridges: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(BRIDGES))


def build(bridge: str, setup: Setup, device: torch.device) -> MultimodalLM:
    """The study's model for ``bridge`` (seeded, eval mode, on ``device``)."""
    if bridge not in setup.bridges:
        raise ValueError(f"Unknown scaling bridge '{bridge}'. Known: {sorted(setup.bridges)}.")
    torch.manual_seed(0)
    return build_multimodal_lm(setup.encoder, setup.bridges[bridge], setup.lm).to(device).eval()


def images_batch(model: MultimodalLM, n: int, device: torch.device, seed: int = 0) -> MultimodalBatch:
    """One sample with ``n`` images between the fixed texts: ``(1, L)`` ids, ``(n, 1, 3, H, W)`` pixels."""
    tokenizer = model.lm.tokenizer
    before = tokenizer(PROMPT_BEFORE, add_special_tokens=False)["input_ids"]
    after = tokenizer(PROMPT_AFTER, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([before + [model.image_token_id] * n + after], device=device)
    encoder = next(iter(model.encoders[name] for name in model.encoders.names))
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, 1, 3, *encoder.image_size, generator=g).to(device)
    return MultimodalBatch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=pixels,
        media_to_sample=torch.zeros(n, dtype=torch.long, device=device),
    )


def lm_sequence_length(model: MultimodalLM, batch: MultimodalBatch) -> int:
    """Tokens the LM attends over at prefill: T per image for a prefix bridge, its one placeholder when injected."""
    length = batch.input_ids.shape[1]
    if model.bridge.kind == "prefix":
        length += batch.num_media * (model.bridge.num_visual_tokens(batch.num_frames) - 1)
    return length


def tensor_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of every distinct tensor reachable from ``obj`` (a KV cache and its layers, lists, dicts)."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and id(obj) not in seen:
        seen.add(id(obj))
        return sum(tensor_bytes(v, seen) for v in vars(obj).values())
    return 0
