"""The run configuration: typed dataclasses for everything the harness owns, strict validation, composition.

Merge order (documented once, here): dataclass defaults < ``experiment/`` preset < ``paper/`` preset < CLI
overrides; a ``by_bridge`` fragment is merged after composition, so it wins over both presets but never over the
command line. Hydra composes the YAML groups
(``experiments/configs/config.yaml`` lists them); :func:`cli_wins` writes the command line's values into the
``by_bridge`` fragments; :func:`validate_config` then merges the fragment and the result onto :class:`RunConfig`, so
a misspelt key or a wrong type fails at once with the key's full path and the valid keys at that path, and checks
ranges (``experiments.harness.checks``). The component sections (``encoder``, ``llm``, ``bridge``, ``data``,
``world``) are typed ``Any`` here: the ``bridge`` section is checked against its registered config dataclass when
the bridge is known; all are validated by their registries when the model and the data are built.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError

from bridges.common.token_grid import square_side
from encoders.registry import ConfigError, merge_config
from experiments.harness.checks import check_components, check_ranges, component_registry, encoder_count

CONFIG_MODULE = "experiments.configs"


def _square_side_resolver(tokens: int) -> int:
    """``s`` for ``tokens = s * s``: the ``${square_side:...}`` resolver, which turns a token count into a grid side
    for a bridge whose knob is the side (Eagle's ``grid_size`` in ``experiment=token_sweep``)."""
    side = square_side(tokens)
    if side is None:
        raise ConfigError(f"{tokens!r} visual tokens is not a square grid s x s; use 1, 4, 9, 16, ...")
    return side


OmegaConf.register_new_resolver("square_side", _square_side_resolver, replace=True)


@dataclass
class StageConfig:
    """One training stage.

    Attributes:
        trainable: glob patterns over the model's named parameter groups (``encoder``, ``encoder.last_k``,
            ``bridge``, ``bridge.gates``, ``lm``, ``lm.new_tokens``, ``lm.lora``); every parameter of a matched
            group trains, every other parameter is frozen. Asserted at the stage start. LoRA adapters exist when
            the LM config asks for them (``llm.lora_rank > 0``); a stage trains them by naming ``lm.lora``.
        lr: peak learning rate of every trainable group without an entry in ``group_lr``.
        group_lr: peak learning rate per group pattern (first matching pattern wins), e.g. ``{lm: 2e-5}``.
        max_steps: optimiser steps of this stage.
        warmup_ratio: share of ``max_steps`` with linear warm-up (LLaVA uses 0.03), then cosine decay.
        warmup_steps: warm-up length in steps; when set it replaces ``warmup_ratio`` (BLIP-2: 2000).
        min_lr_ratio: the cosine decays to ``lr * min_lr_ratio`` (1.0 = constant after warm-up, OpenFlamingo).
        weight_decay: AdamW decay on matrices (biases and norms never decay).
        betas: AdamW betas.
        grad_clip: gradient-norm clip, ``None`` to disable.
        effective_batch_size: samples per optimiser step over all devices; ``None`` takes ``train``'s.
        tasks: training tasks of this stage, ``None`` for all the data's training tasks.
        objective: what the stage minimises: ``lm`` (the LM's next-token loss through the bridge) or
            ``qformer_pretrain`` (BLIP-2 stage 1, ITC + ITM + ITG on the image-caption pairs of the stage's training
            samples, no LM; needs ``bridge=qformer`` with ``bridge.text_layers=true``;
            ``experiments/harness/objectives.py``).
        objective_options: settings of the objective (``qformer_pretrain``: the fields of
            ``bridges.qformer_pretrain.QFormerPretrainConfig``, e.g. ``{embed_dim: 64}``).
        bridge_options: settings the bridge takes for this stage (its ``stage_options``), e.g. Eagle's
            pre-alignment stage ``{pre_align_expert: expert}``; a stage without them runs the bridge as configured.
    """

    trainable: list[str] = field(default_factory=lambda: ["bridge"])
    lr: float = 1e-3
    group_lr: dict[str, float] = field(default_factory=dict)
    max_steps: int = 100
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float | None = 1.0
    effective_batch_size: int | None = None
    tasks: list[str] | None = None
    objective: str = "lm"
    objective_options: dict[str, Any] = field(default_factory=dict)
    bridge_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Batching, checkpointing and logging cadence shared by all stages.

    Attributes:
        effective_batch_size: samples per optimiser step over all devices (the setting that matters);
            gradient accumulation = effective / (micro_batch_size x world size), which must divide exactly.
        micro_batch_size: samples per device per forward pass; ``None`` = effective / world size.
        num_workers: DataLoader workers (0 keeps everything in the main process).
        checkpoint_every_n_steps: save ``last.ckpt`` every n optimiser steps (0: only at the stage end).
        log_every_n_steps: training scalars go to the loggers and ``metrics.jsonl`` every n steps.
        cache_features: reuse frozen encoder features across steps and across the runs of one process
            (``experiments/harness/feature_cache.py``; single CPU process only; recorded in efficiency.json).
    """

    effective_batch_size: int = 32
    micro_batch_size: int | None = None
    num_workers: int = 0
    checkpoint_every_n_steps: int = 0
    log_every_n_steps: int = 10
    cache_features: bool = False


@dataclass
class TrainerConfig:
    """The Lightning ``Trainer`` (presets: ``trainer/cpu``, ``gpu``, ``ddp``, ``ddp_spawn``, ``fsdp``).

    Attributes:
        loggers: any of ``csv``, ``tensorboard``, ``wandb``, ``mlflow`` (``metrics.jsonl`` is always written).
        fsdp_sharding: FSDP sharding strategy when ``strategy == "fsdp"``.
    """

    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    deterministic: bool = False
    loggers: list[str] = field(default_factory=lambda: ["csv"])
    progress_bar: bool = True
    fsdp_sharding: str = "FULL_SHARD"


@dataclass
class EvalConfig:
    """Evaluation: each task scored by its metric (``experiments.evaluation``), exact match beside it.

    Attributes:
        tasks: tasks to evaluate, ``None`` for every evaluation task of the data.
        limit: evaluate at most this many samples per task (``None``: all).
        mode: ``generate`` (greedy answers) or ``loglikelihood`` (the most likely of the sample's candidate
            answers, ``meta["options"]`` or ``meta["choices"]``); ``bridgelab eval`` honours both.
    """

    enabled: bool = True
    batch_size: int = 64
    max_new_tokens: int = 4
    tasks: list[str] | None = None
    limit: int | None = None
    mode: str = "generate"

    def __post_init__(self) -> None:
        if self.mode not in ("generate", "loglikelihood"):
            raise ConfigError(f"eval.mode={self.mode!r} is not a mode; use generate or loglikelihood.")


@dataclass
class EfficiencyConfig:
    """What ``efficiency.json`` measures.

    Attributes:
        flops: count FLOPs per sample with ``torch.utils.flop_counter`` (one forward, one forward+backward).
        skip_steps: first training steps excluded from the samples/s figure (warm-up, allocator).
    """

    enabled: bool = True
    flops: bool = True
    skip_steps: int = 3


@dataclass
class RunConfig:
    """A whole run. ``encoder``/``llm``/``bridge``/``data``/``world`` are validated by their own registries.

    Attributes:
        name: a label for tables.
        run_dir: where the run lives; in a sweep, the root that holds one sub-directory per member.
        seed: seeds everything (model init, data order, dropout).
        plugins: modules imported before anything is built (user bridges, encoders, LMs register on import).
        resume: rerunning continues an unfinished run from its last checkpoint and skips a finished one;
            ``False`` refuses to touch an existing run directory.
        resume_from_corrupt: what a rerun does when the checkpoint it resumes from is damaged: ``fail`` (an error
            naming the file and these options), ``previous`` (resume from the checkpoint before it, ``prev.ckpt``),
            ``restart_stage`` (train that stage again from its start). The damaged file is kept as ``*.corrupt``.
        by_bridge: per bridge name, a config fragment merged onto the whole config when the run's bridge has
            that name, e.g. ``{qformer: {bridge: {num_query_tokens: 16}}, eagle: {encoder: {...two experts...}}}``.
            One sweep over ``bridge=...`` can so size each bridge (and give Eagle its second expert); ``run.json``
            records the merged result. The command line still wins: a key set on the command line (e.g.
            ``bridge.num_latents=32``) replaces that key in every fragment (:func:`cli_wins`), so a preset's
            fragment never brings an overridden value back.
        tags: free-form labels copied to ``run.json`` (e.g. the sweep axis values).
    """

    name: str = "run"
    run_dir: str = "runs/${name}"
    seed: int = 0
    plugins: list[str] = field(default_factory=list)
    resume: bool = True
    resume_from_corrupt: str = "fail"
    encoder: Any = None
    llm: Any = None
    bridge: Any = None
    by_bridge: dict[str, Any] = field(default_factory=dict)
    data: Any = None
    world: Any = None
    stages: dict[str, StageConfig] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    efficiency: EfficiencyConfig = field(default_factory=EfficiencyConfig)
    tags: dict[str, Any] = field(default_factory=dict)


# Keys that do not change what a run computes: excluded from the config hash, so changing them keeps a run
# resumable (and a finished run skippable).
NON_SEMANTIC_KEYS = (
    "by_bridge",  # its effect on a run is already in the sections it merged into; other bridges' fragments have none
    "name",
    "run_dir",
    "resume",
    "resume_from_corrupt",
    "tags",
    "trainer.loggers",
    "trainer.progress_bar",
    "train.num_workers",
    "train.checkpoint_every_n_steps",
    "train.log_every_n_steps",
)


def _unwrap_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return args[0] if len(args) == 1 else tp
    return tp


def _check_keys(node: Any, cls: type, path: str) -> None:
    """Raise :class:`ConfigError` on the first key of ``node`` that ``cls`` (a dataclass) does not have."""
    if not isinstance(node, Mapping):
        return
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    for key, value in node.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in hints:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"Unknown config key '{full}'.{hint} Valid keys at '{path or '<root>'}': {', '.join(valid)}."
            )
        tp = _unwrap_optional(hints[key])
        if dataclasses.is_dataclass(tp):
            _check_keys(value, tp, full)
        elif typing.get_origin(tp) is dict and isinstance(value, Mapping):
            inner = _unwrap_optional(typing.get_args(tp)[1])
            if dataclasses.is_dataclass(inner):
                for sub, sub_value in value.items():
                    _check_keys(sub_value, inner, f"{full}.{sub}")


def to_container(cfg: Any) -> Any:
    """A plain, resolved Python container of an OmegaConf node (or the value itself).

    Raises:
        ConfigError: a resolver of ours refused a value; the message names the key it was resolving.
    """
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = OmegaConf.structured(cfg)
    if not isinstance(cfg, (DictConfig, ListConfig)):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, ConfigError):  # OmegaConf re-raises it along the way
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise ConfigError(f"{err.full_key}: {cause}") from None


def validate_config(cfg: Mapping[str, Any] | DictConfig | RunConfig) -> RunConfig:
    """Merge a composed config onto :class:`RunConfig` defaults and return the typed, resolved result.

    Raises:
        ConfigError: an unknown key (with its full path and the valid keys there) or a wrong type.
    """
    if isinstance(cfg, RunConfig):
        return cfg
    data = to_container(_own_fragment_only(cfg))
    if not isinstance(data, Mapping):
        raise ConfigError(f"A run config must be a mapping, got {type(data).__name__}")
    data = {k: v for k, v in data.items() if k != "hydra"}
    _check_keys(data, RunConfig, "")
    data = _canonical_plugin_name(_apply_by_bridge(data))
    _check_keys(data, RunConfig, "")
    run = merge_config(RunConfig, data)
    if not run.stages:
        raise ConfigError("'stages' is empty: declare at least one stage (e.g. stages=align).")
    check_ranges(run)
    check_components(run)
    return run


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key not in ("encoder",):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _bridge_name(bridge: Any) -> str | None:
    if isinstance(bridge, str):
        return bridge
    return bridge.get("name") if isinstance(bridge, Mapping) else None


def _own_fragment_only(cfg: Any) -> Any:
    """``cfg`` with ``by_bridge`` cut to the run's own bridge's fragment, before anything is resolved: another
    bridge's fragment may not resolve for this run (``${square_side:...}`` of a count only Eagle must make square)."""
    if not isinstance(cfg, DictConfig) or not isinstance(cfg.get("by_bridge"), DictConfig):
        return cfg
    name = _bridge_name(cfg.get("bridge"))
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.by_bridge = {k: v for k, v in cfg.by_bridge.items_ex(resolve=False) if k == name}
    return cfg


def _apply_by_bridge(data: dict[str, Any]) -> dict[str, Any]:
    """Merge ``by_bridge[<bridge name>]`` onto the config (``encoder`` is replaced whole: an encoder set differs)."""
    bridge, table = data.get("bridge"), data.get("by_bridge") or {}
    name = _bridge_name(bridge)
    if name not in table:
        return data
    fragment = table[name] or {}
    if not isinstance(fragment, Mapping):
        raise ConfigError(f"'by_bridge.{name}' must be a mapping of config keys, got {type(fragment).__name__}")
    if isinstance(bridge, str):
        data = {**data, "bridge": {"name": bridge}}
    return _deep_merge(data, fragment)


def _canonical_plugin_name(data: dict[str, Any]) -> dict[str, Any]:
    """``bridge.name=pkg.mod:name`` becomes ``bridge.name=name`` with ``pkg.mod`` in ``plugins``: the same plug-in
    named either way is the same config (and gets the same config hash)."""
    bridge = data.get("bridge")
    name = bridge.get("name") if isinstance(bridge, Mapping) else None
    if not isinstance(name, str) or ":" not in name:
        return data
    module, _, short = name.partition(":")
    plugins = list(data.get("plugins") or [])
    plugins += [module] if module not in plugins else []
    return {**data, "bridge": {**bridge, "name": short}, "plugins": plugins}


def cli_wins(cfg: DictConfig, overrides: Sequence[str], groups: Sequence[str] = ()) -> DictConfig:
    """Make the command line win over ``by_bridge`` fragments (merge order: ... < experiment < command line).

    Hydra has already put each ``key=value`` override into ``cfg``; a preset's ``by_bridge.<name>`` fragment that
    sets the same key would overwrite it when :func:`validate_config` merges the fragment. So each such key is set to
    the command line's value in every fragment that sets it (or that replaces the key's whole section, as an
    ``encoder`` fragment does). ``groups`` are the config-group names (``bridge=perceiver`` picks an option, it sets
    no key). Returns ``cfg``, changed in place.
    """
    table = cfg.get("by_bridge") if isinstance(cfg, DictConfig) else None
    if not table:
        return cfg
    for override in overrides:
        raw_key, sep, _ = override.partition("=")
        key = raw_key.lstrip("+")
        if not sep or raw_key.startswith("~") or key in groups or "/" in key or "@" in key:
            continue
        if key.split(".")[0] in ("hydra", "by_bridge"):
            continue
        if OmegaConf.select(cfg, key, default="<missing>") == "<missing>":
            continue
        node = OmegaConf.select(cfg, key)
        value = OmegaConf.to_container(node, resolve=False) if isinstance(node, (DictConfig, ListConfig)) else node
        head = key.split(".")[0]
        bridge = OmegaConf.select(cfg, "bridge.name", default=None)
        with open_dict(table):
            for name, fragment in table.items():
                if not isinstance(fragment, DictConfig):
                    continue
                sets_key = OmegaConf.select(fragment, key, default="<missing>") != "<missing>"
                replaces = head == "encoder" and "encoder" in fragment and key != head
                if replaces and not sets_key and encoder_count(to_container(fragment.encoder)) > 1:
                    if name != bridge:
                        continue  # another bridge's encoder set: not this run's, leave it
                    raise ConfigError(
                        f"'{key}' on the command line cannot apply to 'by_bridge.{name}.encoder', which replaces the "
                        f"encoder with a set of {', '.join(map(str, fragment.encoder))}. Fix: set it per encoder, "
                        f"e.g. '+by_bridge.{name}.encoder.{next(iter(fragment.encoder))}.{key.partition('.')[2]}=...'."
                    )
                if sets_key or replaces:
                    with open_dict(fragment):
                        OmegaConf.update(fragment, key, value, merge=False, force_add=True)
    return cfg


def config_dict(run: RunConfig) -> dict[str, Any]:
    """The resolved config as a plain dict (what ``run.json`` and checkpoints store)."""
    return to_container(run)


def _drop(data: dict[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        if isinstance(data.get(head), dict):
            _drop(data[head], rest)
    else:
        data.pop(head, None)


def semantic_config(run: RunConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The config without the keys that do not change results (:data:`NON_SEMANTIC_KEYS`)."""
    data = json.loads(json.dumps(config_dict(run) if isinstance(run, RunConfig) else dict(run), default=str))
    for key in NON_SEMANTIC_KEYS:
        _drop(data, key)
    return data


# Evaluation settings are apart from a run's training identity: config_hash leaves them out, so a rerun with other
# evaluation settings keeps the trained weights and only evaluates again (eval_hash tells evaluations apart).
EVAL_KEYS = ("eval",)


# Options added after runs were made: while one holds its default (what every earlier run did without the key), it is
# left out of the hash, so adding an option keeps existing runs resumable and skippable. ``*`` = any stage name.
HASH_NEUTRAL_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("bridge.resampler", "perceiver"),
    ("stages.*.objective", "lm"),
    ("stages.*.objective_options", {}),
    ("stages.*.bridge_options", {}),
    ("world.shipped", True),  # where the world's backbones come from, not what they are (same bytes either way)
    ("data.options.spatial_ask_by", "colour_shape"),
    ("data.options.spatial_question_first", False),
    ("bridge.downsample", "bilinear"),  # only Eagle has it
)
# The same for an option of one bridge whose key other bridges already use with that value (pixel_shuffle's
# num_tokens is None by default too, and its runs hashed it): bridge name -> {bridge key: default}.
BRIDGE_HASH_NEUTRAL_DEFAULTS: dict[str, dict[str, Any]] = {"mmfuser": {"num_tokens": None}}


def _drop_default(data: Any, dotted: str, default: Any) -> None:
    head, _, rest = dotted.partition(".")
    if not isinstance(data, dict):
        return
    if not rest:
        if head in data and data[head] == default:
            del data[head]
        return
    for key in (list(data) if head == "*" else [head]):
        _drop_default(data.get(key), rest, default)


def config_hash(run: RunConfig | Mapping[str, Any]) -> str:
    """The training identity of a run: the semantic config without the evaluation settings (:data:`EVAL_KEYS`) and
    without new options at their defaults (:data:`HASH_NEUTRAL_DEFAULTS`)."""
    data = semantic_config(run)
    for key in EVAL_KEYS:
        _drop(data, key)
    for key, default in HASH_NEUTRAL_DEFAULTS:
        _drop_default(data, key, default)
    bridge = data.get("bridge")
    if isinstance(bridge, dict):
        for key, default in BRIDGE_HASH_NEUTRAL_DEFAULTS.get(bridge.get("name"), {}).items():
            _drop_default(bridge, key, default)
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def eval_hash(run: RunConfig | Mapping[str, Any]) -> str:
    """The identity of a run's evaluation settings (:data:`EVAL_KEYS`)."""
    data = semantic_config(run)
    blob = json.dumps({key: data.get(key) for key in EVAL_KEYS}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, full))
        else:
            out[full] = value
    return out


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def _missing_key(message: str) -> str | None:
    match = re.search(r"Could not override '([^']+)'", message)
    return match.group(1) if match else None


def compose(overrides: Sequence[str] = (), config_name: str = "config", with_hydra: bool = False) -> DictConfig:
    """Compose the Hydra config tree from Python (notebooks, tests), as ``bridgelab train`` would.

    ``overrides`` are Hydra override strings, e.g. ``["experiment=smoke", "bridge=qformer", "seed=1"]``. Overriding
    a key that does not exist raises :class:`ConfigError` naming the key and the valid keys at its parent.
    ``with_hydra`` keeps the ``hydra`` node (launcher, sweep settings) in the result.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import ConfigCompositionException

    overrides = list(overrides)
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        try:
            cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
            cli_wins(cfg, overrides, list(cfg.hydra.runtime.choices.keys()))
            if not with_hydra:
                with open_dict(cfg):
                    del cfg["hydra"]
            return cfg
        except ConfigCompositionException as err:
            key = _missing_key(str(err))
            if key is None:
                raise
            rest = [o for o in overrides if o.partition("=")[0].lstrip("+~") != key]
            base = hydra_compose(config_name=config_name, overrides=rest)
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(base, parent) if parent else base
    present = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    valid = list(dict.fromkeys([*schema_keys(parent, node), *present]))
    if leaf in valid:
        raise ConfigError(f"'{key}' is valid but not set by the composed config: add it with '+{key}=...'.")
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"Unknown config key '{key}'.{hint} Valid keys at '{parent or '<root>'}': {', '.join(valid)}.")


def schema_keys(path: str, node: Any = None) -> list[str]:
    """The field names a config node at dotted ``path`` accepts: from :class:`RunConfig` for the harness sections,
    from the registered component's config dataclass for ``bridge``/``llm``/``encoder``/``data`` (by its ``name``)."""
    parts = path.split(".") if path else []
    path_bridge = parts[1] if len(parts) >= 2 else None
    by_bridge = len(parts) >= 3 and parts[0] == "by_bridge"
    if by_bridge:  # by_bridge.<bridge name>.<a config path>: the schema of that path, the bridge named by the entry
        path, parts = ".".join(parts[2:]), parts[2:]
    head = parts[0] if parts else ""
    name = node.get("name") if isinstance(node, DictConfig) else None
    if by_bridge and head == "bridge" and not isinstance(name, str):
        name = path_bridge
    if head in ("bridge", "llm", "encoder", "data") and len(parts) == 1 and isinstance(name, str):
        try:
            entry = component_registry(head).get(name)
            return [f.name for f in dataclasses.fields(entry.config_cls)]
        except Exception:  # noqa: BLE001 - best effort: fall back to the keys that are present
            return []
    cls: Any = RunConfig
    for part in [p for p in path.split(".") if p]:
        if typing.get_origin(cls) is dict:  # a mapping of dataclasses (stages.<name>)
            cls = _unwrap_optional(typing.get_args(cls)[1])
        elif dataclasses.is_dataclass(cls) and part in typing.get_type_hints(cls):
            cls = _unwrap_optional(typing.get_type_hints(cls)[part])
        else:
            return []
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def is_sweep_value(value: str) -> bool:
    """Whether an override value lists several values (``a,b``) or calls a sweep function (``range(0,3)``)."""
    return bool(re.match(r"^\w+\(", value)) or ("," in value and not value.startswith(("[", "{", "'", '"')))


def first_values(overrides: Sequence[str]) -> list[str]:
    """Sweep overrides reduced to their first value (``bridge=mlp,qformer`` -> ``bridge=mlp``) for a pre-flight check;
    overrides with sweep functions (``range(...)``, ``choice(...)``, globs) and flags (``--cfg``) are left out,
    deletions (``~bridge``) kept."""
    out = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep and override.startswith("~"):  # a deletion ('~bridge') has no value: keep it as it is
            out.append(override)
            continue
        if not sep or override.startswith("--") or re.match(r"^\w+\(", value):
            continue
        if is_sweep_value(value):
            value = value.split(",")[0]
        out.append(f"{key}={value}")
    return out


def load_config(overrides: Sequence[str] = (), config_name: str = "config") -> RunConfig:
    """:func:`compose` then :func:`validate_config`."""
    return validate_config(compose(overrides, config_name))
