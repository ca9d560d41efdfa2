"""Tiny stand-ins shared by the llm_adapters tests: a conv-patch encoder (in a real EncoderSet), a linear prefix
bridge, a gated inject bridge.

The bridges are registered under test-only names (``_test_linear``, ``_test_gated``). The tests at the bottom check
the fakes themselves, so a failure elsewhere is not a fake's fault.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from einops import rearrange
from torch import nn

from bridges.base import (
    BRIDGES,
    BridgeIO,
    BridgeNeeds,
    ContextSlot,
    InjectBridge,
    Injection,
    LMHost,
    PrefixBridge,
)
from bridges.common.kv_cache import find_cache
from encoders import EncoderSet, ImageTransform
from encoders.base import VisionEncoder, VisionFeatures, resolve_layers
from llm_adapters.batch import MultimodalBatch


class TinyConvEncoder(VisionEncoder):
    """A conv patch embedding plus residual MLP blocks: ``(N, 3, 16, 16) -> (N, 4, width)`` per layer."""

    def __init__(self, width: int = 32, depth: int = 2, image: int = 16, patch: int = 8, last_k: int = 0) -> None:
        super().__init__()
        self.config = SimpleNamespace(unfreeze_last_k=last_k)
        self.width, self.num_layers = width, depth
        self.image_size = (image, image)
        self.patch_grid = (image // patch, image // patch)
        self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        self.embed = nn.Conv2d(3, width, patch, patch)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.unfreeze_last_k(last_k)

    def forward(self, pixels: torch.Tensor, layers: int | Sequence[int] = -1, with_cls: bool = False) -> VisionFeatures:
        x = rearrange(self.embed(pixels), "n d h w -> n (h w) d")
        hidden = []
        for layer in self.layers:
            x = x + torch.tanh(layer(x))
            hidden.append(x)
        idx = resolve_layers(layers, self.num_layers)
        return VisionFeatures(tuple(hidden[i] for i in idx), idx, self.patch_grid, self.width)

    def blocks(self) -> Sequence[nn.Module]:
        return list(self.layers)

    def transform(self) -> ImageTransform:
        return ImageTransform(self.image_size, self.mean, self.std)


def fake_encoders(last_k: int = 0, **widths: int) -> EncoderSet:
    """A real :class:`encoders.EncoderSet` of tiny conv encoders (default: one named ``vit``, width 32)."""
    return EncoderSet({name: TinyConvEncoder(width, last_k=last_k) for name, width in (widths or {"vit": 32}).items()})


@dataclass
class LinearPrefixConfig:
    """A linear map of every patch token of every frame (a test stand-in for LLaVA's projector).

    ``all_encoders``: accept any number of encoders and sum one projection per encoder (same grids assumed).
    """

    layer: int = -1
    all_encoders: bool = False


class LinearPrefix(PrefixBridge):
    def __init__(self, config: LinearPrefixConfig, io: BridgeIO) -> None:
        super().__init__(config, io)
        self.proj = nn.ModuleDict({e.name: nn.Linear(e.width, io.lm.hidden_size) for e in io.encoders})
        self.last_instruction: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def needs(self) -> BridgeNeeds:
        return BridgeNeeds(num_encoders=None if self.config.all_encoders else 1, layers=(self.config.layer,))

    def num_visual_tokens(self, num_frames: int = 1) -> int:
        h, w = self.io.encoder.grid
        return h * w * num_frames

    def flops_per_media(self, num_frames: int = 1) -> int:
        return sum(2 * self.num_visual_tokens(num_frames) * p.in_features * p.out_features for p in self.proj.values())

    def forward(self, features, num_frames=1, instruction=None) -> torch.Tensor:
        self.last_instruction = instruction
        out = [
            self.proj[name](rearrange(features[name].last, "(n f) p d -> n (f p) d", f=num_frames))
            for name in self.proj
        ]
        return torch.stack(out).sum(0)


class GatedBlock(nn.Module):
    """``before_layer``: ``h + tanh(gate) * W(mean memory of the visible media)`` (Flamingo-shaped, no attention)."""

    def __init__(self, slot: ContextSlot, mem_dim: int, dim: int, gate: float, mode: str) -> None:
        super().__init__()
        self.slot, self.mode = slot, mode
        self.proj = nn.Linear(mem_dim, dim)
        self.gate = nn.Parameter(torch.full((1,), gate))
        self.seen_query_positions: list[torch.Tensor] = []

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        ctx = self.slot.get()
        self.seen_query_positions.append(ctx.query_positions.clone())
        visible = ctx.media_mask(self.mode).to(hidden.dtype)  # (B, Lq, N)
        context = visible @ ctx.memory.mean(1)  # (B, Lq, D_mem)
        return hidden + torch.tanh(self.gate) * self.proj(context)


class AttentionExtension(nn.Module):
    """``replace_attention``: the original attention plus ``gate * W(memory)`` on tokens after an image."""

    def __init__(self, slot: ContextSlot, mem_dim: int, dim: int, gate: float) -> None:
        super().__init__()
        self.slot = slot
        self.proj = nn.Linear(mem_dim, dim)
        self.gate = nn.Parameter(torch.full((1,), gate))

    def forward(self, attn: nn.Module, hidden_states: torch.Tensor, *args, **kwargs):
        out, weights = attn(hidden_states, *args, **kwargs)
        ctx = self.slot.get()
        visible = ctx.media_mask("strictly_after").to(out.dtype)
        return out + self.gate * self.proj(visible @ ctx.memory.mean(1)), weights


@dataclass
class GatedInjectConfig:
    gate: float = 0.0
    every: int = 1
    mode: str = "immediate"
    extend_attention: bool = False


class GatedInject(InjectBridge):
    def __init__(self, config: GatedInjectConfig, io: BridgeIO) -> None:
        super().__init__(config, io)
        self.resampler = nn.Linear(io.encoder.width, io.encoder.width)
        self.blocks = nn.ModuleList()
        self.extensions = nn.ModuleList()

    @property
    def needs(self) -> BridgeNeeds:
        return BridgeNeeds(num_encoders=1, layers=(-1,))

    @property
    def extra_special_tokens(self) -> tuple[str, ...]:
        return ("<|endofchunk|>",)

    def num_visual_tokens(self, num_frames: int = 1) -> int:
        h, w = self.io.encoder.grid
        return h * w * num_frames

    def flops_per_media(self, num_frames: int = 1) -> int:
        return 0

    def encode(self, features, num_frames=1) -> torch.Tensor:
        x = features[self.io.encoder.name].last
        return self.resampler(rearrange(x, "(n f) p d -> n (f p) d", f=num_frames))

    def injections(self, host: LMHost) -> list[Injection]:
        cfg, dim, mem = self.config, host.info.hidden_size, self.io.encoder.width
        layers = range(0, host.info.num_layers, cfg.every)
        if not len(self.blocks):
            self.blocks.extend(GatedBlock(self.slot, mem, dim, cfg.gate, cfg.mode) for _ in layers)
            if cfg.extend_attention:
                self.extensions.extend(AttentionExtension(self.slot, mem, dim, cfg.gate) for _ in layers)
        out = [Injection(i, "before_layer", b) for i, b in zip(layers, self.blocks, strict=True)]
        out += [Injection(i, "replace_attention", m) for i, m in zip(layers, self.extensions, strict=False)]
        return out

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        gates = [m.gate for m in [*self.blocks, *self.extensions]]
        gate_ids = {id(g) for g in gates}
        return {"bridge": [p for p in self.parameters() if id(p) not in gate_ids], "bridge.gates": gates}


def train_losses(model: nn.Module, batch: MultimodalBatch, steps: int = 8, lr: float = 3e-3) -> list[float]:
    """Losses of ``steps`` Adam steps on the bridge's parameters only (the "each bridge learns" tests)."""
    optimizer = torch.optim.Adam(model.bridge.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def decode_with_cache(model: nn.Module, ids: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """Logits of an HF causal LM run on ``ids[:, :prompt_length]``, then one token at a time through its KV cache.

    The cache travels by the keyword the installed transformers names in ``forward`` (``cache`` from 5.24,
    ``past_key_values`` before), and is read back from the output by type.
    """
    keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=ids[:, :prompt_length], use_cache=True)
    steps = [out.logits]
    for t in range(prompt_length, ids.shape[1]):
        cache = find_cache(out.values())
        out = model(input_ids=ids[:, t : t + 1], use_cache=True, **{keyword: cache})
        steps.append(out.logits)
    return torch.cat(steps, 1)


def make_batch(
    lm, texts: list[str], frames: int = 1, labels: bool = True, padding_side: str = "right", seed: int = 0
) -> MultimodalBatch:
    """Tokenize ``texts`` (with ``<image>`` markers) and attach random media ``(N, frames, 3, 16, 16)``."""
    enc = lm.tokenizer(texts, return_tensors="pt", padding=True, padding_side=padding_side)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    counts = (ids == lm.image_token_id).sum(1)
    gen = torch.Generator().manual_seed(seed)
    return MultimodalBatch(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=torch.rand(int(counts.sum()), frames, 3, 16, 16, generator=gen),
        media_to_sample=torch.repeat_interleave(torch.arange(len(texts)), counts),
        labels=torch.where((mask == 1) & (ids != lm.image_token_id), ids, -100) if labels else None,
    )


if "_test_linear" not in BRIDGES:
    BRIDGES.register("_test_linear", LinearPrefixConfig)(LinearPrefix)
    BRIDGES.register("_test_gated", GatedInjectConfig)(GatedInject)


def test_fake_encoder_returns_requested_layers() -> None:
    enc = fake_encoders(vit=32)
    feats = enc(torch.rand(3, 3, 16, 16), layers=[0, -1])["vit"]
    assert feats.layers == (0, 1) and feats.grid == (2, 2)
    assert feats.hidden[0].shape == (3, 4, 32) and not torch.equal(feats.hidden[0], feats.hidden[1])


def test_fake_bridges_registered() -> None:
    assert {"_test_linear", "_test_gated"} <= set(BRIDGES.names(include_private=True))
    assert not {"_test_linear", "_test_gated"} & set(BRIDGES.names())  # private: not listed
