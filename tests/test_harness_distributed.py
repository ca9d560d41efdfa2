"""Distributed and multi-process paths: ddp_spawn on 2 CPU processes (gloo), a joblib multirun of two tiny runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import harness_toy
from experiments.harness.app import launch
from experiments.harness.rundir import RunDir
from experiments.harness.runner import run

TEST_CONFIGS = Path(__file__).parent / "harness_configs"


@pytest.mark.slow
def test_ddp_spawn_on_two_cpu_processes(tmp_path: Path) -> None:
    cfg = harness_toy.toy_config(**{
        "trainer.strategy": "ddp_spawn", "trainer.devices": 2, "train.checkpoint_every_n_steps": 2,
        "data": {"name": "_toy_colours", "pair_task": False}, "efficiency.flops": False,
    })
    result = run(cfg, run_dir=tmp_path)
    rd = RunDir(result.run_dir)
    record = rd.read()
    assert record["status"] == "finished"
    assert record["stages"][0]["batch"] == {"effective": 8, "micro": 4, "accumulation": 1, "world_size": 2}
    assert [r["step"] for r in rd.read_metrics() if "train/loss" in r] == [0, 1, 2, 3]  # written by rank 0's child
    assert record["stages"][0]["perf"]["samples_per_s"] > 0  # measured in the children, returned to the parent
    assert len(rd.read_predictions("colour")) == 8
    assert rd.final_checkpoint("align").exists() and not rd.last_checkpoint("align").exists()


@pytest.mark.slow
def test_joblib_multirun_of_two_tiny_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # the loky workers import harness_toy as a plug-in
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    overrides = [f"hydra.searchpath=[file://{TEST_CONFIGS}]", "experiment=toy", f"run_dir={tmp_path}",
                 "launcher=joblib", "seed=0,1"]
    launch(overrides, multirun=True)
    members = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert members == ["seed=0", "seed=1"]
    records = [json.loads((tmp_path / m / "run.json").read_text()) for m in members]
    assert [r["status"] for r in records] == ["finished", "finished"]
    assert [r["seed"] for r in records] == [0, 1]
    assert records[0]["tags"]["overrides"][-1] == "seed=0"

    from experiments.analysis import load_runs

    df = load_runs(tmp_path)
    assert sorted(df["seed"].unique()) == [0, 1] and set(df["task"]) == {"colour", "pair"}
    assert (df["status"] == "finished").all()
