"""Named LM presets, registered in :data:`~llm_adapters.adapter.LLMS` beside the generic ``hf`` entry.

Each preset is a subclass of :class:`LMConfig` whose defaults are the preset's values, so ``LLMS.build("tiny_llama")``
works, ``{"name": "tiny_llama", "freeze": False}`` overrides one field, and an unknown key fails with the key path.
Tiny presets (hidden 64, 2 layers, 4 heads, 2 KV heads, the offline byte-level tokenizer) run anywhere; paper
presets state the published architecture and build with random weights on the meta device (set ``pretrained`` to a
checkpoint and ``meta_device: false`` to load real weights). The YAML files in ``experiments/configs/llm/`` select
these presets by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from llm_adapters.adapter import LLMS, LMAdapter, LMConfig

TINY_LLAMA_STYLE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny_llama": {"model_type": "llama", "config": TINY_LLAMA_STYLE},
    "tiny_qwen2": {"model_type": "qwen2", "config": TINY_LLAMA_STYLE},
    "tiny_mistral": {"model_type": "mistral", "config": {**TINY_LLAMA_STYLE, "sliding_window": None}},
    "tiny_gpt2": {"model_type": "gpt2", "config": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512}},
    "tiny_opt": {
        "model_type": "opt",
        "config": {
            "hidden_size": 64,
            "ffn_dim": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "word_embed_proj_dim": 64,
            "max_position_embeddings": 512,
        },
    },
    "tiny_mpt": {
        "model_type": "mpt",
        "config": {"d_model": 64, "n_heads": 4, "n_layers": 2, "expansion_ratio": 2, "max_seq_len": 512},
    },
    # OPT-2.7B: BLIP-2's decoder-only LM (BRIDGES.md 2.6).
    "opt_2_7b": {
        "model_type": "opt",
        "config": {
            "hidden_size": 2560,
            "ffn_dim": 10240,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "word_embed_proj_dim": 2560,
            "vocab_size": 50272,
            "max_position_embeddings": 2048,
        },
        "meta_device": True,
    },
    # MPT-1B (RedPajama-200B): OpenFlamingo-3B's LM, D 2048, 24 layers (BRIDGES.md 1.7).
    "mpt_1b": {
        "model_type": "mpt",
        "config": {
            "d_model": 2048,
            "n_heads": 16,
            "n_layers": 24,
            "expansion_ratio": 4,
            "max_seq_len": 2048,
            "vocab_size": 50432,
        },
        "meta_device": True,
    },
    # Vicuna-7B v1.5 (Llama-2-7B architecture): LLaVA-1.5, InstructBLIP (BRIDGES.md 2.6, 3.2).
    "vicuna_7b": {
        "model_type": "llama",
        "config": {
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 32000,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
        },
        "meta_device": True,
        "chat_template": "vicuna",
    },
    # LLaMA-1 7B (hidden 4096, 32 layers): OpenFlamingo-9B-class sizing with a Llama-style LM (BRIDGES.md 1.7).
    "llama_7b": {
        "model_type": "llama",
        "config": {
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 32000,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6,
        },
        "meta_device": True,
        "chat_template": "plain",
    },
    # Qwen2-7B as in mPLUG-Owl3 (BRIDGES.md 6.1): 28 layers, hidden 3584, 28 heads, 4 KV heads, vocab 151851.
    "qwen2_7b": {
        "model_type": "qwen2",
        "config": {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 151851,
            "max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
        },
        "meta_device": True,
        "chat_template": "chatml",
    },
}


def preset_config_class(name: str, values: dict[str, Any]) -> type:
    """A subclass of :class:`LMConfig` whose field defaults are ``values``."""
    known = {f.name: f for f in dataclasses.fields(LMConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise KeyError(f"LM preset '{name}' sets unknown fields {unknown}; valid: {sorted(known)}")
    new_fields = []
    for key, value in values.items():
        default = (
            dataclasses.field(default_factory=lambda v=value: dict(v))
            if isinstance(value, dict)
            else dataclasses.field(default=value)
        )
        new_fields.append((key, known[key].type, default))
    class_name = "".join(part.title() for part in name.split("_")) + "LMConfig"
    cls = dataclasses.make_dataclass(class_name, new_fields, bases=(LMConfig,))
    cls.__module__ = __name__  # so string annotations resolve against this module's imports
    return cls


for _name, _values in PRESETS.items():
    _cls = preset_config_class(_name, _values)
    globals()[_cls.__name__] = _cls  # importable by name, so configs pickle (ddp_spawn, DataLoader workers)
    LLMS.register(_name, _cls)(LMAdapter)
