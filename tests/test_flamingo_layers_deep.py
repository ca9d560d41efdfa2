"""repro/flamingo_layers_deep: Flamingo's cross-attention frequency (every 1/2/4 layers, one in the middle) on the
4-layer LM of world=deep. The sweep's placements are the paper's; the world is world=full's with a deeper LM."""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser

from bridges.flamingo import FlamingoConfig, xattn_layer_indices
from experiments.harness.config import compose, load_config
from experiments.world.backbones import as_config, config_hash

EXPERIMENT = "experiment=repro/flamingo_layers_deep"


def swept_placements() -> list[list[int]]:
    """The ``bridge.xattn_layers`` values the sweep runs, parsed as Hydra parses them."""
    params = compose([EXPERIMENT], with_hydra=True).hydra.sweeper.params
    override = OverridesParser.create().parse_overrides([f"bridge.xattn_layers={params['bridge.xattn_layers']}"])[0]
    return [list(load_config([EXPERIMENT, f"bridge.xattn_layers={v}"]).bridge["xattn_layers"])
            for v in override.sweep_string_iterator()]


def test_world_deep_is_world_full_with_a_four_layer_lm_trained_longer() -> None:
    deep, full = as_config(load_config(["world=deep"]).world), as_config(load_config(["world=full"]).world)
    assert (deep.lm.num_layers, full.lm.num_layers) == (4, 2) and deep.lm.steps == 2 * full.lm.steps
    assert {**vars(deep.lm), "num_layers": 2, "steps": full.lm.steps} == vars(full.lm)
    assert config_hash("vit", deep) == config_hash("vit", full) and config_hash("expert", deep) == config_hash(
        "expert", full)
    assert config_hash("lm", deep) != config_hash("lm", full)


def test_the_sweep_places_blocks_as_the_paper_on_four_layers() -> None:
    placements = swept_placements()
    every = {n: xattn_layer_indices(FlamingoConfig(cross_attn_every_n_layers=n), 4) for n in (1, 2, 4)}
    assert placements == [every[1], every[2], every[4], [2]]  # every, every 2nd, every 4th, single in the middle
    for layers in placements:
        assert xattn_layer_indices(FlamingoConfig(xattn_layers=layers), 4) == layers


def test_the_sweep_runs_on_world_deep_at_its_stated_budget() -> None:
    run = load_config([EXPERIMENT, "bridge.xattn_layers=[2]"])
    assert run.bridge["name"] == "flamingo" and run.bridge["xattn_layers"] == [2]
    assert as_config(run.world).lm.num_layers == 4
    assert run.stages["align"].max_steps == 600 and run.data["tasks"] == ["distractor"]
