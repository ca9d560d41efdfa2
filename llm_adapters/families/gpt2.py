"""GPT-2: ``model.transformer.h[i]`` blocks with ``ln_1`` and ``attn``; learned absolute positions (``wpe``).

GPT-2 fuses the query, key and value projections into one ``attn.c_attn`` (a ``Conv1D`` whose output splits as
``[q | k | v]`` along the last dimension) and has no rotary embedding, so it does not support attention extension
(Hyper Attention); :meth:`GPT2Family.qkvo` raises and :meth:`GPT2Family.fused_qkv` gives ``(c_attn, c_proj)``.
Wrapping a whole block (Flamingo) works.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bridges.base import LMInfo
from llm_adapters.families.base import FusedQKVFamily, register_family


class GPT2Family(FusedQKVFamily):
    name = "gpt2"
    model_types = ("gpt2",)
    attention_attr = "attn"
    lora_targets = ("c_attn", "attn.c_proj")
    qkv_attr = "c_attn"
    out_attr = "c_proj"

    def layers_container(self, model: nn.Module) -> nn.ModuleList:
        return model.transformer.h

    def input_norm(self, layer: nn.Module) -> nn.Module:
        return layer.ln_1

    def info(self, config: Any) -> LMInfo:
        heads = config.n_head
        return LMInfo(
            hidden_size=config.n_embd,
            num_layers=config.n_layer,
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=config.n_embd // heads,
            vocab_size=config.vocab_size,
            family="gpt2",
        )


GPT2 = register_family(GPT2Family())
