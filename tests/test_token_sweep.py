"""The token-count sweep: one axis (``tags.visual_tokens`` in ``experiment=token_sweep``) reaches every prefix bridge
with a token-count knob through its own key, and a bridge's own key sweeps from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import harness_toy  # noqa: F401  (registers the toy data source)
import pytest

import bridges  # noqa: F401  (registers the built-in bridges)
from bridges.base import BRIDGES, BridgeIO, EncoderInfo, LMInfo
from experiments.cli import main
from experiments.harness.config import compose, validate_config

SEARCH = f"hydra.searchpath=[file://{Path(__file__).parent / 'harness_configs'}]"
# the world's ViT (32 x 32 images, patch 8, width 128, 4 blocks) and LM (Llama 2 x 128) as a bridge sees them
WORLD_IO = BridgeIO((EncoderInfo("vit", 128, (4, 4), 4),), LMInfo(128, 2, 4, 4, 32, 512, "llama"))
KEYS = {
    "avgpool": "num_tokens",
    "pixel_shuffle": "num_tokens",
    "c_abstractor": "num_tokens",
    "perceiver": "num_latents",
    "qformer": "num_query_tokens",
    "flamingo": "num_latents",
}


def test_the_sweep_declares_one_axis_over_every_bridge_with_a_knob() -> None:
    cfg = compose(["experiment=token_sweep"], with_hydra=True)
    params = cfg.hydra.sweeper.params
    assert params["tags.visual_tokens"] == "16,4,1"
    assert set(params["bridge"].split(",")) == set(KEYS)
    assert set(cfg.by_bridge) >= set(KEYS)


@pytest.mark.parametrize("bridge", sorted(KEYS))
@pytest.mark.parametrize("tokens", [16, 4, 1])
def test_the_axis_sets_each_bridges_own_key(bridge: str, tokens: int) -> None:
    run = validate_config(compose(["experiment=token_sweep", f"bridge={bridge}", f"tags.visual_tokens={tokens}"]))
    assert run.bridge[KEYS[bridge]] == tokens and run.tags["visual_tokens"] == tokens
    built = BRIDGES.build(run.bridge, WORLD_IO)
    assert built.num_visual_tokens() == tokens


def test_a_token_count_the_grid_cannot_give_fails_naming_the_valid_ones() -> None:
    run = validate_config(compose(["experiment=token_sweep", "bridge=avgpool", "tags.visual_tokens=8"]))
    with pytest.raises(ValueError, match=r"num_tokens=8 .*4 x 4 encoder grid.*\[1, 4, 9, 16\]"):
        BRIDGES.build(run.bridge, WORLD_IO)


@pytest.mark.slow  # two short training runs through the CLI (about 10 s)
def test_a_bridge_key_sweeps_from_the_command_line(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["sweep", SEARCH, "experiment=toy", f"run_dir={sweep}", "bridge=avgpool", "bridge.num_tokens=4,1"]
    assert main(args) == 0
    records = {p.name: json.loads((p / "run.json").read_text()) for p in sweep.iterdir() if p.is_dir()}
    assert sorted(records) == ["bridge.num_tokens=1", "bridge.num_tokens=4"], sorted(records)
    for name, record in records.items():
        assert record["status"] == "finished"
        assert record["config"]["bridge"]["num_tokens"] == int(name.rpartition("=")[2])
