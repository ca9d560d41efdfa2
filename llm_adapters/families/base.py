"""What the LM adapter needs to know about one family of HF causal LMs.

A :class:`Family` locates the decoder layers, the per-layer input norm, the self-attention and its projections,
and the rotary embedding of a ``transformers`` model, and reads the architecture facts (:class:`LMInfo`) from its
config. Adding a family is one small file that subclasses :class:`Family` and calls :func:`register_family`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torch import nn

from bridges.base import LMInfo


class Family:
    """Structural facts about one model family (stateless; one instance per family).

    Attributes:
        name: the family's name (``llama``, ``gpt2``, ...).
        model_types: the HF ``config.model_type`` values this family handles.
        attention_attr: the attribute of a decoder layer holding its self-attention module.
        supports_attention_extension: whether :meth:`qkvo` gives separate q/k/v/o projections and the attention
            takes RoPE ``position_embeddings`` (what Hyper Attention needs).
        lora_targets: module names LoRA adapts by default (the attention projections).
        default_templates: per model_type, the chat template a real checkpoint expects (see ``templates.py``).
    """

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    attention_attr: ClassVar[str]
    supports_attention_extension: ClassVar[bool]
    lora_targets: ClassVar[tuple[str, ...]] = ()
    default_templates: ClassVar[dict[str, str]] = {}

    def layers_container(self, model: nn.Module) -> nn.ModuleList:
        """The ``nn.ModuleList`` of decoder layers of the causal-LM ``model``."""
        raise NotImplementedError

    def input_norm(self, layer: nn.Module) -> nn.Module:
        """The norm applied to the residual stream right before ``layer``'s self-attention."""
        raise NotImplementedError

    def qkvo(self, attention: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        """The query, key, value and output projections of ``attention``."""
        raise NotImplementedError

    def rotary_embedding(self, model: nn.Module) -> nn.Module | None:
        """The model's rotary-embedding module, or ``None`` for absolute/learned positions."""
        return None

    def info(self, config: Any) -> LMInfo:
        """Architecture facts read from the HF config."""
        raise NotImplementedError

    def default_template(self, model_type: str) -> str:
        return self.default_templates.get(model_type, "plain")

    def decoder_layers(self, model: nn.Module) -> Sequence[nn.Module]:
        return list(self.layers_container(model))


class FusedQKVFamily(Family):
    """A family whose attention fuses q/k/v into one projection (GPT-2, MPT): no separate q/k/v/o to extend.

    Subclasses name the fused input projection and the output projection of the attention module.
    """

    qkv_attr: ClassVar[str]
    out_attr: ClassVar[str]
    supports_attention_extension = False

    def qkvo(self, attention: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        separate = sorted(t for t, f in FAMILIES.items() if not isinstance(f, FusedQKVFamily))
        raise NotImplementedError(
            f"{self.name} has no separate q/k/v projections: attn.{self.qkv_attr} is one fused projection (output "
            f"split [q|k|v]); use fused_qkv(attention) -> ({self.qkv_attr}, {self.out_attr}). Separate q/k/v/o "
            f"exist for: {separate}."
        )

    def fused_qkv(self, attention: nn.Module) -> tuple[nn.Module, nn.Module]:
        """``(fused q|k|v projection, output projection)`` of ``attention``."""
        return getattr(attention, self.qkv_attr), getattr(attention, self.out_attr)


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    for model_type in family.model_types:
        if model_type in FAMILIES:
            raise KeyError(f"model_type '{model_type}' is already handled by family '{FAMILIES[model_type].name}'")
        FAMILIES[model_type] = family
    return family


def get_family(model_type: str) -> Family:
    """The family handling HF ``model_type``; an error naming the supported ones otherwise."""
    if model_type not in FAMILIES:
        raise ValueError(
            f"LM model_type '{model_type}' is not supported. Supported model types: {', '.join(sorted(FAMILIES))}. "
            "Add a family file in llm_adapters/families/ (a Family subclass and register_family) to support it."
        )
    return FAMILIES[model_type]
