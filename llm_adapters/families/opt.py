"""OPT (BLIP-2's OPT-2.7B): ``model.model.decoder.layers[i]`` with ``self_attn_layer_norm`` and ``self_attn``.

The attention has separate ``q_proj``/``k_proj``/``v_proj``/``out_proj``, but positions are learned absolute
embeddings added at the input (no RoPE), so attention extension (Hyper Attention's MI-RoPE) is not supported.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bridges.base import LMInfo
from llm_adapters.families.base import Family, register_family


class OPTFamily(Family):
    name = "opt"
    model_types = ("opt",)
    attention_attr = "self_attn"
    lora_targets = ("q_proj", "k_proj", "v_proj", "out_proj")
    supports_attention_extension = False

    def layers_container(self, model: nn.Module) -> nn.ModuleList:
        return model.model.decoder.layers

    def input_norm(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn_layer_norm

    def qkvo(self, attention: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        return attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj

    def info(self, config: Any) -> LMInfo:
        heads = config.num_attention_heads
        return LMInfo(
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=config.hidden_size // heads,
            vocab_size=config.vocab_size,
            family="opt",
        )


OPT = register_family(OPTFamily())
