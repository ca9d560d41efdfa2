"""The token-count sweep: one axis (``tags.visual_tokens`` in ``experiment=token_sweep``) reaches every prefix bridge
with a token-count knob through its own key, and a bridge's own key sweeps from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import harness_toy  # noqa: F401  (registers the toy data source)
import pytest
import torch

import bridges  # noqa: F401  (registers the built-in bridges)
from bridges.base import BRIDGES, BridgeIO, EncoderInfo, LMInfo
from encoders.base import VisionFeatures
from encoders.registry import ConfigError
from experiments.cli import main
from experiments.harness.config import compose, validate_config

SEARCH = f"hydra.searchpath=[file://{Path(__file__).parent / 'harness_configs'}]"
# the world's ViT (32 x 32 images, patch 8, width 128, 4 blocks) and LM (Llama 2 x 128) as a bridge sees them
VIT = EncoderInfo("vit", 128, (4, 4), 4)
LM = LMInfo(128, 2, 4, 4, 32, 512, "llama")
WORLD_IO = BridgeIO((VIT,), LM)
EAGLE_IO = BridgeIO((VIT, EncoderInfo("expert", 128, (2, 2), 4)), LM)  # + the world ConvNeXt's last stage at 64 px
KEYS = {
    "avgpool": "num_tokens",
    "pixel_shuffle": "num_tokens",
    "c_abstractor": "num_tokens",
    "perceiver": "num_latents",
    "qformer": "num_query_tokens",
    "flamingo": "num_latents",
    "mmfuser": "num_tokens",
    "eagle": "grid_size",  # the side: tokens = grid_size ** 2
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
    value = round(tokens**0.5) if bridge == "eagle" else tokens
    assert run.bridge[KEYS[bridge]] == value and run.tags["visual_tokens"] == tokens
    built = BRIDGES.build(run.bridge, EAGLE_IO if bridge == "eagle" else WORLD_IO)
    assert built.num_visual_tokens() == tokens


def test_eagle_shrinks_its_experts_by_average_pooling_and_stays_the_demos_bridge_at_16() -> None:
    run = validate_config(compose(["experiment=token_sweep", "bridge=eagle", "tags.visual_tokens=4"]))
    assert run.bridge["downsample"] == "area"
    demo = validate_config(compose(["experiment=quick_ablation", "bridge=eagle"]))
    sweep = validate_config(compose(["experiment=token_sweep", "bridge=eagle", "tags.visual_tokens=16"]))
    # at 16 tokens nothing shrinks (the ViT's 4 x 4 is the common grid, the expert's 2 x 2 grows bilinearly)
    torch.manual_seed(0)
    a = BRIDGES.build(demo.bridge, EAGLE_IO).eval()
    b = BRIDGES.build(sweep.bridge, EAGLE_IO).eval()
    b.load_state_dict(a.state_dict())
    features = {
        e.name: VisionFeatures((torch.randn(3, e.grid[0] * e.grid[1], e.width),), (-1,), e.grid, e.width)
        for e in EAGLE_IO.encoders
    }
    with torch.no_grad():
        assert torch.equal(a(features), b(features))


def test_a_token_count_the_grid_cannot_give_fails_naming_the_valid_ones() -> None:
    run = validate_config(compose(["experiment=token_sweep", "bridge=avgpool", "tags.visual_tokens=8"]))
    with pytest.raises(ValueError, match=r"num_tokens=8 .*4 x 4 encoder grid.*\[1, 4, 9, 16\]"):
        BRIDGES.build(run.bridge, WORLD_IO)
    with pytest.raises(ConfigError, match="8 visual tokens is not a square grid"):
        validate_config(compose(["experiment=token_sweep", "bridge=eagle", "tags.visual_tokens=8"]))


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


def test_another_bridges_fragment_neither_changes_a_runs_hash_nor_must_resolve_for_it() -> None:
    """Adding Eagle and MMFuser to the sweep kept the other bridges' runs: a run's identity is its merged config."""
    from experiments.harness.config import config_hash

    base = ["experiment=token_sweep", "bridge=perceiver", "tags.visual_tokens=8"]  # 8: a valid latent count
    run = validate_config(compose(base))  # Eagle's ${square_side:8} is not resolved for a perceiver run
    assert run.bridge["num_latents"] == 8 and set(run.by_bridge) == {"perceiver"}
    edited = validate_config(compose([*base, "by_bridge.eagle.bridge.grid_size=3"]))
    assert config_hash(edited) == config_hash(run)
    assert config_hash(validate_config(compose([*base, "by_bridge.perceiver.bridge.depth=3"]))) != config_hash(run)
