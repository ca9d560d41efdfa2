"""``bridgelab export-world``: the world's pools written as LLaVA JSON + PNGs, tar shards and an HF dataset read back
bit-identical, so training from an export gives the same losses and predictions as ``data=world``.

The world stores its pixels as 8-bit (``experiments.world.tasks.to_uint8``) and hands out ``x / 255``; PNG keeps the
8 bits and the loaders divide the same way, so no rounding difference arises (checked sample by sample here).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from experiments.cli import main
from experiments.harness.config import compose
from experiments.harness.data import DATA_SOURCES, TaskData
from experiments.harness.datamodule import TrainStream
from experiments.world.export import world_pools

TASKS = ["attribute", "compare"]
WORLD = {"name": "experiments.world.datasource:world", "tasks": TASKS, "train_size": 8, "eval_size": 4,
         "text_ceiling": False}


def export(folder: Path, fmt: str, *extra: str) -> list[str]:
    """Run the command; return the ``data=...`` overrides it prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["export-world", str(folder), "--format", fmt, "--tasks", *TASKS, "--train-size", "8",
                     "--eval-size", "4", *extra]) == 0
    line = next(t for t in out.getvalue().splitlines() if t.strip().startswith("bridgelab train "))
    return line.split()[2:]


def data_config(overrides: list[str]) -> dict[str, Any]:
    return OmegaConf.to_container(compose(overrides).data, resolve=True)  # type: ignore[return-value]


def build(spec: dict[str, Any]) -> TaskData:
    entry, config = DATA_SOURCES.make_config(spec)
    return entry.cls(config, None).build(0)


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    images = len(a["images"]) == len(b["images"]) and all(torch.equal(x, y) for x, y in zip(a["images"], b["images"]))
    meta = all(b["meta"].get(k) == v for k, v in a["meta"].items())
    return a["text"] == b["text"] and a["answer"] == b["answer"] and images and meta


@pytest.mark.parametrize("fmt", ["llava", "webdataset", "hf"])
def test_export_reads_back_bit_identical_and_streams_the_same_batches(tmp_path: Path, fmt: str) -> None:
    overrides = export(tmp_path / fmt, fmt)
    assert overrides[0] == f"data={fmt}"
    data = build(data_config(overrides))
    world = build(WORLD)
    assert list(data.train) == TASKS and list(data.eval) == TASKS
    for task in TASKS:
        for pools in ((world.train, data.train), (world.eval, data.eval)):
            a, b = pools[0][task], pools[1][task]
            assert len(a) == len(b) and all(same(a[i], b[i]) for i in range(len(a))), (fmt, task)
    mine = iter(TrainStream(data.train, batch_size=3, collate=list, seed=0, weights=data.weights))
    reference = iter(TrainStream(world.train, batch_size=3, collate=list, seed=0, weights=world.weights))
    for _ in range(8):
        assert all(same(x, y) for x, y in zip(next(reference), next(mine)))


def test_export_pools_follow_the_seeds_and_videos_need_llava(tmp_path: Path) -> None:
    a, _ = world_pools(["attribute"], 4, 2, seed=0)
    b, _ = world_pools(["attribute"], 4, 2, seed=1)
    assert a["attribute"][0]["text"] != b["attribute"][0]["text"] or not torch.equal(
        a["attribute"][0]["images"][0], b["attribute"][0]["images"][0])
    overrides = export(tmp_path / "v", "llava", "--tasks", "video_motion")
    assert "data.num_frames=4" in overrides
    clip = build(data_config(overrides)).train["video_motion"][0]
    world = build({**WORLD, "tasks": ["video_motion"]}).train["video_motion"][0]
    assert clip["images"][0].shape == (4, 3, 32, 32) and same(world, clip)
    with pytest.raises(ValueError, match="holds videos; export it with --format llava"):
        export(tmp_path / "w", "webdataset", "--tasks", "video_motion")


@pytest.mark.slow
def test_training_from_each_export_gives_the_losses_of_data_world(tmp_path: Path) -> None:
    import harness_toy

    from experiments.harness.rundir import RunDir
    from experiments.harness.runner import run

    def losses_and_predictions(data: dict[str, Any], name: str) -> tuple[list[float], dict[str, list[str]]]:
        cfg = harness_toy.toy_config(data=data, plugins=[], **{"stages.align.max_steps": 3})
        rd = RunDir(run(cfg, run_dir=tmp_path / "runs" / name).run_dir)
        losses = [r["train/loss"] for r in rd.read_metrics() if "train/loss" in r]
        return losses, {t: [p["prediction"] for p in rd.read_predictions(t)] for t in TASKS}

    reference = losses_and_predictions(WORLD, "world")
    assert len(reference[0]) == 3
    for fmt in ("llava", "webdataset", "hf"):
        data = data_config(export(tmp_path / fmt, fmt))
        assert losses_and_predictions(data, fmt) == reference, fmt  # bit-identical losses, same predictions
