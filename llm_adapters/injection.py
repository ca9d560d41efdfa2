"""Reversible insertion of bridge modules into an HF decoder (Flamingo's gated blocks, Hyper Attention).

Injection is explicit module replacement, never a runtime mixin:

* ``before_layer``: ``layers[i]`` becomes :class:`InjectedDecoderLayer` ``(module, layer)``, which runs
  ``module(hidden_states)`` and then the original layer with the arguments the decoder loop passed;
* ``replace_attention``: ``layer.<attn>`` becomes :class:`InjectedAttention` ``(module, attn)``, which calls
  ``module(attn, hidden_states, *args, **kwargs)``.

:class:`Injector` records every replacement and :meth:`Injector.detach` undoes them in reverse order, so the module
tree and the ``state_dict`` keys are exactly the original ones again. While attached, a forward pre-hook on the
causal LM fills ``InjectionContext.query_positions`` for the current call from the KV-cache length (decoder layers
receive no ``cache_position`` in transformers 5, and the cache's keyword was renamed in 5.24), so cached generation
steps see their true positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from bridges.base import ContextSlot, Injection
from bridges.common.kv_cache import find_cache
from llm_adapters.families.base import Family


class _Forwarding(nn.Module):
    """Falls back to the wrapped module for attributes the wrapper does not have (``attention_type``, ...)."""

    _wrapped_attr: str

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__(self._wrapped_attr), name)


class InjectedDecoderLayer(_Forwarding):
    """Runs ``injected`` on the hidden states ``(B, L, D)`` before the original decoder ``layer``."""

    _wrapped_attr = "layer"

    def __init__(self, injected: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.injected = injected
        self.layer = layer

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.layer(self.injected(hidden_states), *args, **kwargs)


class InjectedAttention(_Forwarding):
    """Calls ``injected(attn, hidden_states, *args, **kwargs)`` in place of the original self-attention ``attn``."""

    _wrapped_attr = "attn"

    def __init__(self, injected: nn.Module, attn: nn.Module) -> None:
        super().__init__()
        self.injected = injected
        self.attn = attn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if "hidden_states" in kwargs:
            hidden_states = kwargs.pop("hidden_states")
        else:
            hidden_states, *args = args
        return self.injected(self.attn, hidden_states, *args, **kwargs)


def unwrap(module: nn.Module) -> nn.Module:
    """The original module under any injection wrappers."""
    while isinstance(module, (InjectedDecoderLayer, InjectedAttention)):
        module = module.layer if isinstance(module, InjectedDecoderLayer) else module.attn
    return module


class Injector:
    """Applies :class:`~bridges.base.Injection` s to one causal LM and removes them again.

    Args:
        model: the HF causal LM.
        family: its :class:`~llm_adapters.families.base.Family`.
    """

    def __init__(self, model: nn.Module, family: Family) -> None:
        self.model = model
        self.family = family
        self._records: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []  # (parent, attr, original, wrapper)
        self._hooks: list[RemovableHandle] = []

    @property
    def attached(self) -> bool:
        return bool(self._records)

    def attach(self, injections: Sequence[Injection], slot: ContextSlot | None = None) -> None:
        """Insert every injection; register the query-position hook that keeps ``slot.context`` current."""
        container = self.family.layers_container(self.model)
        num_layers = len(container)
        for inj in injections:
            if not 0 <= inj.layer < num_layers:
                raise ValueError(f"Injection at layer {inj.layer}, but the LM has {num_layers} decoder layers")
            if inj.mode == "before_layer":
                self._replace(container, str(inj.layer), lambda old, m=inj.module: InjectedDecoderLayer(m, old))
            elif inj.mode == "replace_attention":
                layer = unwrap(container[inj.layer])
                attr = self.family.attention_attr
                self._replace(layer, attr, lambda old, m=inj.module: InjectedAttention(m, old))
            else:
                raise ValueError(f"Unknown injection mode '{inj.mode}'; use 'before_layer' or 'replace_attention'")
        if slot is not None:
            self._hooks.append(self.model.register_forward_pre_hook(_QueryPositions(slot), with_kwargs=True))

    def _replace(self, parent: nn.Module, attr: str, make: Any) -> None:
        original = parent._modules[attr]
        wrapper = make(original)
        parent._modules[attr] = wrapper
        self._records.append((parent, attr, original, wrapper))

    def detach(self) -> None:
        """Restore every replaced module (reverse order) and remove the hooks."""
        while self._records:
            parent, attr, original, wrapper = self._records.pop()
            if parent._modules[attr] is not wrapper:
                raise RuntimeError(f"Module '{attr}' was replaced by someone else since injection; cannot detach")
            parent._modules[attr] = original
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


class _QueryPositions:
    """Forward pre-hook on the causal LM: ``query_positions = cache length + arange(L_q)`` for this call.

    The cache length comes from what the public API guarantees: the :class:`~transformers.Cache` object passed to
    the call (found by type, whatever the keyword is called in the installed release) and its ``get_seq_length()``;
    without a cache, a 2-D ``attention_mask`` covers past and current tokens, as ``generate`` keeps it.
    """

    def __init__(self, slot: ContextSlot) -> None:
        self.slot = slot

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        context = self.slot.context
        if context is None:
            return
        tokens = kwargs.get("input_ids")
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        if tokens is None and args:
            tokens = args[0]
        if tokens is None:
            return
        batch, length = tokens.shape[:2]
        offset = _past_length(args, kwargs, length)
        positions = torch.arange(offset, offset + length, device=tokens.device)
        context.query_positions = positions.expand(batch, length)


def _past_length(args: tuple, kwargs: dict, length: int) -> int:
    """How many tokens precede this call's ``length`` new ones in the sequence (0 for a full forward)."""
    cache = find_cache([*kwargs.values(), *args])
    if cache is not None:
        return cache.get_seq_length()
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return mask.shape[1] - length
    return 0
