"""What a run builds before training: plug-ins, the world (pretrained backbones), the data, the model.

The world and the data are memoised per process by their resolved config, so the members of a sweep that run in one
process (``launcher=local``, or each joblib worker) share the world's pretrained backbones and the sample pools;
every run still builds its own model from a seeded initialisation.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from encoders.registry import ConfigError
from experiments.harness.config import RunConfig, to_container
from experiments.harness import feature_cache
from experiments.harness.data import DATA_SOURCES, TaskData
from experiments.harness.memory import memory_is_short

log = logging.getLogger(__name__)

_MEMO: dict[tuple[str, str], Any] = {}


def _key(*parts: Any) -> str:
    return json.dumps([to_container(p) for p in parts], sort_keys=True, default=str)


def spec_key(*parts: Any) -> str:
    """A stable string naming resolved specs (for caches keyed by what was built)."""
    return _key(*parts)


def memoised(kind: str, key: str, make: Callable[[], Any]) -> Any:
    """``make()`` once per process for each ``(kind, key)``."""
    if (kind, key) not in _MEMO:
        _MEMO[(kind, key)] = make()
    return _MEMO[(kind, key)]


def clear_memo() -> None:
    _MEMO.clear()


def shed_data_pools() -> int:
    """Drop every memoised sample pool and the cached encoder features, when memory is short
    (:func:`~experiments.harness.memory.memory_is_short`); returns how many pools were dropped. Called before a new
    pool is built; pools and features are rebuilt from their seeds if a later run needs them again."""
    if not memory_is_short():
        return 0
    stale = [k for k in _MEMO if k[0] == "data"]
    for k in stale:
        del _MEMO[k]
    feature_cache.clear()
    gc.collect()
    if stale:
        log.info("memory is short: dropped %d cached sample pool(s) and the cached encoder features", len(stale))
    return len(stale)


def import_plugins(modules: Sequence[str]) -> None:
    """Import user modules (they register bridges, encoders, LMs or data sources on import)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"plugins: cannot import '{name}' ({err}). Is it on PYTHONPATH?") from err


def build_world(run: RunConfig) -> Any:
    """The world's pretrained backbones (``experiments.world.build_world_backbones``), or ``None``."""
    if run.world is None:
        return None
    from experiments.world import build_world_backbones

    return memoised("world", _key(run.world), lambda: build_world_backbones(run.world))


def build_data(run: RunConfig, world: Any) -> TaskData:
    """The run's samples from its data source (memoised on the data config, the seed and the world)."""
    if run.data is None:
        raise ConfigError("'data' is not set: choose a data source, e.g. data=world.")
    entry, config = DATA_SOURCES.make_config(run.data, path="data")

    def make() -> TaskData:
        data = entry.cls(config, world).build(run.seed)
        if not isinstance(data, TaskData):
            raise TypeError(f"Data source '{entry.name}' returned {type(data).__name__}, not TaskData")
        return data

    key = _key(run.data, run.world, run.seed)
    if ("data", key) not in _MEMO:
        shed_data_pools()
    return memoised("data", key, make)


def component_specs(run: RunConfig, world: Any) -> tuple[Any, Any, Any]:
    """The encoder, bridge and LM specs; the world may fill in its pretrained backbones (``world.resolve_specs``)."""
    encoder, bridge, llm = to_container(run.encoder), to_container(run.bridge), to_container(run.llm)
    for name, spec in (("encoder", encoder), ("bridge", bridge), ("llm", llm)):
        if spec is None:
            raise ConfigError(
                f"'{name}' is not set: choose one, e.g. {name}=<option> (see experiments/configs/{name}/)."
            )
    if world is not None and hasattr(world, "resolve_specs"):
        encoder, llm = world.resolve_specs(encoder, llm)
    return encoder, bridge, llm


def build_model(run: RunConfig, world: Any = None) -> Any:
    """A fresh ``MultimodalLM`` (encoders + bridge + LM) for ``run``."""
    from llm_adapters.multimodal_lm import build_multimodal_lm

    encoder, bridge, llm = component_specs(run, world)
    try:
        return build_multimodal_lm(encoder, bridge, llm)
    except ConfigError as err:
        if "'bridge." in str(err):
            raise ConfigError(
                f"{err} (Switching bridge.name on the command line keeps the default option's fields; drop them with "
                f"'~bridge' +bridge.name=NAME (README: 'Your own bridge'), or select a YAML option with bridge=OPTION.)"
            ) from None
        raise


def collators(model: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The model's (training, generation) collators: samples -> ``MultimodalBatch``."""
    from llm_adapters import MultimodalCollator

    return MultimodalCollator.for_model(model, train=True), MultimodalCollator.for_model(model, train=False)
