"""Value checks on a typed run config, run by :func:`experiments.harness.config.validate_config`.

Types and key names are checked by the structured merge; this module checks what a type cannot say: ranges
(``lr > 0``, ``0 <= warmup_ratio <= 1``, ``eval.limit >= 1``), non-empty selections (``eval.tasks=[]``) and the
component sections against their registered config dataclasses (``bridge.num_latents=abc`` or ``=0`` fails here,
before any run starts, not when the model is built). Every message names the key, the value, the allowed range and
the fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from encoders.registry import ConfigError, RegistryError, merge_config

if TYPE_CHECKING:
    from experiments.harness.config import RunConfig

# Keys of an encoder spec that make it one encoder (anything else maps encoder names to specs).
_SINGLE_ENCODER_KEYS = ("name", "preset", "world")


def _fail(key: str, value: Any, allowed: str, fix: str) -> None:
    raise ConfigError(f"'{key}' = {value!r} is out of range: allowed {allowed}. Fix: {fix}.")


def _at_least(key: str, value: Any, low: float, fix: str | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or isinstance(value, bool) or not value >= low:  # `not >=` also rejects NaN
        _fail(key, value, f">= {low}{' (or null)' if optional else ''}", fix or f"set {key} to {low} or more")


def _between(key: str, value: Any, low: float, high: float, fix: str) -> None:
    if value is None or not low <= value <= high:
        _fail(key, value, f"{low} <= value <= {high}", fix)


def _positive(key: str, value: Any, fix: str) -> None:
    if value is None or not (value > 0 and math.isfinite(value)):
        _fail(key, value, "> 0 (finite)", fix)


OBJECTIVES = ("lm", "qformer_pretrain")


def _check_objective(at: str, objective: str, bridge: Any) -> None:
    """A stage's ``objective`` is known, and ``qformer_pretrain`` has a Q-Former with text layers to train."""
    if objective not in OBJECTIVES:
        _fail(f"{at}.objective", objective, " | ".join(OBJECTIVES),
              f"set {at}.objective=lm (the LM loss) or qformer_pretrain (BLIP-2 stage 1)")
    if objective != "qformer_pretrain":
        return
    section = bridge if isinstance(bridge, Mapping) else {"name": bridge}
    if section.get("name") != "qformer":
        raise ConfigError(
            f"'{at}.objective' = 'qformer_pretrain' trains a Q-Former, but the bridge is {section.get('name')!r}. "
            f"Fix: use bridge=qformer, or {at}.objective=lm."
        )
    if not (section.get("text_layers") or section.get("instruction_aware")):
        raise ConfigError(
            f"'{at}.objective' = 'qformer_pretrain' needs the Q-Former's text layers (ITC/ITM/ITG read captions), but "
            "bridge.text_layers is false. Fix: set bridge.text_layers=true (and bridge.vocab_size above the LM "
            "tokenizer's size, which the captions are written in)."
        )


def check_ranges(run: RunConfig) -> None:
    """Raise :class:`ConfigError` for the first out-of-range harness value (stages, train, eval, efficiency)."""
    for name, stage in run.stages.items():
        at = f"stages.{name}"
        if not stage.trainable:
            raise ConfigError(f"'{at}.trainable' is empty: name at least one parameter group (e.g. [bridge]).")
        _positive(f"{at}.lr", stage.lr, f"set {at}.lr to a peak learning rate such as 1e-3")
        for group, lr in stage.group_lr.items():
            _positive(f"{at}.group_lr.{group}", lr, f"set {at}.group_lr.{group} to a learning rate such as 2e-5")
        _at_least(f"{at}.max_steps", stage.max_steps, 1)
        _between(f"{at}.warmup_ratio", stage.warmup_ratio, 0, 1,
                 f"give a share of max_steps, e.g. {at}.warmup_ratio=0.03 (or {at}.warmup_steps=N for steps)")
        if stage.warmup_steps is not None:
            _between(f"{at}.warmup_steps", stage.warmup_steps, 0, stage.max_steps,
                     f"set {at}.warmup_steps to at most max_steps ({stage.max_steps}) or null")
        _between(f"{at}.min_lr_ratio", stage.min_lr_ratio, 0, 1, f"set {at}.min_lr_ratio between 0 and 1")
        _at_least(f"{at}.weight_decay", stage.weight_decay, 0)
        if len(stage.betas) != 2 or not all(0 <= b < 1 for b in stage.betas):
            _fail(f"{at}.betas", list(stage.betas), "two values in [0, 1)", f"e.g. {at}.betas=[0.9,0.999]")
        if stage.grad_clip is not None:
            _positive(f"{at}.grad_clip", stage.grad_clip, f"set {at}.grad_clip to e.g. 1.0, or null for no clipping")
        _at_least(f"{at}.effective_batch_size", stage.effective_batch_size, 1, optional=True)
        if stage.tasks is not None and not stage.tasks:
            raise ConfigError(f"'{at}.tasks' = [] selects no training task. Fix: {at}.tasks=null (all) or name tasks.")
        _check_objective(at, stage.objective, run.bridge)
    train = run.train
    _at_least("train.effective_batch_size", train.effective_batch_size, 1)
    _at_least("train.micro_batch_size", train.micro_batch_size, 1, optional=True)
    _at_least("train.num_workers", train.num_workers, 0)
    _at_least("train.checkpoint_every_n_steps", train.checkpoint_every_n_steps, 0,
              "set train.checkpoint_every_n_steps to 0 (stage ends only) or more")
    _at_least("train.log_every_n_steps", train.log_every_n_steps, 1)
    _at_least("trainer.num_nodes", run.trainer.num_nodes, 1)
    ev = run.eval
    _at_least("eval.batch_size", ev.batch_size, 1)
    _at_least("eval.max_new_tokens", ev.max_new_tokens, 1)
    _at_least("eval.limit", ev.limit, 1, "set eval.limit to 1 or more, or eval.limit=null for every sample",
              optional=True)
    if ev.enabled and ev.tasks is not None and not ev.tasks:
        raise ConfigError(
            "'eval.tasks' = [] selects no evaluation task, so the run would finish without evaluation. "
            "Fix: eval.tasks=null (every evaluation task of the data), name tasks, or eval.enabled=false."
        )
    _at_least("efficiency.skip_steps", run.efficiency.skip_steps, 0)


def component_registry(kind: str) -> Any:
    """The registry of ``bridge``, ``llm``, ``encoder`` or ``data`` components."""
    if kind == "bridge":
        import bridges

        return bridges.BRIDGES
    if kind == "llm":
        from llm_adapters import LLMS

        return LLMS
    if kind == "encoder":
        from encoders import ENCODERS

        return ENCODERS
    from experiments.harness.data import DATA_SOURCES

    return DATA_SOURCES


def encoder_count(spec: Any) -> int:
    """How many encoders an encoder spec builds (a mapping of names to specs is an encoder set)."""
    if not isinstance(spec, Mapping) or any(k in spec for k in _SINGLE_ENCODER_KEYS):
        return 1
    return len(spec)


def check_components(run: RunConfig) -> None:
    """Validate the ``bridge`` section against its registered config dataclass (types and ranges) and the encoder
    count it needs. A bridge not registered yet (a plug-in imported later) is checked when the model is built."""
    bridge = run.bridge
    if not isinstance(bridge, Mapping) or not isinstance(bridge.get("name"), str):
        return
    try:
        entry = component_registry("bridge").get(bridge["name"])
    except (RegistryError, ImportError):
        return
    merge_config(entry.config_cls, {k: v for k, v in bridge.items() if k != "name"}, "bridge")
    need = getattr(entry.config_cls, "min_encoders", 1)
    have = encoder_count(run.encoder)
    if have < need:
        raise ConfigError(
            f"Bridge '{entry.name}' needs at least {need} encoders but the config gives {have} ({run.encoder!r}): "
            f"with one encoder it would silently be a plain projector. Fix: give 'encoder' a mapping of {need} or "
            "more encoders, e.g. encoder={vit: {world: vit}, expert: {world: expert}} (experiment=quick_ablation "
            f"does this through by_bridge.{entry.name}.encoder)."
        )
