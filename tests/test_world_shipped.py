"""The shipped world backbones: the README's worlds are shipped, intact, and copied into an empty cache untrained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from experiments.world import backbones, shipped
from experiments.world.backbones import WorldBackbones, build_world_backbones, tiny_config

REPO = Path(__file__).resolve().parents[1]


def test_every_backbone_of_the_readme_worlds_is_shipped_with_matching_sums() -> None:
    # fails when a recipe changes a hash without `python -m experiments.world.shipped freeze`, or a file is damaged
    assert shipped.check() == []
    names = shipped.world_names(shipped.README_WORLDS)
    assert len(names) == 7 and shipped.shipped_names() == set(names)  # one ViT, one expert, five LMs
    for name in names:  # no machine's path in the repository
        assert "/root" not in (shipped.WEIGHTS_DIR / name / "quality.json").read_text()
        spec = shipped.WEIGHTS_DIR / name / "encoder.json"
        if spec.is_file():
            assert json.loads(spec.read_text())["pretrained"] == f"{name.split('-')[0]}.safetensors"


def test_the_shipped_weights_are_packaged() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert '"experiments.world" = ["weights/SHA256SUMS", "weights/*/*"]' in text


@pytest.fixture()
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a shipped backbone was trained")

    for name in ("pretrain_vit", "pretrain_expert", "pretrain_lm"):
        monkeypatch.setattr(backbones, name, refuse)


def test_the_demo_world_comes_from_the_shipped_copies_on_an_empty_cache(tmp_path: Path, no_training: None) -> None:
    from experiments.harness.config import load_config

    world = build_world_backbones(load_config(["world=full"]).world, cache_dir=tmp_path)
    world.ensure("expert")
    assert world.source == {"vit": "shipped", "expert": "shipped", "lm": "shipped"}
    assert not any(world.built.values())
    for component, file in (("vit", "vit.safetensors"), ("expert", "expert.safetensors")):
        spec = world.encoder_spec(component)
        assert Path(spec["pretrained"]) == tmp_path / Path(world.dirs[component]).name / file
        recorded = json.loads((Path(world.dirs[component]) / "encoder.json").read_text())
        assert recorded["pretrained"] == spec["pretrained"]
        shipped_weights = load_file(str(shipped.WEIGHTS_DIR / Path(world.dirs[component]).name / file))
        cached = load_file(spec["pretrained"])
        assert all(torch.equal(shipped_weights[k], cached[k]) for k in shipped_weights)
    assert world.lm().config.num_hidden_layers == 2
    again = build_world_backbones(load_config(["world=full"]).world, cache_dir=tmp_path)
    assert again.source == {"vit": "cache", "expert": "cache", "lm": "cache"} and again.dirs["lm"] == world.dirs["lm"]


@pytest.fixture(scope="module")
def tiny_shipped(tmp_path_factory: pytest.TempPathFactory) -> tuple[WorldBackbones, Path]:
    """A tiny world built into one cache and shipped (frozen) into a weights directory of its own."""
    cache = tmp_path_factory.mktemp("tiny-cache")
    world = build_world_backbones(tiny_config(), cache_dir=cache)
    weights = tmp_path_factory.mktemp("tiny-weights")
    out = subprocess.run(
        [sys.executable, "-m", "experiments.world.shipped", "freeze", "--world", "tiny", "--cache-dir", str(cache),
         "--weights-dir", str(weights)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split()) == sorted(["shipped"] * 3 + [Path(d).name for d in world.dirs.values()])
    return world, weights


def test_check_reports_a_damaged_file_and_an_unshipped_world(tiny_shipped, monkeypatch) -> None:
    world, weights = tiny_shipped
    assert shipped.check(["tiny"], weights) == []
    problems = shipped.check(["tiny", "full"], weights)
    assert problems and all(p.startswith("world=full:") for p in problems)
    cli = [sys.executable, "-m", "experiments.world.shipped", "check", "--world", "tiny", "--weights-dir"]
    assert subprocess.run([*cli, str(weights)], cwd=REPO, capture_output=True).returncode == 0


def test_an_empty_cache_is_filled_from_the_shipped_copies_without_training(
    tiny_shipped, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_training: None
) -> None:
    world, weights = tiny_shipped
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", weights)
    seeded = build_world_backbones(tiny_config(), cache_dir=tmp_path)
    assert seeded.source == {"vit": "shipped", "expert": "shipped", "lm": "shipped"}
    assert seeded.quality == world.quality
    for component in ("vit", "expert"):
        ours, theirs = load_file(seeded.encoder_spec(component)["pretrained"]), load_file(
            world.encoder_spec(component)["pretrained"]
        )
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_world_shipped_false_trains_instead(tiny_shipped, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world, weights = tiny_shipped
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", weights)
    trained = build_world_backbones(tiny_config(shipped=False, components=["vit"]), cache_dir=tmp_path)
    assert trained.source == {"vit": "trained"} and trained.built == {"vit": True}


def test_a_damaged_shipped_file_fails_naming_the_fix(tiny_shipped, tmp_path, monkeypatch, no_training) -> None:
    import shutil

    _, weights = tiny_shipped
    damaged = tmp_path / "weights"
    shutil.copytree(weights, damaged)
    vit = next(damaged.glob("vit-*"))
    (vit / "vit.safetensors").write_bytes(b"not the weights")
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", damaged)
    with pytest.raises(shipped.ShippedWeightsError, match=r"SHA-256 differs.*world.shipped=false"):
        build_world_backbones(tiny_config(components=["vit"]), cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("vit-*"))  # nothing half-copied left in the cache
    assert shipped.check(["tiny"], damaged) == [f"{vit.name}/vit.safetensors: checksum differs"]


@pytest.mark.parametrize("bridge, key, default, other", [
    ("mlp", "world.shipped", True, False),
    ("mlp", "data.options.spatial_ask_by", "colour_shape", "shape"),
    ("mlp", "data.options.spatial_question_first", False, True),
    ("eagle", "bridge.downsample", "bilinear", "area"),
    ("mmfuser", "bridge.num_tokens", None, 4),
])
def test_options_added_after_runs_were_made_keep_those_runs_resumable_and_pooled(
    bridge: str, key: str, default: object, other: object, tmp_path: Path
) -> None:
    """A run recorded before the key existed did what its default does: same config hash (so a sweep skips or
    resumes it) and one row with a run that records the default; a run at another value is kept apart."""
    from experiments.analysis.load import load_runs
    from experiments.analysis.tables import summarize
    from experiments.harness.config import compose, config_dict, config_hash, validate_config
    from experiments.harness.rundir import RunDir

    *path, leaf = key.split(".")

    def parent(config: dict) -> dict:
        for part in path:
            config = config[part]
        return config

    now = config_dict(validate_config(compose(["experiment=quick_ablation", f"bridge={bridge}"])))
    assert parent(now)[leaf] == default, f"{key} is not at its default in the composed config"
    before, changed = json.loads(json.dumps(now)), json.loads(json.dumps(now))
    del parent(before)[leaf]
    parent(changed)[leaf] = other
    assert config_hash(before) == config_hash(now) != config_hash(changed)

    for i, (config, em) in enumerate([(before, 0.5), (now, 0.7), (changed, 0.2)]):
        rd = RunDir(tmp_path / f"run{i}")
        rd.update(name="q", status="finished", seed=i, config={**config, "seed": i})
        rd.write_scores("attribute", {"task": "attribute", "n": 10, "exact_match": em})
    table = summarize(load_runs(tmp_path))
    assert sorted(table["seeds"].tolist()) == [1, 2]


def test_a_bridge_scoped_neutral_default_leaves_the_same_key_of_other_bridges_in_the_hash() -> None:
    """mmfuser's ``num_tokens=None`` is hash-neutral; pixel_shuffle's runs always hashed their ``num_tokens: None``."""
    from experiments.harness.config import compose, config_dict, config_hash, validate_config

    shuffle = config_dict(validate_config(compose(["experiment=quick_ablation", "bridge=pixel_shuffle"])))
    assert shuffle["bridge"]["num_tokens"] is None
    without = json.loads(json.dumps(shuffle))
    del without["bridge"]["num_tokens"]
    assert config_hash(without) != config_hash(shuffle)
