"""experiment=matched_params: every bridge at the same trainable-parameter budget, counted as a run counts it.

Each model is built through the harness's builder from the config a sweep member composes, on randomly initialised
backbones of the world's architecture (experiments/harness/run_params.py); the slow test checks that stand-in
against a really pretrained (tiny) world.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from encoders.registry import ConfigError
from experiments.cli import main
from experiments.harness.config import compose, to_container, validate_config
from experiments.harness.run_params import budget, random_world, run_trainable_params, sweep_bridges

EXPERIMENT = "experiment=matched_params"
BRIDGE_OPTIONS = sorted(p.stem for p in (Path(__file__).parents[1] / "experiments/configs/bridge").glob("*.yaml"))
MEMBERS = sweep_bridges([EXPERIMENT])


@pytest.fixture(scope="module")
def world() -> Iterator[Any]:
    """The demo world's backbones (world=default: ViT 128, LM 128), random weights."""
    run = validate_config(compose([EXPERIMENT, "bridge=mlp"]))
    with random_world(run.world) as backbones:
        yield backbones


def test_the_sweep_covers_every_bridge_and_states_its_budget() -> None:
    assert sorted(MEMBERS) == BRIDGE_OPTIONS and len(BRIDGE_OPTIONS) == 10
    assert MEMBERS[-1] == "eagle"  # the lazily pretrained expert comes last, as in the quick ablation
    cfg = compose([EXPERIMENT])
    assert sorted(cfg.by_bridge) == BRIDGE_OPTIONS  # every member is sized here, none keeps the quick ablation's
    assert budget(to_container(cfg.tags)) == (100_000, 0.1)


def test_same_budget_as_the_quick_ablation_apart_from_the_bridge_sizes() -> None:
    quick = to_container(compose(["experiment=quick_ablation", "bridge=mlp"]))
    matched = to_container(compose([EXPERIMENT, "bridge=mlp"]))
    for key in ("world", "data", "stages", "train", "encoder", "llm", "eval"):
        assert matched[key] == quick[key], key


def test_the_random_world_has_the_demo_widths(world: Any) -> None:
    from experiments.harness.build import build_model

    model = build_model(validate_config(compose([EXPERIMENT, "bridge=eagle"])), world)
    encoders = {info.name: info.width for info in model.bridge.io.encoders}
    assert encoders == {"vit": 128, "expert": 128}
    assert (model.lm.info.hidden_size, model.lm.info.num_layers, model.lm.info.vocab_size) == (128, 2, 76)
    assert all(spec["pretrained"] is None for spec in (world.vit_spec, world.expert_spec))


@pytest.mark.parametrize("bridge", MEMBERS)
def test_every_bridge_is_within_the_budget(bridge: str, world: Any) -> None:
    run = validate_config(compose([EXPERIMENT, f"bridge={bridge}"]))
    fragment = to_container(compose([EXPERIMENT]).by_bridge[bridge])["bridge"]
    assert {k: run.bridge[k] for k in fragment} == fragment  # the member really is the scaled bridge
    target, tolerance = budget(run.tags)
    count = run_trainable_params(run, world)
    assert count["bridge"] == bridge and count["stage"] == "align"
    assert abs(count["trainable_params"] / target - 1) <= tolerance, count
    # what counts: the bridge's own groups plus trainable new-token rows, never a frozen backbone
    assert all(group.startswith(("bridge", "lm.new_tokens")) for group in count["groups"])
    assert sum(count["groups"].values()) == count["trainable_params"]


def test_the_quick_ablation_bridges_are_far_apart(world: Any) -> None:
    """Why the experiment exists: at the demo's sizes the bridges differ by more than 10x (2026-12-01: MLP 33,024,
    Flamingo 791,300); matched, they are within 10% of each other's target."""
    counts = [run_trainable_params(validate_config(compose(["experiment=quick_ablation", f"bridge={b}"])),
                                   world)["trainable_params"] for b in ("mlp", "flamingo")]
    assert counts[1] > 10 * counts[0]


def test_cli_prints_the_members_and_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", EXPERIMENT, "bridge=mlp,hyper_attention", "seed=0,1"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert set(lines) == {"mlp", "hyper_attention"}
    assert "99,072" in lines["mlp"] and "-0.9%" in lines["mlp"]
    assert "101,184" in lines["hyper_attention"] and "bridge.hatb 68,160" in lines["hyper_attention"]
    assert "target 100,000 trainable parameters +- 10%: all within" in out


def test_cli_fails_a_member_outside_the_budget(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", EXPERIMENT, "bridge=mlp", "bridge.projector=mlp2x_gelu"]) == 1
    out = capsys.readouterr().out
    assert "33,024" in out and "-67.0%" in out and "<-- off" in out and "NOT all within" in out
    assert main(["params", EXPERIMENT, "bridge=mlp", "bridge.projector=mlp2x_gelu", "--tolerance", "0.7"]) == 0


def test_a_bad_budget_is_named() -> None:
    with pytest.raises(ConfigError, match=r"tags.param_target='100k'.*e.g. 100000"):
        budget({"param_target": "100k"})
    with pytest.raises(ConfigError, match=r"tags.param_tolerance=10.*fraction"):
        budget({"param_target": 100_000, "param_tolerance": 10})
    assert budget({}) == (None, 0.1)


@pytest.mark.slow
@pytest.mark.parametrize("bridge", ["flamingo", "eagle"])
def test_random_backbones_count_what_pretrained_ones_count(bridge: str, tmp_path_factory: pytest.TempPathFactory,
                                                           world: Any) -> None:
    """The stand-in is exact: a pretrained (tiny) world gives the same counts (inject bridge with new-token rows,
    two-encoder bridge)."""
    from experiments.harness.build import build_world

    cache = tmp_path_factory.getbasetemp() / "matched_params_world"
    run = validate_config(compose([EXPERIMENT, f"bridge={bridge}", "world=tiny", f"+world.cache_dir={cache}"]))
    assert run_trainable_params(run, build_world(run)) == run_trainable_params(run, None)
    default = validate_config(compose([EXPERIMENT, f"bridge={bridge}"]))
    assert run_trainable_params(run, None) == run_trainable_params(default, world)  # tiny = demo widths
