"""MPT (OpenFlamingo-3B's MPT-1B): ``model.transformer.blocks[i]`` with ``norm_1`` and ``attn``; ALiBi positions.

Like GPT-2, MPT fuses q/k/v into one ``attn.Wqkv`` linear (output split ``[q | k | v]``) and has no rotary
embedding, so it does not support attention extension; :meth:`MPTFamily.qkvo` raises, :meth:`MPTFamily.fused_qkv`
gives ``(Wqkv, out_proj)``. Wrapping whole blocks (Flamingo) works.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bridges.base import LMInfo
from llm_adapters.families.base import FusedQKVFamily, register_family


class MPTFamily(FusedQKVFamily):
    name = "mpt"
    model_types = ("mpt",)
    attention_attr = "attn"
    lora_targets = ("Wqkv", "out_proj")
    qkv_attr = "Wqkv"
    out_attr = "out_proj"

    def layers_container(self, model: nn.Module) -> nn.ModuleList:
        return model.transformer.blocks

    def input_norm(self, layer: nn.Module) -> nn.Module:
        return layer.norm_1

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
