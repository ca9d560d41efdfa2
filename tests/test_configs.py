"""Every YAML file of every config group composes, validates and builds its model at tiny size; config errors are clear.

Component options are built against the seconds-long tiny world (its own cache in a temporary directory); paper-scale
encoders, LMs and paper presets are built on the meta device (no memory, no download).
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

import harness_toy  # noqa: F401  (registers the toy data source)
from bridges.presets import PRESETS
from encoders.registry import ConfigError, RegistryError
from experiments.harness.build import build_data, build_model, build_world, component_specs
from experiments.harness.config import compose, config_dict, validate_config
from experiments.harness.stages import apply_stage
from experiments.harness.trainer import batch_plan, build_strategy, build_trainer

CONFIGS = Path(__file__).parents[1] / "experiments" / "configs"
TEST_CONFIGS = Path(__file__).parent / "harness_configs"
SEARCH = f"hydra.searchpath=[file://{TEST_CONFIGS}]"
GROUPS = ("encoder", "llm", "bridge", "data", "world", "stages", "trainer", "launcher", "experiment", "paper")
# tiny_vit has no CLS token; the world expert's grid is too small to unshuffle
TINY_ENCODER_FIXES = {"qformer": {"with_cls": False}, "eagle": {"pixel_unshuffle": {}}}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


ALL = [(g, o) for g in GROUPS for o in options(g)]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Overrides that put every run on the tiny world, cached in a temporary directory."""
    cache = tmp_path_factory.mktemp("world")
    return ["world=tiny", f"+world.cache_dir={cache}", "data=world_tiny"]


def _with(cfg: Any, **updates: Any) -> dict[str, Any]:
    data = copy.deepcopy(config_dict(validate_config(cfg)))
    data.update(updates)
    return data


def _tiny_bridge(name: str) -> dict[str, Any]:
    return {"name": name, **PRESETS[(name, "tiny")].overrides, **TINY_ENCODER_FIXES.get(name, {})}


def test_every_group_has_options() -> None:
    assert {g: options(g) for g in GROUPS if not options(g)} == {}
    assert len(ALL) >= 40


def test_config_yaml_defaults_are_the_world() -> None:
    run = validate_config(compose([]))
    assert run.encoder == {"world": "vit"} and run.llm == {"world": "lm"}
    assert run.data["name"].endswith(":world") and run.world is not None
    assert list(run.stages) == ["align"] and run.trainer.accelerator == "cpu"


@pytest.mark.parametrize(("group", "option"), ALL, ids=[f"{g}/{o}" for g, o in ALL])
def test_every_config_file(group: str, option: str, tiny_world: list[str]) -> None:
    """Compose the option, validate it, and build what it describes at tiny size (or on the meta device)."""
    if group in ("experiment", "paper"):
        return _check_preset(group, option, tiny_world)
    base = [SEARCH, *tiny_world]
    if group == "launcher" and option == "submitit_slurm" and importlib.util.find_spec(
        "hydra_plugins.hydra_submitit_launcher"
    ) is None:  # an optional extra: without it the option must fail clearly, naming the missing launcher
        from hydra.errors import MissingConfigException

        with pytest.raises(MissingConfigException, match="submitit_slurm"):
            compose([*base, f"{group}={option}"], with_hydra=True)
        return
    if (group, option) == ("bridge", "eagle"):  # Eagle refuses a single encoder: give it the world's two
        base.append("+by_bridge.eagle.encoder={vit: {world: vit}, expert: {world: expert}}")
    if (group, option) == ("stages", "qformer_stage1"):  # BLIP-2 stage 1 trains a Q-Former with its text layers
        base += ["bridge=qformer", "bridge.text_layers=true", "bridge.vocab_size=80"]
    cfg = compose([*base, f"{group}={option}"], with_hydra=group == "launcher")
    run = validate_config(cfg)
    if group == "launcher":
        target = cfg.hydra.launcher._target_
        assert target.split(".")[-1] == {"local": "BasicLauncher", "joblib": "JoblibLauncher",
                                         "submitit_slurm": "SlurmLauncher"}[option]
        return
    if group == "trainer":
        plan = batch_plan(run, run.stages["align"], world_size=2 if run.trainer.devices != 1 else 1)
        if run.trainer.accelerator == "cpu":
            trainer = build_trainer(run, max_steps=2, plan=plan)
            assert trainer.world_size == plan.world_size
        else:  # GPU presets: bf16 mixed precision, strategy objects build without a GPU
            assert run.trainer.precision == "bf16-mixed"
            assert build_strategy(run.trainer) is not None
        return
    if group == "world":
        from experiments.world.backbones import as_config

        assert as_config(run.world) is not None
        if option != "tiny":
            return  # the full-size worlds pretrain for minutes; their configs are validated above
        world = build_world(run)
        assert world.vit_spec and world.expert_spec and world.lm_dir
        return
    if group == "data":
        if not option.startswith("world"):  # real sources read the user's files: the option names the key to set
            with pytest.raises(ConfigError, match=r"data\.\w+ is empty: give "):
                build_data(run, build_world(run))
            return
        data = build_data(run, build_world(run))
        assert data.train and data.eval and all(len(v) for v in data.eval.values())
        return
    overrides: dict[str, Any] = {}
    if group == "bridge":
        overrides["bridge"] = _tiny_bridge(option)
        if option == "eagle":
            overrides["encoder"] = {"vit": {"world": "vit"}, "expert": {"world": "expert"}}
    elif group == "encoder" and option != "world" and not option.startswith("tiny"):
        overrides["encoder"] = {**run.encoder, "meta_device": True}
    elif group == "stages" and option == "eagle_prealign":  # Eagle's pre-alignment: its variant and two experts
        overrides["bridge"] = {"name": "eagle", "variant": "pre_alignment"}
        overrides["encoder"] = {"vit": {"world": "vit"}, "expert": {"world": "expert"}}
    elif group == "stages":  # stage 1 of BLIP-2 trains a Q-Former (with its text layers); the others any bridge
        overrides["bridge"] = _tiny_bridge("mlp") if option != "qformer_stage1" else {
            **_tiny_bridge("qformer"), "text_layers": True, "vocab_size": 80}
    spec = _with(run, **overrides)
    model = build_model(validate_config(spec), build_world(validate_config(spec)))
    assert model.bridge.num_visual_tokens(1) > 0
    if group == "stages":
        for name, stage in validate_config(spec).stages.items():
            model.bridge.configure_stage(**stage.bridge_options)
            plan = apply_stage(model, name, stage)
            assert plan.trainable_params > 0


def _check_preset(group: str, option: str, tiny_world: list[str]) -> None:
    cfg = compose([f"{group}={option}"], with_hydra=True)
    run = validate_config(cfg)
    assert run.stages and run.bridge["name"]
    if group == "paper":  # published scale: build on the meta device, apply every stage to its parameter groups
        spec = config_dict(run)
        encoder = spec["encoder"]
        encoders = encoder if "name" not in encoder and "preset" not in encoder else {"main": encoder}
        spec["encoder"] = {k: {**v, "meta_device": True} for k, v in encoders.items()}
        if "name" in encoder or "preset" in encoder:
            spec["encoder"] = spec["encoder"]["main"]
        with torch.device("meta"):
            model = build_model(validate_config(spec))
        for name, stage in run.stages.items():
            assert apply_stage(model, name, stage).trainable_params > 0
        return
    # experiments: the world at tiny size, every bridge the experiment sweeps built with its by_bridge fragment
    sweep = cfg.hydra.sweeper.params or {}
    bridges = str(sweep.get("bridge", run.bridge["name"])).split(",")
    assert cfg.hydra.mode is None or len(bridges) * len(str(sweep.get("seed", "0")).split(",")) > 1
    for bridge in bridges:
        member = validate_config(compose([f"{group}={option}", f"bridge={bridge}", *tiny_world]))
        assert member.bridge["name"] == bridge
        world = build_world(member)
        encoder, _, _ = component_specs(member, world)
        model = build_model(member, world)
        for name, stage in member.stages.items():
            assert apply_stage(model, name, stage).trainable_params > 0
        if bridge == "eagle":
            assert set(encoder) == {"vit", "expert"}


# ------------------------------------------------------------------------------------------------ config errors
def test_unknown_key_names_the_path_and_the_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"Unknown config key 'trainer.max_stepz'.*Valid keys at 'trainer': "
                                          r"accelerator, devices"):
        compose([SEARCH, "experiment=toy", "trainer.max_stepz=3"])
    with pytest.raises(ConfigError, match=r"'stages.align.lrr'. Did you mean 'lr'\?.*group_lr"):
        compose([SEARCH, "experiment=toy", "stages.align.lrr=3"])
    with pytest.raises(ConfigError, match=r"Unknown config key 'train.effective_batchsize'.*Valid keys at 'train'"):
        validate_config({**validate_dict(), "train": {"effective_batchsize": 3}})
    with pytest.raises(ConfigError, match=r"'bridge.depthh'.*Valid keys at 'bridge': projector"):
        compose([SEARCH, "experiment=toy", "bridge.depthh=2"])


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"Wrong type for config key 'train.effective_batch_size'"):
        validate_config(compose([SEARCH, "experiment=toy", "train.effective_batch_size=abc"]))
    with pytest.raises(ConfigError, match=r"Wrong type for config key 'stages.align.max_steps'"):
        validate_config(compose([SEARCH, "experiment=toy", "stages.align.max_steps=many"]))


def test_unknown_names_list_the_known_ones() -> None:
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match=r"Could not find 'bridge/mlpp'[\s\S]*hyper_attention"):
        compose([SEARCH, "experiment=toy", "bridge=mlpp"])
    run = validate_config(compose([SEARCH, "experiment=toy", "bridge.name=mlpp"]))
    with pytest.raises(RegistryError, match=r"Unknown bridge 'mlpp'. Did you mean 'mlp'\? Known bridges: .*eagle, "):
        build_model(run)
    with pytest.raises(RegistryError, match=r"Unknown data 'toy'.*Known datas: .*A plug-in is selected as"):
        build_data(validate_config({**validate_dict(), "data": {"name": "toy"}}), None)


def test_a_user_bridge_from_its_own_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_bridges.py").write_text(
        "from dataclasses import dataclass\n"
        "import torch\n"
        "from bridges.base import BRIDGES, BridgeNeeds, PrefixBridge\n"
        "@dataclass\n"
        "class MeanConfig:\n"
        "    tokens: int = 2\n"
        "@BRIDGES.register('_mean_pool', MeanConfig)\n"
        "class MeanPool(PrefixBridge):\n"
        "    def __init__(self, config, io):\n"
        "        super().__init__(config, io)\n"
        "        self.proj = torch.nn.Linear(io.encoder.width, io.lm.hidden_size)\n"
        "    @property\n"
        "    def needs(self):\n"
        "        return BridgeNeeds()\n"
        "    def num_visual_tokens(self, num_frames=1):\n"
        "        return self.config.tokens\n"
        "    def flops_per_media(self, num_frames=1):\n"
        "        return 0\n"
        "    def forward(self, features, num_frames=1, instruction=None):\n"
        "        x = next(iter(features.values())).last.mean(1, keepdim=True)\n"
        "        return self.proj(x).expand(-1, self.config.tokens, -1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # from the command line: drop the default bridge option, name the plug-in by import path
    from experiments.harness.build import import_plugins
    from experiments.harness.config import config_hash

    by_path = validate_config(compose([SEARCH, "experiment=toy", "~bridge", "+bridge.name=my_bridges:_mean_pool",
                                       "+bridge.tokens=3"]))
    assert by_path.bridge["name"] == "_mean_pool" and by_path.plugins == ["harness_toy", "my_bridges"]
    import_plugins(by_path.plugins)
    model = build_model(by_path)
    assert model.bridge.num_visual_tokens() == 3 and type(model.bridge).__name__ == "MeanPool"
    # or import it first through `plugins` and use its registered name: the same config, the same hash
    by_name = validate_config(compose([SEARCH, "experiment=toy", "~bridge", "+bridge.name=_mean_pool",
                                       "+bridge.tokens=3", "plugins=[harness_toy,my_bridges]"]))
    assert config_hash(by_name) == config_hash(by_path)
    assert build_model(by_name).bridge.num_visual_tokens() == 3


def validate_dict() -> dict[str, Any]:
    return config_dict(validate_config(compose([SEARCH, "experiment=toy"])))
