"""Llama-style decoders: Llama (incl. Vicuna), Qwen2 and Mistral share one layout.

``model.model.layers[i]`` is a decoder layer with ``input_layernorm`` (RMSNorm) and ``self_attn`` holding separate
``q_proj``/``k_proj``/``v_proj``/``o_proj`` linears (Qwen2 has biases on q/k/v); RoPE is computed once per forward
by ``model.model.rotary_emb`` and passed to every attention as ``position_embeddings=(cos, sin)``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from bridges.base import LMInfo
from llm_adapters.families.base import Family, register_family


class LlamaStyleFamily(Family):
    name = "llama"
    model_types = ("llama", "qwen2", "mistral")
    attention_attr = "self_attn"
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    supports_attention_extension = True
    default_templates: ClassVar[dict[str, str]] = {"llama": "vicuna", "qwen2": "chatml", "mistral": "mistral"}

    def layers_container(self, model: nn.Module) -> nn.ModuleList:
        return model.model.layers

    def input_norm(self, layer: nn.Module) -> nn.Module:
        return layer.input_layernorm

    def qkvo(self, attention: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        return attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj

    def rotary_embedding(self, model: nn.Module) -> nn.Module | None:
        return model.model.rotary_emb

    def info(self, config: Any) -> LMInfo:
        heads = config.num_attention_heads
        return LMInfo(
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab_size=config.vocab_size,
            family=config.model_type,
        )


LLAMA_STYLE = register_family(LlamaStyleFamily())
