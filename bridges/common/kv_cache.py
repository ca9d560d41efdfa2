"""The HF KV cache as a bridge module receives it, whatever the installed transformers calls it.

Decoder layers hand their attention the cache object as a keyword argument whose name has changed across releases
(``past_key_value`` in 4.x, ``past_key_values`` up to 5.23, ``cache`` from 5.24 on). What the public API keeps is the
object itself: a :class:`transformers.Cache` with ``update(key, value, layer_idx)`` and ``get_seq_length()``. So the
cache is found by its type, never by the keyword's name.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

from transformers.cache_utils import Cache

__all__ = ["Cache", "find_cache", "pop_cache"]

_CACHE_KEYWORDS = ("cache", "past_key_values", "past_key_value")


def find_cache(values: Iterable[Any]) -> Cache | None:
    """The first :class:`~transformers.Cache` among ``values`` (a call's positional and keyword arguments)."""
    return next((v for v in values if isinstance(v, Cache)), None)


def pop_cache(kwargs: MutableMapping[str, Any]) -> Cache | None:
    """Remove the KV cache (under any keyword) from ``kwargs`` and return it, or ``None`` when the call has none.

    Keywords known to have named the cache are dropped when ``None`` too, so what is left can be passed on to the
    LM's own attention function.
    """
    cache = None
    for name in [k for k, v in kwargs.items() if isinstance(v, Cache) or (v is None and k in _CACHE_KEYWORDS)]:
        value = kwargs.pop(name)
        if value is not None:  # not ``or``: an empty Cache has len() 0
            cache = value
    return cache
