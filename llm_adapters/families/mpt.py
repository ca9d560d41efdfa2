"""MPT (OpenFlamingo-3B's MPT-1B): ``model.transformer.blocks[i]`` with ``norm_1`` and ``attn``; ALiBi positions.

Like GPT-2, MPT fuses q/k/v into one ``attn.Wqkv`` linear (output split ``[q | k | v]``) and has no rotary
embedding, so it does not support attention extension; :meth:`MPTFamily.qkvo` raises, :meth:`MPTFamily.fused_qkv`
gives ``(Wqkv, out_proj)``. Wrapping whole blocks (Flamingo) works.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bridges.base import LMInfo
from llm_adapters.families.base import Family, register_family


class MPTFamily(Family):
    name = "mpt"
    model_types = ("mpt",)
    attention_attr = "attn"
    lora_targets = ("Wqkv", "out_proj")
    supports_attention_extension = False

    def layers_container(self, model: nn.Module) -> nn.ModuleList:
        return model.transformer.blocks

    def input_norm(self, layer: nn.Module) -> nn.Module:
        return layer.norm_1

    def qkvo(self, attention: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        raise NotImplementedError(
            "MPT has no separate q/k/v projections: attn.Wqkv is one fused Linear (output split [q|k|v]); use "
            "MPTFamily.fused_qkv(attention) -> (Wqkv, out_proj). Separate q/k/v/o exist for llama, qwen2, mistral, opt."
        )

    def fused_qkv(self, attention: nn.Module) -> tuple[nn.Module, nn.Module]:
        return attention.Wqkv, attention.out_proj

    def info(self, config: Any) -> LMInfo:
        heads = config.n_heads
        return LMInfo(
            hidden_size=config.d_model,
            num_layers=config.n_layers,
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=config.d_model // heads,
            vocab_size=config.vocab_size,
            family="mpt",
        )


MPT = register_family(MPTFamily())
