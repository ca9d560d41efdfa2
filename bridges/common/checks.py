"""Range checks for bridge config dataclasses (called from their ``__post_init__``).

A bad value fails when the config is built, before any module is, with the key, the value, the allowed range and
the fix, e.g. ``'bridge.num_latents' = 0 is out of range for PerceiverBridgeConfig: allowed >= 1``.
"""

from __future__ import annotations

from typing import Any

from encoders.registry import ConfigError


def at_least(config: Any, low: float, *keys: str, optional: bool = False) -> None:
    """Raise :class:`ConfigError` when one of ``config``'s ``keys`` is below ``low`` (``None`` passes if optional)."""
    for key in keys:
        value = getattr(config, key)
        if value is None and optional:
            continue
        if value is None or not value >= low:  # `not >=` also catches NaN
            raise ConfigError(
                f"'bridge.{key}' = {value!r} is out of range for {type(config).__name__}: allowed >= {low}"
                f"{' (or null)' if optional else ''}. Fix: set bridge.{key} to {_num(low)} or more."
            )


def positive(config: Any, *keys: str) -> None:
    """Raise :class:`ConfigError` when one of ``keys`` is not a finite number above 0 (widths, multipliers)."""
    for key in keys:
        value = getattr(config, key)
        if not (value > 0 and value != float("inf")):
            raise ConfigError(
                f"'bridge.{key}' = {value!r} is out of range for {type(config).__name__}: allowed > 0 (finite). "
                f"Fix: set bridge.{key} to a positive value, e.g. 4.0."
            )


def in_unit_interval(config: Any, *keys: str) -> None:
    """Raise :class:`ConfigError` when one of ``keys`` is outside ``[0, 1)`` (dropout probabilities)."""
    for key in keys:
        value = getattr(config, key)
        if not 0 <= value < 1:
            raise ConfigError(
                f"'bridge.{key}' = {value!r} is out of range for {type(config).__name__}: allowed 0 <= p < 1. "
                f"Fix: set bridge.{key}=0.1 (or 0 to disable)."
            )


def divisible(config: Any, key: str, by: str) -> None:
    """Raise :class:`ConfigError` unless ``config.<key>`` is a multiple of ``config.<by>``."""
    value, divisor = getattr(config, key), getattr(config, by)
    if divisor and value % divisor:
        raise ConfigError(
            f"'bridge.{key}' = {value} is not divisible by 'bridge.{by}' = {divisor} ({type(config).__name__}). "
            f"Fix: pick bridge.{key} as a multiple of {divisor}, e.g. {divisor * max(1, round(value / divisor))}."
        )


def _num(low: float) -> float | int:
    return int(low) if float(low).is_integer() else low
