"""An analytic cost model of encoder + bridge + LM for N images: FLOPs and memory of the prefill and of a decoded token.

It explains the multi-image scaling curves (``benchmarks.scaling``) and evaluates them at sizes no CPU can run
(:func:`paper_table`: Qwen2-7B + SigLIP-so400m, LLaVA-Next-Interleave concatenation against Hyper Attention).

FLOPs follow ``torch.utils.flop_counter``'s convention (2 per multiply-add of every matmul, attention counted over
the full ``L x S`` score matrix even when causal, elementwise ops and norms not counted), so they can be checked
against the counter. Sizes (all per sample, one sample of N images, ``P`` patches, ``T`` tokens per image):

* encoder: a ViT run up to the deepest layer the bridge reads: ``2 P (3 p^2) D`` for the patch embedding, then per
  block ``2 P 4 D^2`` (q, k, v, o), ``4 P^2 D`` (attention), ``2 P 2 D F`` (MLP);
* bridge: its declared ``flops_per_media`` (prefix: the whole bridge; inject: the resampler or projector and the K/V
  projections of the visual memory), plus for inject bridges the text-side work of the inserted modules;
* LM over ``S`` tokens (prefix: ``S = text + N (T - 1)``; inject: ``S = text``): per layer
  ``2 S d (2 d + 2 d_kv)`` + ``4 S^2 d`` + ``2 S 3 d F`` (SwiGLU), and the LM head on the last position only (HF
  ``generate`` keeps one row of logits at prefill).

Memory (bytes of tensors, weights excluded: what a prefill adds): the KV cache ``2 layers S d_kv b``, the inject
bridges' visual K/V (held for the whole generation), the encoder's kept layers, and the largest transient of the
phases (encoder block, LM layer MLP), with attention in a fused kernel (no ``S^2`` scores). This module imports
nothing from ``benchmarks`` or ``experiments``; a built ``MultimodalLM`` is read by duck typing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EncoderShape:
    """A ViT: ``patches`` tokens per image of ``width``, ``layers`` blocks run, MLP width ``ffn``, ``patch`` px,
    ``heads`` attention heads (memory of unfused attention only), ``kept_layers`` layers handed to the bridge."""

    patches: int
    width: int
    layers: int
    ffn: int
    patch: int
    channels: int = 3
    kept_layers: int = 1
    heads: int = 1


@dataclass(frozen=True)
class LMShape:
    """A Llama-style decoder (SwiGLU MLP, GQA)."""

    layers: int
    width: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim


@dataclass(frozen=True)
class BridgeShape:
    """What the model needs of a bridge.

    Attributes:
        kind: ``prefix`` or ``inject``.
        tokens: T, tokens per image in the LM (prefix) or in the visual memory (inject).
        flops_per_media: the bridge's declared FLOPs per image.
        injected: inserted modules (HATB layers, xattn blocks).
        style: ``hyper`` (HATB: the layer's query over visual K/V, a ``head_dim`` gate) or ``xattn`` (Flamingo's
            gated cross-attention + FFN block before an LM layer).
        inner: attention width of the inserted modules (``heads x head_dim``); xattn only.
        kv_width: width of the visual K or V per token in each inserted module.
        ffn: FFN width of an xattn block; ``ffn_mats`` 2 (GELU) or 3 (SwiGLU) matrices.
        memory_width: width of the visual memory tensor (held for the generation).
    """

    kind: str
    tokens: int
    flops_per_media: int
    injected: int = 0
    style: str = ""
    inner: int = 0
    kv_width: int = 0
    ffn: int = 0
    ffn_mats: int = 2
    memory_width: int = 0


@dataclass
class Cost:
    """Predicted cost of one sample with ``n`` images (FLOPs; bytes at ``bytes_per_value``)."""

    n: int
    lm_sequence_length: int
    prefill_flops: float
    decode_flops_per_token: float
    kv_cache_bytes: float
    visual_kv_bytes: float
    prefill_peak_bytes: float
    parts: dict[str, float] = field(default_factory=dict)


def encoder_flops(enc: EncoderShape) -> float:
    """Forward FLOPs of one image through ``enc.layers`` blocks."""
    p, d = enc.patches, enc.width
    block = 2 * p * 4 * d * d + 4 * p * p * d + 2 * p * 2 * d * enc.ffn
    return 2 * p * enc.channels * enc.patch**2 * d + enc.layers * block


def lm_layer_flops(lm: LMShape, queries: int, keys: int) -> float:
    """One decoder layer for ``queries`` new tokens attending to ``keys`` (cache included)."""
    d, inner = lm.width, lm.heads * lm.head_dim
    projections = 2 * queries * d * (2 * inner + 2 * lm.kv_width)
    return projections + 4 * queries * keys * inner + 2 * queries * 3 * d * lm.ffn


def injected_flops(bridge: BridgeShape, lm: LMShape, queries: int, visual: int) -> float:
    """Text-side FLOPs of the inserted modules for ``queries`` tokens over ``visual`` memory tokens."""
    if bridge.kind != "inject":
        return 0.0
    if bridge.style == "hyper":  # the layer's own q/k/v/o are in lm_layer_flops; here the visual attention + gate
        per = 4 * queries * visual * lm.heads * lm.head_dim + 2 * queries * lm.heads * lm.head_dim**2
    elif bridge.style == "xattn":
        per = 2 * queries * lm.width * bridge.inner * 2 + 4 * queries * visual * bridge.inner
        per += 2 * queries * lm.width * bridge.ffn * bridge.ffn_mats
    else:
        raise ValueError(f"Unknown inject style '{bridge.style}': use 'hyper' or 'xattn'.")
    return bridge.injected * per


def predict(
    enc: EncoderShape,
    bridge: BridgeShape,
    lm: LMShape,
    n: int,
    text_tokens: int,
    bytes_per_value: int = 4,
    fused_attention: bool = True,
) -> Cost:
    """FLOPs and memory of a prefill (and of the first decoded token) for one sample with ``n`` images.

    ``fused_attention=False``: every attention materialises its scores and probabilities (``2 H L S`` values, as
    eager or math attention do): the encoder's over each image's patches, the LM's over the sequence, a HATB's
    over the visual memory.
    """
    if n < 0 or text_tokens < 1:
        raise ValueError(f"Need n >= 0 images and text_tokens >= 1, got n={n}, text_tokens={text_tokens}.")
    b = bytes_per_value
    seq = text_tokens + (n * (bridge.tokens - 1) if bridge.kind == "prefix" else 0)
    visual = n * bridge.tokens if bridge.kind == "inject" else 0
    parts = {
        "encoder": n * encoder_flops(enc),
        "bridge": n * bridge.flops_per_media + injected_flops(bridge, lm, seq, visual),
        "lm": lm.layers * lm_layer_flops(lm, seq, seq) + 2 * lm.width * lm.vocab,
    }
    decode = lm.layers * lm_layer_flops(lm, 1, seq + 1) + 2 * lm.width * lm.vocab
    decode += injected_flops(bridge, lm, 1, visual)
    kv = 2 * lm.layers * seq * lm.kv_width * b
    visual_kv = 2 * bridge.injected * visual * bridge.kv_width * b if bridge.kind == "inject" else 0
    held = n * enc.patches * enc.width * enc.kept_layers * b + visual * bridge.memory_width * b
    encoder_transient = n * enc.patches * (3 * enc.width + enc.ffn) * b
    lm_transient = seq * (3 * lm.ffn + 4 * lm.width) * b + lm.vocab * b
    if not fused_attention:
        encoder_transient += 2 * n * enc.heads * enc.patches**2 * b
        scores = seq * (seq + (visual if bridge.style == "hyper" else 0))
        lm_transient += 2 * lm.heads * scores * b
    peak = kv + visual_kv + held + max(encoder_transient, lm_transient + seq * lm.width * b)
    return Cost(n, seq, sum(parts.values()), decode, kv, visual_kv, peak, parts)


# ---- reading a built model (duck typing: bridges does not import llm_adapters) ------------------------------------


def shapes_from_model(model: Any) -> tuple[EncoderShape, BridgeShape, LMShape]:
    """The shapes of a built ``MultimodalLM`` with one ViT-like encoder and a Llama-style LM."""
    bridge = model.bridge
    names = list(model.encoders.names)
    if len(names) != 1:
        raise NotImplementedError("The cost model covers one encoder; this model has " + ", ".join(names))
    encoder = model.encoders[names[0]]
    blocks = list(encoder.blocks())
    grid = tuple(encoder.patch_grid)
    layers = [i % encoder.num_layers for i in bridge.needs.layers]
    enc = EncoderShape(
        patches=math.prod(grid), width=encoder.width, layers=max(layers) + 1,
        ffn=blocks[0].mlp.fc1.out_features, patch=encoder.image_size[0] // grid[0], kept_layers=len(set(layers)),
    )
    cfg = model.lm.model.config
    info = model.lm.info
    lm = LMShape(info.num_layers, info.hidden_size, info.num_heads, info.num_kv_heads or info.num_heads,
                 info.head_dim or info.hidden_size // info.num_heads, cfg.intermediate_size, cfg.vocab_size)
    return enc, bridge_shape(bridge, lm), lm


def bridge_shape(bridge: Any, lm: LMShape) -> BridgeShape:
    """A built bridge's :class:`BridgeShape` (``flops_per_media`` from the bridge's own declaration)."""
    tokens, flops = int(bridge.num_visual_tokens(1)), int(bridge.flops_per_media(1))
    if bridge.kind == "prefix":
        return BridgeShape("prefix", tokens, flops)
    name = getattr(bridge, "registry_name", type(bridge).__name__)
    c = bridge.config
    if hasattr(bridge, "hyper"):
        return BridgeShape("inject", tokens, flops, len(bridge.hyper), "hyper", kv_width=lm.kv_width,
                           memory_width=lm.width)
    if hasattr(bridge, "xattn"):
        inner = c.xattn_heads * c.xattn_dim_head
        mats = 3 if c.ff_activation == "swiglu" else 2
        return BridgeShape("inject", tokens, flops, len(bridge.xattn), "xattn", inner=inner, kv_width=inner,
                           ffn=int(c.ff_mult * lm.width), ffn_mats=mats, memory_width=bridge.io.encoder.width)
    raise NotImplementedError(f"No cost model for the inject bridge '{name}'.")


def predict_from_model(model: Any, n: int, text_tokens: int, bytes_per_value: int = 4) -> Cost:
    """:func:`predict` for a built model; ``text_tokens``: the prompt's ids, one ``<image>`` per image included."""
    enc, bridge, lm = shapes_from_model(model)
    return predict(enc, bridge, lm, n, text_tokens, bytes_per_value)
