"""BLIP-2's Querying Transformer as a prefix bridge, and InstructBLIP's instruction-aware variant.

BLIP-2 (Li et al., 2023; LAVIS ``blip2_opt.py``, ``Qformer.py``; transformers ``Blip2Model``): a trainable
LayerNorm on the frozen ViT output (``ln_vision``), 32 learned queries that go through a BERT-base stack whose
every other layer cross-attends to the image, and a Linear to the LM width (``language_projection``). Each image
becomes 32 soft-prompt tokens.

InstructBLIP (Dai et al., 2023; LAVIS ``blip2_vicuna_instruct.py``; transformers ``InstructBlipQFormerModel``):
the instruction, tokenised for the Q-Former's own BERT vocabulary, is embedded and appended after the queries;
self-attention is bidirectional over ``[queries; instruction]`` (padding mask only), only the queries cross-attend,
and only the query outputs are kept.

Video (LAVIS InstructBLIP ``generate``, 5-D branch): every frame goes through the Q-Former with the media item's
instruction and the per-frame outputs are concatenated, ``T = F * num_query_tokens``, with no time embedding.
The stage-1 objectives (ITC, ITM, ITG) are in :mod:`bridges.qformer_pretrain`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange, repeat
from torch import nn

from bridges.base import BRIDGES, BridgeIO, BridgeNeeds, EncoderInfo, LMInfo, PrefixBridge
from bridges.common.bert_layers import BertSpec, QFormer
from bridges.common.features import check_frames, encoder_features, layer_tokens
from bridges.common.checks import at_least, divisible, in_unit_interval
from bridges.presets import BridgePreset, register_preset
from encoders.base import VisionFeatures, resolve_layers


@dataclass
class QFormerConfig:
    """Q-Former bridge config. Defaults are BLIP-2's (LAVIS code and paper agree unless noted).

    Attributes:
        num_query_tokens: learned queries per image (32).
        hidden_size, num_layers, num_heads, intermediate_size: BERT-base (768, 12, 12, 3072).
        cross_attention_freq: layer ``l`` cross-attends to the image iff ``l % freq == 0`` (2: layers 0, 2, ..., 10).
        layer_norm_eps: BERT's 1e-12.
        dropout, attention_dropout: BERT's 0.1 (hidden states / attention probabilities; off in eval mode).
        query_init_std: the queries start N(0, 0.02) (LAVIS; transformers zero-initialises and then loads).
        instruction_aware: InstructBLIP: the ``instruction`` ids passed to :meth:`QFormerBridge.forward` are
            appended after the queries. Implies ``text_layers``.
        text_layers: keep the word/position embeddings and the text FFNs even when not instruction-aware: the
            stage-1 Q-Former (:mod:`bridges.qformer_pretrain`). ``False`` with ``instruction_aware=False`` is the slim
            stage-2 BLIP-2 Q-Former (LAVIS sets those modules to None; transformers ``Blip2QFormerModel``).
        query_ffn_init: ``copy`` (LAVIS stage 1: every query FFN starts as a copy of its layer's text FFN) or
            ``fresh``; only meaningful with text layers.
        vocab_size, max_position_embeddings, pad_token_id: the Q-Former's BERT vocabulary (30522 for
            ``bert-base-uncased``; LAVIS adds ``[DEC]`` for 30523), positions and padding id.
        ln_vision: a trainable LayerNorm (eps 1e-5) on the image features before the cross-attention (LAVIS
            ``ln_vision``, transformers ``vision_model.post_layernorm``). Turn it off when the encoder already
            applies its final norm to the layer used.
        select_layer: encoder layer to read (-1: the last block of BLIP-2's 39-block ViT-g, i.e. the penultimate
            block of EVA-CLIP's 40; use -2 on a full 40-block tower).
        with_cls: attend to the CLS token as well as the patches (BLIP-2 uses all 257 ViT-g tokens).
    """

    num_query_tokens: int = 32
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_freq: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: float = 0.1
    query_init_std: float = 0.02
    instruction_aware: bool = False
    text_layers: bool = False
    query_ffn_init: str = "copy"
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    pad_token_id: int = 0
    ln_vision: bool = True
    select_layer: int = -1
    with_cls: bool = True

    def __post_init__(self) -> None:
        """Range checks: a bad value fails here, naming the key, the value and the allowed range."""
        at_least(self, 1, "num_query_tokens", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                 "cross_attention_freq")
        divisible(self, "hidden_size", "num_heads")
        in_unit_interval(self, "dropout", "attention_dropout")


@BRIDGES.register("qformer", QFormerConfig)
class QFormerBridge(PrefixBridge):
    """``(N_media * F, P, Dv)`` image features -> ``(N_media, F * num_query_tokens, D_lm)`` soft-prompt tokens.

    Submodules: ``ln_vision`` (LayerNorm or Identity), ``qformer`` (:class:`~bridges.common.bert_layers.QFormer`,
    which owns ``query_tokens``), ``language_projection`` (Linear ``hidden_size -> D_lm``).
    Parameter groups: ``bridge.qformer`` (queries, embeddings, layers), ``bridge.ln_vision``, ``bridge.projection``
    (so a stage pattern ``bridge*`` selects them all).
    """

    def __init__(self, config: QFormerConfig, io: BridgeIO) -> None:
        super().__init__(config, io)
        self.check_io()
        if config.query_ffn_init not in ("copy", "fresh"):
            raise ValueError(f"query_ffn_init must be 'copy' or 'fresh', got '{config.query_ffn_init}'")
        self.layer = resolve_layers(config.select_layer, io.encoder.num_layers)[0]
        self.spec = BertSpec(
            config.hidden_size,
            config.num_heads,
            config.intermediate_size,
            config.layer_norm_eps,
            config.dropout,
            config.attention_dropout,
        )
        width = io.encoder.width
        self.ln_vision: nn.Module = nn.LayerNorm(width) if config.ln_vision else nn.Identity()
        self.qformer = QFormer(
            config.num_query_tokens,
            self.spec,
            config.num_layers,
            width,
            config.cross_attention_freq,
            text=self.has_text,
            vocab_size=config.vocab_size,
            max_positions=config.max_position_embeddings,
            pad_token_id=config.pad_token_id,
            query_init_std=config.query_init_std,
        )
        if self.has_text and config.query_ffn_init == "copy":
            self.qformer.copy_text_ffn_to_query()
        self.language_projection = nn.Linear(config.hidden_size, io.lm.hidden_size)

    @property
    def has_text(self) -> bool:
        return self.config.instruction_aware or self.config.text_layers

    @property
    def uses_instruction(self) -> bool:
        """Whether :meth:`forward` needs ``instruction`` (ids in the Q-Former's vocabulary, one row per media)."""
        return self.config.instruction_aware

    @property
    def needs(self) -> BridgeNeeds:
        return BridgeNeeds(num_encoders=1, layers=(self.config.select_layer,), with_cls=self.config.with_cls)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "bridge.qformer": list(self.qformer.parameters()),
            "bridge.ln_vision": list(self.ln_vision.parameters()),
            "bridge.projection": list(self.language_projection.parameters()),
        }

    def num_visual_tokens(self, num_frames: int = 1) -> int:
        return num_frames * self.config.num_query_tokens

    def flops_per_media(self, num_frames: int = 1, instruction_len: int = 0) -> int:
        """Matmul FLOPs per media item; ``instruction_len`` counts the instruction tokens (InstructBLIP)."""
        c, d = self.config, self.config.hidden_size
        q, t = c.num_query_tokens, instruction_len if c.instruction_aware else 0
        s = q + t
        h, w = self.io.encoder.grid
        p, dv = h * w + int(c.with_cls), self.io.encoder.width
        self_attn = 2 * s * d * 3 * d + 2 * 2 * s * s * d + 2 * s * d * d
        ffn = 2 * s * 2 * d * c.intermediate_size
        cross = 2 * q * d * d + 2 * p * dv * 2 * d + 2 * 2 * q * p * d + 2 * q * d * d
        n_cross = len(range(0, c.num_layers, c.cross_attention_freq))
        per_frame = c.num_layers * (self_attn + ffn) + n_cross * cross + 2 * q * d * self.io.lm.hidden_size
        return num_frames * per_frame

    def image_embeds(self, features: Mapping[str, VisionFeatures]) -> torch.Tensor:
        """The cross-attention input: the chosen layer (CLS as configured) through ``ln_vision``, ``(N, P, Dv)``."""
        feats = encoder_features(features, self.io.encoder.name)
        # the Q-Former stays in its own dtype (fp32 in transformers) whatever the encoder's
        x = layer_tokens(feats, self.layer, self.config.with_cls, self.language_projection.weight.dtype)
        return self.ln_vision(x)

    def query_outputs(
        self, image: torch.Tensor, instruction: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Q-Former outputs at the query positions before the projection, ``(N, Q, hidden)``.

        ``image`` is ``(N, P, Dv)`` after ``ln_vision``; ``instruction`` is ``(ids, mask)``, each ``(N, L)``.
        """
        if self.config.instruction_aware:
            if instruction is None:
                raise ValueError(
                    "instruction_aware=True needs the instruction: pass instruction=(ids, mask) with ids "
                    "in the Q-Former's vocabulary, or set instruction_aware=False (BLIP-2 behaviour)."
                )
            ids, mask = instruction
            if ids.shape[0] != image.shape[0] or ids.shape != mask.shape:
                raise ValueError(
                    f"instruction ids {tuple(ids.shape)} / mask {tuple(mask.shape)} do not match "
                    f"{image.shape[0]} images"
                )
            return self.qformer(image, ids, mask)[:, : self.config.num_query_tokens]
        return self.qformer(image)

    def forward(
        self,
        features: Mapping[str, VisionFeatures],
        num_frames: int = 1,
        instruction: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        image = self.image_embeds(features)
        check_frames(image.shape[0], num_frames)
        if instruction is not None and self.config.instruction_aware and num_frames > 1:
            # every frame of a media item sees that item's instruction (media-major, frames inner)
            instruction = tuple(repeat(t, "n l -> (n f) l", f=num_frames) for t in instruction)  # type: ignore[assignment]
        queries = self.query_outputs(image, instruction)
        tokens = self.language_projection(queries)
        return rearrange(tokens, "(n f) q d -> n (f q) d", f=num_frames)

    @classmethod
    def from_reference(
        cls,
        qformer: nn.Module,
        query_tokens: torch.Tensor,
        language_projection: nn.Linear | None = None,
        *,
        ln_vision: nn.LayerNorm | None = None,
        io: BridgeIO | None = None,
        **overrides: Any,
    ) -> QFormerBridge:
        """Build a bridge holding a transformers Q-Former's weights (``Blip2QFormerModel`` or, for InstructBLIP,
        ``InstructBlipQFormerModel``), e.g. ``from_reference(m.qformer, m.query_tokens, m.language_projection,
        ln_vision=m.vision_model.post_layernorm)`` for a ``Blip2Model`` ``m``.

        Name mapping, ours <- transformers (LAVIS names in brackets; BRIDGES.md 2.8):

        * ``qformer.query_tokens`` <- ``query_tokens``
        * ``qformer.embed_norm`` <- ``layernorm`` (BLIP-2) / ``embeddings.layernorm`` (InstructBLIP)
          [``Qformer.bert.embeddings.LayerNorm``]
        * ``qformer.word_embeddings``, ``qformer.position_embeddings`` <- ``embeddings.{word,position}_embeddings``
        * ``qformer.layers.{i}.self_attn.qkv`` <- concat of ``encoder.layer.{i}.attention.attention.{query,key,value}``
          [``.attention.self.``]; ``self_attn.out`` / ``self_attn.norm`` <- ``attention.output.dense`` / ``.LayerNorm``
        * ``...cross_attn.q`` <- ``crossattention.attention.query``; ``cross_attn.kv`` <- concat of ``key``, ``value``;
          ``cross_attn.out`` / ``.norm`` <- ``crossattention.output.dense`` / ``.LayerNorm``
        * ``...ffn_query.fc1`` / ``fc2`` / ``norm`` <- ``intermediate_query.dense`` / ``output_query.dense`` /
          ``output_query.LayerNorm``; ``ffn_text.*`` likewise from ``intermediate`` / ``output``
        * ``language_projection`` <- ``language_projection`` [``opt_proj`` / ``t5_proj`` / ``llm_proj``]
        * ``ln_vision`` <- ``vision_model.post_layernorm`` [``ln_vision``]

        Without ``language_projection`` ours is freshly initialised (width ``io.lm.hidden_size``); without
        ``ln_vision`` the bridge is built with ``ln_vision=False`` unless ``overrides`` say otherwise.
        """
        ref = qformer.config
        if getattr(ref, "hidden_act", "gelu") != "gelu":
            raise ValueError(f"Only the exact-GELU Q-Former is supported, got hidden_act={ref.hidden_act!r}")
        instruct = hasattr(qformer, "embeddings") and hasattr(qformer.embeddings, "word_embeddings")
        fields: dict[str, Any] = {
            "num_query_tokens": query_tokens.shape[1],
            "hidden_size": ref.hidden_size,
            "num_layers": ref.num_hidden_layers,
            "num_heads": ref.num_attention_heads,
            "intermediate_size": ref.intermediate_size,
            "cross_attention_freq": ref.cross_attention_frequency,
            "layer_norm_eps": ref.layer_norm_eps,
            "dropout": ref.hidden_dropout_prob,
            "attention_dropout": ref.attention_probs_dropout_prob,
            "instruction_aware": instruct,
            "vocab_size": ref.vocab_size,
            "max_position_embeddings": ref.max_position_embeddings,
            "pad_token_id": ref.pad_token_id if ref.pad_token_id is not None else 0,
            "ln_vision": ln_vision is not None,
        }
        config = QFormerConfig(**{**fields, **overrides})
        if io is None:
            lm_width = language_projection.out_features if language_projection is not None else ref.hidden_size
            io = BridgeIO((EncoderInfo("eva_vit_g", ref.encoder_hidden_size, (16, 16), 39),), LMInfo(lm_width))
        bridge = cls(config, io)
        state = _reference_state(qformer.state_dict(), instruct, ref.num_hidden_layers)
        state["query_tokens"] = query_tokens.detach()
        missing, unexpected = bridge.qformer.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"Weight import failed (check overrides): missing {missing}, unexpected {unexpected}")
        with torch.no_grad():
            if language_projection is not None:
                bridge.language_projection.load_state_dict(language_projection.state_dict())
            if ln_vision is not None and config.ln_vision:
                bridge.ln_vision.load_state_dict(ln_vision.state_dict())
                bridge.ln_vision.eps = ln_vision.eps  # transformers uses the vision config's eps (1e-6), LAVIS 1e-5
        return bridge


def _reference_state(ref: Mapping[str, torch.Tensor], instruct: bool, num_layers: int) -> dict[str, torch.Tensor]:
    """Rename (and fuse) a transformers Q-Former state dict into :class:`QFormer` names."""
    emb = "embeddings." if instruct else ""
    out = {"embed_norm.weight": ref[f"{emb}layernorm.weight"], "embed_norm.bias": ref[f"{emb}layernorm.bias"]}
    if instruct:
        out["word_embeddings.weight"] = ref["embeddings.word_embeddings.weight"]
        out["position_embeddings.weight"] = ref["embeddings.position_embeddings.weight"]
    for i in range(num_layers):
        src, dst = f"encoder.layer.{i}.", f"layers.{i}."
        for kind, ours in (("attention", "self_attn"), ("crossattention", "cross_attn")):
            if f"{src}{kind}.attention.query.weight" not in ref:
                continue
            a = f"{src}{kind}.attention."
            for p in ("weight", "bias"):
                parts = [ref[f"{a}{n}.{p}"] for n in ("query", "key", "value")]
                if ours == "self_attn":
                    out[f"{dst}{ours}.qkv.{p}"] = torch.cat(parts)
                else:
                    out[f"{dst}{ours}.q.{p}"], out[f"{dst}{ours}.kv.{p}"] = parts[0], torch.cat(parts[1:])
                out[f"{dst}{ours}.out.{p}"] = ref[f"{src}{kind}.output.dense.{p}"]
                out[f"{dst}{ours}.norm.{p}"] = ref[f"{src}{kind}.output.LayerNorm.{p}"]
        for suffix, ours in (("_query", "ffn_query"), ("", "ffn_text")):
            if f"{src}intermediate{suffix}.dense.weight" not in ref or (ours == "ffn_text" and not instruct):
                continue
            for p in ("weight", "bias"):
                out[f"{dst}{ours}.fc1.{p}"] = ref[f"{src}intermediate{suffix}.dense.{p}"]
                out[f"{dst}{ours}.fc2.{p}"] = ref[f"{src}output{suffix}.dense.{p}"]
                out[f"{dst}{ours}.norm.{p}"] = ref[f"{src}output{suffix}.LayerNorm.{p}"]
    return out


_VIT_G = EncoderInfo("eva_vit_g", 1408, (16, 16), 39)
_STAGE2 = "BRIDGES.md 2.6: slim stage-2 Q-Former + 32 queries with ViT-g (= HF Blip2QFormerModel + query_tokens)"
register_preset(
    BridgePreset(
        "qformer",
        "blip2_opt2.7b",
        {},
        BridgeIO((_VIT_G,), LMInfo(2560, 32, 32, 32, 80, 50272, "opt")),
        expected_params=105_160_000,
        source=_STAGE2,
        count="bridge.qformer",
    )
)
register_preset(
    BridgePreset(
        "qformer",
        "blip2_stage1",
        {"text_layers": True, "vocab_size": 30523},
        BridgeIO((_VIT_G,), LMInfo(2560, 32, 32, 32, 80, 50272, "opt")),
        expected_params=185_700_000,
        count="bridge.qformer",
        source="BRIDGES.md 2.6: stage-1 Q-Former core (text embeddings, vocab 30523, and both FFN sets; the "
        "ITC/ITM/ITG heads of bridges.qformer_pretrain add 1.02M for ~186.7M; the paper's 188M adds small extras)",
    )
)
register_preset(
    BridgePreset(
        "qformer",
        "instructblip_vicuna7b",
        {"instruction_aware": True, "vocab_size": 30523},
        BridgeIO((_VIT_G,), LMInfo(4096, 32, 32, 32, 128, 32000, "llama")),
        expected_params=188_800_000,
        source="BRIDGES.md 2.6: InstructBLIP Q-Former 185.7M + llm_proj 3.15M (whole bridge)",
    )
)
_TINY = {
    "num_query_tokens": 8,
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 64,
    "vocab_size": 100,
    "max_position_embeddings": 32,
}
_TINY_IO = BridgeIO((EncoderInfo("tiny", 32, (4, 4), 2),), LMInfo(64, 2, 4, 4, 16, 128))
register_preset(BridgePreset("qformer", "tiny", _TINY, _TINY_IO))
register_preset(BridgePreset("qformer", "tiny_instruct", {**_TINY, "instruction_aware": True}, _TINY_IO))
