"""Registries of named components and strict, structured configs.

Every registered component (encoder, bridge, LM) pairs a class with a plain dataclass config. Users select a
component by its exact registry name and give only the fields they change; the merge onto the dataclass is an
OmegaConf structured merge, so a misspelt key or a wrong type fails at once with the key's full path.

This module sits at the bottom of the dependency stack (``encoders`` <- ``bridges`` <- ``llm_adapters`` <-
``experiments``), so every layer can use it without importing upward.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

T = TypeVar("T")

NAME_KEY = "name"


class ConfigError(ValueError):
    """A configuration problem, with the offending key path and the fix in the message."""


class RegistryError(KeyError):
    """An unknown or duplicate registry name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component: its class and its config dataclass."""

    name: str
    cls: type[T]
    config_cls: type


def merge_config(config_cls: type, overrides: Mapping[str, Any] | DictConfig | None, path: str = "") -> Any:
    """Merge ``overrides`` onto the dataclass defaults of ``config_cls`` and return a dataclass instance.

    Raises:
        ConfigError: on an unknown key (naming the path and the valid keys) or a value of the wrong type.
    """
    base = OmegaConf.structured(config_cls)
    if overrides is None:
        return OmegaConf.to_object(base)
    if not isinstance(overrides, DictConfig):
        overrides = OmegaConf.create(dict(overrides))
    try:
        merged = OmegaConf.merge(base, overrides)
    except (ConfigKeyError, ConfigAttributeError) as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
        full = f"{path}.{key}" if path else str(key)
        valid = [f.name for f in dataclasses.fields(config_cls)]
        close = difflib.get_close_matches(str(key).split(".")[-1], valid, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"Unknown config key '{full}' for {config_cls.__name__}.{hint} Valid keys: {', '.join(valid)}."
        ) from None
    except ValidationError as err:
        key = getattr(err, "full_key", None) or "?"
        full = f"{path}.{key}" if path else str(key)
        expected = _field_type(config_cls, str(key))
        fix = f" Fix: give '{full}' a value of type {expected}." if expected else ""
        reason = str(err.msg).splitlines()[0]
        raise ConfigError(f"Wrong type for config key '{full}' in {config_cls.__name__}: {reason}.{fix}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"Invalid config at '{path or config_cls.__name__}': {err}") from None
    return OmegaConf.to_object(merged)


def _field_type(config_cls: type, dotted: str) -> str | None:
    """The declared type of the field at ``dotted`` (through nested dataclasses and ``dict[str, dataclass]``)."""
    tp: Any = config_cls
    parts = dotted.split(".")
    while parts:
        if typing.get_origin(tp) is dict:
            tp, parts = typing.get_args(tp)[1], parts[1:]
            continue
        if not dataclasses.is_dataclass(tp):
            return None
        try:
            hints = typing.get_type_hints(tp)
        except Exception:  # noqa: BLE001 - an unresolvable annotation: no hint
            return None
        if parts[0] not in hints:
            return None
        tp, parts = hints[parts[0]], parts[1:]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp = args[0]
    return getattr(tp, "__name__", None) if not typing.get_args(tp) else str(tp).replace("typing.", "")


class Registry(Generic[T]):
    """Maps exact, case-sensitive names to ``(class, config dataclass)``.

    Usage::

        BRIDGES = Registry("bridge", base=Bridge)

        @BRIDGES.register("mlp", MLPBridgeConfig)
        class MLPBridge(PrefixBridge): ...

        bridge = BRIDGES.build({"name": "mlp", "depth": 2}, **runtime_kwargs)

    A name of the form ``"my_pkg.my_module:my_name"`` imports ``my_pkg.my_module`` first (which registers its
    components) and then looks up ``my_name``: user plug-ins need no change to this package.
    """

    def __init__(self, kind: str, base: type | None = None) -> None:
        self.kind = kind
        self.base = base
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config_cls: type) -> Callable[[type[T]], type[T]]:
        if not dataclasses.is_dataclass(config_cls):
            raise TypeError(f"{self.kind} '{name}': config {config_cls!r} must be a dataclass")

        def decorator(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise RegistryError(
                    f"Duplicate {self.kind} name '{name}': already registered by "
                    f"{self._entries[name].cls.__module__}.{self._entries[name].cls.__qualname__}. Pick another name."
                )
            if self.base is not None and not issubclass(cls, self.base):
                raise TypeError(f"{self.kind} '{name}': {cls.__qualname__} must subclass {self.base.__qualname__}")
            self._entries[name] = Entry(name, cls, config_cls)
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def names(self, include_private: bool = False) -> list[str]:
        """Registered names, sorted. Names starting with ``_`` (test doubles, internals) are private: usable by
        exact name but not listed, so discovery and error messages show only real components."""
        return sorted(n for n in self._entries if include_private or not n.startswith("_"))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Entry[T]:
        if name not in self._entries and ":" in name:
            module, _, short = name.partition(":")
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise RegistryError(
                    f"Cannot import '{module}' for the {self.kind} plug-in '{name}' ({err}). Fix: put the module on "
                    f"PYTHONPATH (or pip install its package), or list it in plugins=[...] and name the {self.kind} "
                    f"'{short}'."
                ) from err
            name = short
        if name not in self._entries:
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise RegistryError(
                f"Unknown {self.kind} '{name}'.{hint} Known {self.kind}s: {', '.join(self.names())}. "
                f"A plug-in is selected as 'package.module:name'."
            )
        return self._entries[name]

    def make_config(self, spec: str | Mapping[str, Any] | DictConfig, path: str | None = None) -> tuple[Entry[T], Any]:
        """Resolve ``spec`` (a name, or a mapping with a ``name`` key plus overrides) to (entry, config)."""
        path = path or self.kind
        if isinstance(spec, str):
            return self.get(spec), merge_config(self.get(spec).config_cls, None, path)
        items = dict(OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else spec)
        if NAME_KEY not in items:
            raise ConfigError(f"'{path}' needs a '{NAME_KEY}' key; known {self.kind}s: {', '.join(self.names())}.")
        entry = self.get(str(items.pop(NAME_KEY)))
        return entry, merge_config(entry.config_cls, items, path)

    def build(self, spec: str | Mapping[str, Any] | DictConfig | Any, *args: Any, **kwargs: Any) -> T:
        """Build a component from a name, a mapping with ``name``, or an already-merged config dataclass."""
        if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
            matches = [e for e in self._entries.values() if type(spec) is e.config_cls]
            if len(matches) != 1:
                raise ConfigError(f"Cannot tell which {self.kind} {type(spec).__name__} configures; pass a name.")
            return matches[0].cls(spec, *args, **kwargs)
        entry, config = self.make_config(spec)
        return entry.cls(config, *args, **kwargs)
