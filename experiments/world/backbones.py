"""The world's frozen, pretrained backbones, built once and cached by config hash.

``build_world_backbones(cfg)`` returns a :class:`WorldBackbones`: the encoder specs of the tiny ViT and of the
ConvNet expert (``encoders.build_encoder(spec)`` rebuilds them with their weights), the directory of the tiny LM
(``from_pretrained(lm_dir)``, or the LLM adapter's ``{"name": "hf", "pretrained": lm_dir}``), the world tokenizer
and the quality report. Each backbone lives in its own cache directory, keyed by a hash of its config, of the
scene config and of :data:`WORLD_VERSION`, so changing the LM's config never retrains the ViT::

    <cache>/vit-<hash>/     vit.safetensors  encoder.json  config.json  quality.json
    <cache>/expert-<hash>/  expert.safetensors  encoder.json  config.json  quality.json
    <cache>/lm-<hash>/      config.json  model.safetensors  tokenizer files  bridgelab_lm.json  world.json  quality.json

``<cache>`` is the ``cache_dir`` argument, else ``WorldBackbonesConfig.cache_dir``, else
``$BRIDGELAB_CACHE/world``, else ``~/.cache/bridgelab/world``. A directory is written under a temporary name and
renamed into place when complete (atomic), under a file lock, so concurrent sweep workers train a backbone once.

The harness uses :meth:`WorldBackbones.resolve_specs`: an encoder spec ``{"world": "vit"}`` (or ``"expert"``, plus
any overrides such as ``unfreeze_last_k``) and an LM spec ``{"world": "lm"}`` become the pretrained specs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from encoders.registry import ConfigError, merge_config
from experiments.world import shipped
from experiments.world.pretrain_lm import LMPretrainConfig, pretrain_lm
from experiments.world.pretrain_vision import (
    ExpertPretrainConfig,
    VitPretrainConfig,
    backbone_spec,
    pretrain_expert,
    pretrain_vit,
)
from experiments.world.scenes import WorldConfig
from experiments.world.vocab import build_tokenizer

log = logging.getLogger(__name__)

WORLD_VERSION = 1  # bump when scenes, captions, task texts or recipes change what a cached backbone would be
COMPONENTS = ("vit", "expert", "lm")
QUALITY_FILE = "quality.json"
LM_META_FILE = "bridgelab_lm.json"  # read by llm_adapters: the chat template of a saved LM ("none": no markup)
WORLD_KEY = "world"  # marker key of specs that the world fills in (resolve_specs)
# LM spec fields replaced by the world LM's own when a spec says ``pretrained: world``
LM_ARCHITECTURE_FIELDS = (
    "name",
    "pretrained",
    "model_type",
    "config",
    "tokenizer",
    "tiny_tokenizer_vocab",
    "chat_template",
)


@dataclass
class WorldBackbonesConfig:
    """What to build. Only the scene config and each component's own config enter that component's hash.

    Attributes:
        world: how scenes look (shared by all three backbones and by the task data).
        vit, expert, lm: each backbone's architecture and pretraining recipe.
        components: which backbones to build.
        cache_dir: cache root (``None``: ``$BRIDGELAB_CACHE/world`` or ``~/.cache/bridgelab/world``).
        progress: tqdm progress bars while training.
        lazy: components of ``components`` built on first use instead of at once, when not cached yet (the
            expert is only needed by Eagle: a sweep's other members need not wait for its pretraining).
        shipped: a backbone missing from the cache whose hash the repository ships (``experiments/world/shipped.py``)
            is copied from there instead of trained; ``False`` trains it.
    """

    world: WorldConfig = field(default_factory=WorldConfig)
    vit: VitPretrainConfig = field(default_factory=VitPretrainConfig)
    expert: ExpertPretrainConfig = field(default_factory=ExpertPretrainConfig)
    lm: LMPretrainConfig = field(default_factory=LMPretrainConfig)
    components: list[str] = field(default_factory=lambda: list(COMPONENTS))
    cache_dir: str | None = None
    progress: bool = True
    lazy: list[str] = field(default_factory=list)
    shipped: bool = True


def tiny_config(**overrides: Any) -> WorldBackbonesConfig:
    """A seconds-long build for tests and smoke runs (a few steps, tiny evaluation pools; no quality gate)."""
    cfg = WorldBackbonesConfig(
        vit=VitPretrainConfig(steps=4, batch_size=16, eval_per_kind=16),
        expert=ExpertPretrainConfig(steps=3, batch_size=16, eval_images=16, image_size=32),
        lm=LMPretrainConfig(steps=6, single_steps=3, batch_size=8, eval_per_qtype=4, max_extra_rounds=0),
        progress=False,
    )
    return dataclasses.replace(cfg, **overrides)


def as_config(cfg: WorldBackbonesConfig | Mapping[str, Any] | None) -> WorldBackbonesConfig:
    """A config from a dataclass, a mapping/DictConfig (strict merge: unknown keys fail with their path), or None."""
    if isinstance(cfg, WorldBackbonesConfig):
        return cfg
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if cfg is not None and "preset" in cfg:
        items = dict(cfg)
        preset = items.pop("preset")
        if preset != "tiny":
            raise ConfigError(f"world.preset: unknown preset '{preset}'; the only preset is 'tiny'")
        base = dataclasses.asdict(tiny_config())
        return merge_config(WorldBackbonesConfig, _deep_merge(base, items), path="world")
    return merge_config(WorldBackbonesConfig, cfg, path="world")


def _deep_merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def config_hash(component: str, cfg: WorldBackbonesConfig) -> str:
    """16 hex digits identifying a backbone: its own config, the scene config and the world version."""
    payload = {
        "version": WORLD_VERSION,
        "component": component,
        "world": dataclasses.asdict(cfg.world),
        "config": dataclasses.asdict(getattr(cfg, component)),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The world cache root (see the module docstring for the order of precedence)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("BRIDGELAB_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "bridgelab") / "world"


class Busy(Exception):
    """Another process holds the lock: it is building this component now."""


@contextlib.contextmanager
def _locked(path: Path, wait: bool = True) -> Iterator[None]:
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError as err:
            raise Busy(path) from err
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_build(
    root: Path, name: str, build: Callable[[Path, Path], None], wait: bool = True
) -> tuple[Path, bool]:
    """``root/name``, built by ``build(tmp_dir, final_dir)`` if it is not complete yet.

    ``build`` writes into ``tmp_dir`` (``final_dir`` is where its files will end up, for paths it records); the
    directory counts as complete once it holds ``quality.json`` and is renamed into place. Returns
    ``(final_dir, built_now)``. With ``wait=False`` it raises :class:`Busy` instead of waiting while another process
    builds it.
    """
    final = root / name
    if (final / QUALITY_FILE).is_file():
        return final, False
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{name}.lock", wait):
        if (final / QUALITY_FILE).is_file():  # another process finished it while we waited
            return final, False
        for stale in root.glob(f".tmp-{name}-*"):  # left by a killed build: we hold the lock, so none is live
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
        try:
            build(tmp, final)
            if not (tmp / QUALITY_FILE).is_file():
                raise RuntimeError(f"Building '{name}' wrote no {QUALITY_FILE}")
            if final.exists():  # an incomplete leftover (no quality.json) of a crashed build
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final, True


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@dataclass
class WorldBackbones:
    """The built backbones.

    Attributes:
        vit_spec: ``timm_vit`` encoder spec with ``pretrained`` set to the trained weights (``None`` if not built).
        expert_spec: ``timm_convnet`` spec of the expert (``None`` if not built).
        lm_dir: directory loadable by ``LlamaForCausalLM.from_pretrained`` / the LLM adapter (``None`` if not built).
        tokenizer: the world tokenizer (``experiments.world.vocab.build_tokenizer``).
        quality: ``{"vit": {...}, "expert": {...}, "lm": {...}}`` as written to each ``quality.json``.
        config: the resolved :class:`WorldBackbonesConfig`.
        dirs: cache directory of each built component.
        built: which components were trained by this call (the others came from the cache or the shipped copies).
        source: where each component came from: ``"cache"``, ``"shipped"`` (copied into the cache now) or
            ``"trained"`` (now).
    """

    vit_spec: dict[str, Any] | None
    expert_spec: dict[str, Any] | None
    lm_dir: str | None
    tokenizer: Any
    quality: dict[str, Any]
    config: WorldBackbonesConfig
    dirs: dict[str, str]
    built: dict[str, bool]
    source: dict[str, str] = field(default_factory=dict)
    _lm: Any = field(default=None, repr=False)
    _pending: dict[str, Callable[[], None]] = field(default_factory=dict, repr=False)

    def ensure(self, component: str) -> None:
        """Build (or load) a component deferred by ``lazy`` now; nothing if it is already there."""
        if component in self._pending:
            self._pending.pop(component)()

    def llm_spec(self, **overrides: Any) -> dict[str, Any]:
        """The LLM adapter spec of the world LM (generic ``hf`` entry, no chat markup)."""
        if self.lm_dir is None:
            raise RuntimeError("The world LM was not built: add 'lm' to world.components")
        return {"name": "hf", "pretrained": self.lm_dir, "chat_template": "none", **overrides}

    def encoder_spec(self, which: str = "vit", **overrides: Any) -> dict[str, Any]:
        """The encoder spec of ``which`` (``"vit"`` or ``"expert"``) with ``overrides`` applied."""
        if which in ("vit", "expert"):
            self.ensure(which)
        spec = {"vit": self.vit_spec, "expert": self.expert_spec}.get(which, "unknown")
        if spec == "unknown":
            raise ConfigError(f"Unknown world encoder '{which}'; choose 'vit' or 'expert'")
        if spec is None:
            raise RuntimeError(f"The world {which} was not built: add '{which}' to world.components")
        return {**spec, **overrides}

    def resolve_specs(self, encoder: Any, llm: Any) -> tuple[Any, Any]:
        """Fill in specs that name a world backbone; other specs pass through unchanged.

        Encoder (also inside a ``{name: spec}`` mapping of several encoders, e.g. Eagle's experts):
        ``{"world": "vit"|"expert", **overrides}``, the string ``"world:vit"``, or any spec with
        ``pretrained: world`` / ``world:vit`` / ``world:expert`` whose architecture matches the world's (for example
        the ``tiny_vit`` preset with ``encoder.pretrained=world``). LM: ``{"world": "lm", **overrides}``,
        ``"world:lm"``, or a spec with ``pretrained: world`` (its architecture and tokenizer fields are dropped,
        runtime fields such as ``freeze`` are kept).
        """
        return self._resolve_encoder(encoder), self._resolve_llm(llm)

    def _resolve_encoder(self, spec: Any) -> Any:
        if isinstance(spec, str) and spec.startswith(f"{WORLD_KEY}:"):
            return self.encoder_spec(spec.split(":", 1)[1])
        if not isinstance(spec, Mapping):
            return spec
        if WORLD_KEY in spec:
            return self.encoder_spec(str(spec[WORLD_KEY]), **_overrides(spec))
        marker = spec.get("pretrained")
        if _is_marker(marker):
            which = marker.split(":", 1)[1] if ":" in marker else "vit"
            world = self.encoder_spec(which)
            for key in ("name", "architecture", "model_kwargs"):
                if key in spec and spec[key] != world[key]:
                    raise ConfigError(
                        f"encoder.pretrained={marker}: the spec's {key} {spec[key]!r} differs from the world {which}'s "
                        f"{world[key]!r}. Use encoder {{world: {which}}} (or the tiny preset it was trained as)."
                    )
            mean_std = {k: spec.get(k) if spec.get(k) is not None else world[k] for k in ("mean", "std")}
            return {**world, **spec, "pretrained": world["pretrained"], **mean_std}
        if "name" in spec or "preset" in spec:
            return spec
        return {name: self._resolve_encoder(sub) for name, sub in spec.items()}

    def _resolve_llm(self, spec: Any) -> Any:
        if isinstance(spec, str) and spec == f"{WORLD_KEY}:lm":
            return self.llm_spec()
        if not isinstance(spec, Mapping):
            return spec
        if WORLD_KEY in spec:
            if spec[WORLD_KEY] != "lm":
                raise ConfigError(f"llm: world backbone '{spec[WORLD_KEY]}' is not an LM; use world: lm")
            return self.llm_spec(**_overrides(spec))
        if spec.get("pretrained") in (WORLD_KEY, f"{WORLD_KEY}:lm"):
            return self.llm_spec(**{k: v for k, v in spec.items() if k not in LM_ARCHITECTURE_FIELDS})
        return spec

    def lm(self) -> Any:
        """The world LM as a ``LlamaForCausalLM`` in eval mode (loaded once)."""
        if self._lm is None:
            from transformers import LlamaForCausalLM

            if self.lm_dir is None:
                raise RuntimeError("The world LM was not built: add 'lm' to world.components")
            self._lm = LlamaForCausalLM.from_pretrained(self.lm_dir).eval()
        return self._lm


def _is_marker(value: Any) -> bool:
    return isinstance(value, str) and (value == WORLD_KEY or value.startswith(f"{WORLD_KEY}:"))


def _overrides(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a ``{"world": ...}`` spec that override the world's (a ``pretrained`` marker is not one)."""
    return {k: v for k, v in spec.items() if k != WORLD_KEY and not (k == "pretrained" and _is_marker(v))}


def _build_vit(cfg: WorldBackbonesConfig) -> Callable[[Path, Path], None]:
    def build(tmp: Path, final: Path) -> None:
        model, quality = pretrain_vit(cfg.vit, cfg.world, progress=cfg.progress)
        save_file(model.state_dict(), str(tmp / "vit.safetensors"))
        _write_json(tmp / "encoder.json", backbone_spec("timm_vit", cfg.vit, str(final / "vit.safetensors"), model))
        _write_json(tmp / "config.json", {"vit": dataclasses.asdict(cfg.vit), "world": dataclasses.asdict(cfg.world)})
        _write_json(tmp / QUALITY_FILE, quality)

    return build


def _build_expert(cfg: WorldBackbonesConfig) -> Callable[[Path, Path], None]:
    def build(tmp: Path, final: Path) -> None:
        model, quality = pretrain_expert(cfg.expert, cfg.world, progress=cfg.progress)
        save_file(model.state_dict(), str(tmp / "expert.safetensors"))
        spec = backbone_spec("timm_convnet", cfg.expert, str(final / "expert.safetensors"), model)
        _write_json(tmp / "encoder.json", spec)
        payload = {"expert": dataclasses.asdict(cfg.expert), "world": dataclasses.asdict(cfg.world)}
        _write_json(tmp / "config.json", payload)
        _write_json(tmp / QUALITY_FILE, quality)

    return build


def _build_lm(cfg: WorldBackbonesConfig, keep: dict[str, Any]) -> Callable[[Path, Path], None]:
    def build(tmp: Path, final: Path) -> None:
        model, quality = pretrain_lm(cfg.lm, cfg.world, progress=cfg.progress)
        model.save_pretrained(str(tmp))
        build_tokenizer().save_pretrained(str(tmp))
        _write_json(tmp / LM_META_FILE, {"chat_template": "none", "new_tokens": []})
        _write_json(tmp / "world.json", {"lm": dataclasses.asdict(cfg.lm), "world": dataclasses.asdict(cfg.world)})
        _write_json(tmp / QUALITY_FILE, quality)
        keep["model"] = model

    return build


def build_world_backbones(
    cfg: WorldBackbonesConfig | Mapping[str, Any] | None = None, cache_dir: str | os.PathLike | None = None
) -> WorldBackbones:
    """Build (or load from the cache) the world's backbones. See the module docstring."""
    cfg = as_config(cfg)
    unknown = set(cfg.components) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"world.components: unknown {sorted(unknown)}; choose from {list(COMPONENTS)}")
    unknown = set(cfg.lazy) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"world.lazy: unknown {sorted(unknown)}; choose from {list(COMPONENTS)}")
    root = cache_root(cache_dir if cache_dir is not None else cfg.cache_dir)
    keep: dict[str, Any] = {}
    builders = {"vit": _build_vit(cfg), "expert": _build_expert(cfg), "lm": _build_lm(cfg, keep)}
    world = WorldBackbones(None, None, None, build_tokenizer(), {}, cfg, {}, {})

    shipped_here = shipped.shipped_names() if cfg.shipped else set()

    def load(component: str, wait: bool = True) -> None:
        name = f"{component}-{config_hash(component, cfg)}"
        from_shipped = name in shipped_here
        build = (lambda tmp, final: shipped.install(name, tmp, final)) if from_shipped else builders[component]
        with torch.random.fork_rng():  # pretraining seeds torch itself; leave the caller's RNG untouched
            path, now = cached_build(root, name, build, wait)
        world._pending.pop(component, None)
        world.dirs[component], world.built[component] = str(path), now and not from_shipped
        world.source[component] = ("shipped" if from_shipped else "trained") if now else "cache"
        world.quality[component] = json.loads((path / QUALITY_FILE).read_text())
        log.info("world %s: %s (%s)", component, path, world.source[component])
        if component == "lm":
            world.lm_dir, world._lm = str(path), keep.get("model")
            quality = world.quality["lm"]
            if not quality.get("gate_passed", True) and cfg.lm.max_extra_rounds > 0:
                log.warning("world LM below the text-QA gate %s: %s", cfg.lm.gate_threshold, quality["gate_failures"])
        else:
            spec = json.loads((path / "encoder.json").read_text())
            spec["pretrained"] = str(path / f"{component}.safetensors")  # the cache may have moved since
            setattr(world, f"{component}_spec", spec)

    needed: list[str] = []
    for component in COMPONENTS:
        if component not in cfg.components:
            continue
        cached = (root / f"{component}-{config_hash(component, cfg)}" / QUALITY_FILE).is_file()
        if component in cfg.lazy and not cached:
            world._pending[component] = lambda component=component: load(component)
            log.info("world %s: built on first use (world.lazy)", component)
        else:
            needed.append(component)
    _load_all(needed, list(world._pending), load)
    return world


def _load_all(needed: list[str], lazy: list[str], load: Callable[..., None]) -> None:
    """Load every component of ``needed``, building in parallel with other processes rather than after them.

    Sweep workers that start together on an empty cache would otherwise queue on each lock in turn. Each pass takes
    the components nobody else is building; when only busy ones are left, this process builds a ``lazy`` one that
    nobody builds yet (a worker will need it later), and otherwise waits for the first busy one.
    """
    while needed:
        for component in list(needed):
            try:
                load(component, wait=False)
            except Busy:
                continue
            needed.remove(component)
        if not needed:
            return
        for component in list(lazy):
            lazy.remove(component)
            try:
                load(component, wait=False)
            except Busy:
                continue
            log.info("world %s: built while another process builds %s", component, needed)
            break
        else:
            load(needed.pop(0))
