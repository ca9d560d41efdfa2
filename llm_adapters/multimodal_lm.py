"""``MultimodalLM``: vision encoder(s) + one bridge + an :class:`LMAdapter`, for training, evaluation and generation.

Data flow for a :class:`~llm_adapters.batch.MultimodalBatch` with ``N`` media of ``F`` frames:

1. every encoder sees the frames flattened media-major, ``(N*F, C, H, W)``, and returns only ``bridge.needs.layers``;
2. a prefix bridge maps the features to ``(N, T, D_lm)`` tokens that :func:`splice_visual_tokens` puts in place of
   the ``<image>`` placeholders; an inject bridge encodes a memory ``(N, T, D_mem)`` that reaches its modules inside
   the LM through an :class:`~bridges.base.InjectionContext` set for the call;
3. the HF causal LM runs on the result; ``generate`` uses HF ``generate`` with the KV cache (prefix: from
   ``inputs_embeds``; inject: from ``input_ids`` with the context held for the whole call).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import nn

from bridges.base import BRIDGES, Bridge, BridgeIO, EncoderInfo, InjectionContext
from encoders.base import VisionEncoder, VisionFeatures
from llm_adapters.adapter import IMAGE_TOKEN, LMAdapter, build_lm
from llm_adapters.batch import MultimodalBatch
from llm_adapters.splice import check_placeholder_counts, positions_from_mask, splice_visual_tokens

STANDARD_GROUPS = ("encoder", "encoder.last_k", "bridge", "bridge.gates", "lm", "lm.new_tokens", "lm.lora")


@dataclass
class MultimodalLMOutput:
    """Result of :meth:`MultimodalLM.forward`.

    Attributes:
        loss: mean next-token cross-entropy over positions whose label is not -100 (``None`` without labels).
        logits: ``(B, L', V)`` over the LM sequence (``L' > L`` after prefix splicing).
        labels: ``(B, L')`` targets aligned with ``logits`` (unshifted), or ``None``.
        attention_mask: ``(B, L')``.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor
    labels: torch.Tensor | None
    attention_mask: torch.Tensor


def encoder_modules(encoders: nn.Module) -> dict[str, VisionEncoder]:
    """``{name: VisionEncoder}`` of an ``EncoderSet`` (anything with ``.names`` and ``[name]``)."""
    return {name: encoders[name] for name in encoders.names}


def left_align(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move right padding to the left (rows end on their last real token), ``(B, L)`` each; a no-op if left-padded."""
    length = input_ids.shape[1]
    trailing = (attention_mask.flip(1).cumsum(1) == 0).sum(1)  # (B,) padding after the last real token
    index = (torch.arange(length, device=input_ids.device)[None] - trailing[:, None]) % length
    return input_ids.gather(1, index), attention_mask.gather(1, index)


class MultimodalLM(nn.Module):
    """Encoder(s) + bridge + LM.

    Args:
        encoders: an ``EncoderSet`` (``.names``, ``[name]``, ``forward(pixels, layers, with_cls)`` -> features).
        bridge: a built :class:`~bridges.base.Bridge` whose ``check_io`` passed.
        lm: the :class:`LMAdapter`; ``<image>`` (and the bridge's extra special tokens) are added to it here, and an
            inject bridge's modules are attached to it.
    """

    def __init__(self, encoders: nn.Module, bridge: Bridge, lm: LMAdapter) -> None:
        super().__init__()
        self.bridge = bridge  # registered first: shared injected parameters are named bridge.*
        self.encoders = encoders
        self.lm = lm
        lm.add_special_tokens([IMAGE_TOKEN, *getattr(bridge, "extra_special_tokens", ())])
        if bridge.kind == "inject":
            lm.attach(bridge.injections(lm), bridge.slot)

    @property
    def image_token_id(self) -> int:
        return self.lm.image_token_id

    # ----------------------------------------------------------- vision side
    def encode_media(self, batch: MultimodalBatch) -> dict[str, VisionFeatures]:
        """Features of every frame of every media item, ``(N*F, P, D)`` per requested layer, per encoder."""
        needs = self.bridge.needs
        pixels = {}
        for name, encoder in encoder_modules(self.encoders).items():
            media = batch.pixels_for(name)  # (N, F, C, H, W)
            if media.shape[0] == 0 and tuple(media.shape[-2:]) != tuple(encoder.image_size):
                media = media.new_zeros(0, media.shape[1], len(encoder.mean), *encoder.image_size)
            pixels[name] = rearrange(media, "n f c h w -> (n f) c h w")
        return self.encoders(pixels, layers=list(needs.layers), with_cls=needs.with_cls)

    def visual_tokens(self, batch: MultimodalBatch) -> torch.Tensor:
        """A prefix bridge's tokens ``(N_media, T, D_lm)`` in the LM's dtype."""
        frames = batch.num_frames
        instruction = None
        if batch.instruction_ids is not None:
            rows = batch.media_to_sample
            mask = batch.instruction_mask
            mask = torch.ones_like(batch.instruction_ids) if mask is None else mask
            instruction = (batch.instruction_ids[rows], mask[rows])
        tokens = self.bridge(self.encode_media(batch), num_frames=frames, instruction=instruction)
        expected = (batch.num_media, self.bridge.num_visual_tokens(frames), self.lm.info.hidden_size)
        if tuple(tokens.shape) != expected:
            raise RuntimeError(
                f"Bridge '{self.bridge.registry_name}' returned {tuple(tokens.shape)}, expected (N_media, T, D_lm) = "
                f"{expected} (T from num_visual_tokens({frames}))"
            )
        return tokens.to(self.lm.model.dtype)

    def injection_context(self, batch: MultimodalBatch) -> InjectionContext:
        """The context an inject bridge's modules read: memory, media rows, ``<image>`` indices and RoPE positions."""
        is_image = check_placeholder_counts(batch.input_ids, batch.media_to_sample, self.image_token_id)
        rows, cols = is_image.nonzero(as_tuple=True)
        positions = positions_from_mask(batch.attention_mask)
        batch_size, length = batch.input_ids.shape
        return InjectionContext(
            memory=self.bridge.encode(self.encode_media(batch), num_frames=batch.num_frames),
            media_to_sample=batch.media_to_sample,
            media_positions=cols,
            media_rope_positions=positions[rows, cols],
            query_positions=torch.arange(length, device=cols.device).expand(batch_size, length),
        )

    # ---------------------------------------------------------------- forward
    def forward(self, batch: MultimodalBatch) -> MultimodalLMOutput:
        """Logits (and loss when ``batch.labels`` is set) for a collated batch."""
        if self.bridge.kind == "prefix":
            spliced = splice_visual_tokens(
                self.lm.embed(batch.input_ids),
                batch.input_ids,
                batch.attention_mask,
                self.visual_tokens(batch),
                batch.media_to_sample,
                self.image_token_id,
                labels=batch.labels,
            )
            out = self.lm.model(
                inputs_embeds=spliced.inputs_embeds,
                attention_mask=spliced.attention_mask,
                position_ids=spliced.position_ids,
                labels=spliced.labels,
                use_cache=False,
            )
            return MultimodalLMOutput(out.loss, out.logits, spliced.labels, spliced.attention_mask)
        with self.bridge.slot.use(self.injection_context(batch)):
            out = self.lm.model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=positions_from_mask(batch.attention_mask),
                labels=batch.labels,
                use_cache=False,
            )
        return MultimodalLMOutput(out.loss, out.logits, batch.labels, batch.attention_mask)

    @torch.no_grad()
    def generate(self, batch: MultimodalBatch, max_new_tokens: int = 32, **kwargs: Any) -> torch.Tensor:
        """New token ids ``(B, T_new)`` (``T_new <= max_new_tokens``; rows that stopped are padded with pad id).

        The prompt is left-aligned first (right padding is moved to the left), so every row continues from its last
        real token. ``kwargs`` go to HF ``generate`` (``do_sample``, ``num_beams``, ``eos_token_id``, ...).
        """
        input_ids, attention_mask = left_align(batch.input_ids, batch.attention_mask)
        batch = MultimodalBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=batch.pixel_values,
            media_to_sample=batch.media_to_sample,
            instruction_ids=batch.instruction_ids,
            instruction_mask=batch.instruction_mask,
            meta=batch.meta,
        )
        kwargs.setdefault("pad_token_id", self.lm.model.generation_config.pad_token_id)
        if self.bridge.kind == "prefix":
            spliced = splice_visual_tokens(
                self.lm.embed(input_ids),
                input_ids,
                attention_mask,
                self.visual_tokens(batch),
                batch.media_to_sample,
                self.image_token_id,
                padding_side="left",
            )
            return self.lm.model.generate(
                inputs_embeds=spliced.inputs_embeds,
                attention_mask=spliced.attention_mask,
                max_new_tokens=max_new_tokens,
                **kwargs,
            )
        with self.bridge.slot.use(self.injection_context(batch)):
            out = self.lm.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, **kwargs
            )
        return out[:, input_ids.shape[1] :]

    # ------------------------------------------------------ parameter groups
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Every parameter in exactly one named group (deduplicated by identity, bridge first).

        Groups: ``bridge`` and whatever else ``bridge.param_groups()`` names (e.g. ``bridge.gates``),
        ``encoder.last_k`` (blocks opened by ``unfreeze_last_k``), ``encoder``, ``lm.new_tokens``, ``lm.lora``,
        ``lm``. The standard keys are always present, possibly empty.
        """
        groups: dict[str, list[nn.Parameter]] = {name: [] for name in STANDARD_GROUPS}
        seen: set[int] = set()

        def add(group: str, params: Any) -> None:
            for p in params:
                if id(p) not in seen:
                    seen.add(id(p))
                    groups.setdefault(group, []).append(p)

        for group, params in self.bridge.param_groups().items():
            add(group, params)
        add("bridge", self.bridge.parameters())
        for encoder in encoder_modules(self.encoders).values():
            add("encoder.last_k", _last_k_parameters(encoder))
        add("encoder", self.encoders.parameters())
        add("lm.new_tokens", self.lm.new_token_parameters())
        add("lm.lora", self.lm.lora_parameters())
        add("lm", self.lm.parameters())
        return groups

    def summary(self) -> dict[str, Any]:
        """Parameters per group (total and trainable), visual tokens per media item and the components' names."""
        groups = {
            name: {"params": sum(p.numel() for p in ps), "trainable": sum(p.numel() for p in ps if p.requires_grad)}
            for name, ps in self.param_groups().items()
        }
        return {
            "bridge": self.bridge.registry_name,
            "bridge_kind": self.bridge.kind,
            "encoders": list(self.encoders.names),
            "lm_family": self.lm.family,
            "visual_tokens_per_media": self.bridge.num_visual_tokens(1),
            "lm_tokens_per_media": self.bridge.num_visual_tokens(1) if self.bridge.kind == "prefix" else 1,
            "bridge_flops_per_media": self.bridge.flops_per_media(1),
            "groups": groups,
            "total_params": sum(g["params"] for g in groups.values()),
            "trainable_params": sum(g["trainable"] for g in groups.values()),
        }


def _last_k_parameters(encoder: VisionEncoder) -> list[nn.Parameter]:
    k = getattr(getattr(encoder, "config", None), "unfreeze_last_k", 0) or 0
    blocks = list(encoder.blocks())[-k:] if k > 0 else []
    return [p for block in blocks for p in block.parameters()]


def encoder_infos(encoders: nn.Module) -> tuple[EncoderInfo, ...]:
    return tuple(
        EncoderInfo(name=name, width=enc.width, grid=tuple(enc.patch_grid), num_layers=enc.num_layers)
        for name, enc in encoder_modules(encoders).items()
    )


def build_multimodal_lm(
    encoder_spec: Any,
    bridge_spec: str | Mapping[str, Any] | Any,
    llm_spec: str | Mapping[str, Any] | Any,
) -> MultimodalLM:
    """Build encoder(s), LM and bridge from config mappings (or pass already-built objects) and compose them.

    Args:
        encoder_spec: an encoder spec, a mapping ``{encoder name: spec}`` for several encoders (both as accepted by
            ``encoders.build_encoder_set``), or a built ``EncoderSet``.
        bridge_spec: bridge name or mapping with ``name`` (``bridges.BRIDGES``).
        llm_spec: LM preset name, mapping with ``name`` (``LLMS``), :class:`LMConfig` or a built :class:`LMAdapter`.
    """
    if isinstance(encoder_spec, nn.Module):
        encoders = encoder_spec
    else:
        from encoders import build_encoder_set  # the encoders package provides the EncoderSet builder

        encoders = build_encoder_set(encoder_spec)
    lm = llm_spec if isinstance(llm_spec, LMAdapter) else build_lm(llm_spec)
    io = BridgeIO(encoders=encoder_infos(encoders), lm=lm.info)
    bridge = bridge_spec if isinstance(bridge_spec, Bridge) else BRIDGES.build(bridge_spec, io)
    bridge.check_io()
    return MultimodalLM(encoders, bridge, lm)
