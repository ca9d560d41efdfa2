"""The harness-overhead and training-throughput benchmarks (issue 11, section 3) on the tiny world.

No timing targets here: the tests check that both benchmarks run through their entry points and write complete
results, that the plain loop does exactly the harness's work, and that the time split accounts for the whole step.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch

from benchmarks import overhead, throughput
from benchmarks.clock import COMPONENTS

TINY = ["world=tiny", "data.train_size=32", "train.effective_batch_size=4"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow  # end to end through the CLI: ~30 s on the quiet 2-core machine (world, data, two models, fit)
def test_overhead_cli_writes_both_sides_and_the_ratio(tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = [*TINY, "--blocks", "2", "--block-steps", "2", "--warmup", "1", "--batches", "2", "--out", str(out)]
    assert overhead.main(argv) == 0
    result = json.loads((out / "overhead.json").read_text())
    assert result["overrides"] == ["experiment=quick_ablation", "bridge=mlp", "data.eval_size=8", *TINY]
    assert len(result["harness_blocks_ms"]) == len(result["plain_blocks_ms"]) == 2
    assert result["harness_ms_per_step"] > 0 and result["plain_ms_per_step"] > 0
    assert result["ratio"] == pytest.approx(result["harness_ms_per_step"] / result["plain_ms_per_step"])
    assert result["total_ratio"] == pytest.approx(sum(result["harness_blocks_ms"]) / sum(result["plain_blocks_ms"]))
    assert result["batch"]["micro"] == 4 and result["feature_cache"] is True
    assert len(result["machine"]["load_average_start"]) == 3 and result["machine"]["threads"] == 1
    assert "Ratio harness / plain" in (out / "overhead.md").read_text()


def test_plain_loop_does_the_harness_step() -> None:
    """Same seed, same batches, three steps: the plain loop and trainer.fit end with the same loss and weights."""
    prep = overhead.prepare(overhead.with_defaults(TINY), 2)
    plain = overhead.PlainLoop(prep, prep.model, prep.plan)
    L.seed_everything(0, verbose=False)
    losses = [float(plain.step(prep.batches[i % 2])) for i in range(3)]
    lit_model, lit_plan = overhead.new_model(prep.run, prep.world, prep.stage_name, prep.stage)
    module = overhead.lit_module(prep, lit_model, lit_plan)
    trained = [p for p in lit_model.parameters() if p.requires_grad]
    assert trained and len(trained) == len(plain.params)
    before = [p.detach().clone() for p in trained]

    class Batches:
        def __iter__(self):
            i = 0
            while True:
                yield prep.batches[i % 2]
                i += 1

    L.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = overhead.harness_trainer(prep, module, Path(tmp), 3)
        trainer.fit(module, train_dataloaders=Batches())
    assert trainer.global_step == 3
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(losses[-1], rel=1e-6)
    assert any(not torch.equal(b, p) for b, p in zip(before, trained))  # the weights did move
    for ours, theirs in zip(trained, [p for p in prep.model.parameters() if p.requires_grad]):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # two bridges end to end through the CLI: ~9-30 s here
def test_throughput_split_accounts_for_the_step(tmp_path: Path) -> None:
    argv = [*TINY, "--bridges", "mlp", "flamingo", "--rounds", "1", "--block-steps", "1", "--split-steps", "2",
            "--warmup", "1", "--batches", "2", "--out", str(tmp_path)]
    assert throughput.main(argv) == 0
    result = json.loads((tmp_path / "throughput.json").read_text())
    assert [r["bridge"] for r in result["rows"]] == ["mlp", "flamingo"]
    for row in result["rows"]:
        for setting in throughput.SETTINGS:
            r = row[setting]
            assert r["samples_per_s"] > 0
            assert sum(r["share"].values()) == pytest.approx(1.0)
            assert set(r["share"]) == set(COMPONENTS)
            assert r["share"]["bridge"] > 0 and r["share"]["lm"] > 0
            # the charged time is the instrumented steps' wall time (nothing counted twice, little lost)
            assert 0.8 < r["clock_over_wall"] <= 1.0 + 1e-9
            assert r["ms_per_step_by_phase"]["lm"]["backward"] > 0
        assert row["uncached"]["ms_per_step_by_phase"]["encoder"]["forward"] > 0
    mlp = result["rows"][0]
    assert mlp["cached"]["samples_per_s_vs_mlp"] == pytest.approx(1.0)
    # Flamingo's cross-attention runs inside the LM; the clock charges it to the bridge, forward and backward
    assert result["rows"][1]["cached"]["ms_per_step_by_phase"]["bridge"]["backward"] > 0
    assert "| flamingo | cached |" in (tmp_path / "throughput.md").read_text()


def test_demo_bridges_are_the_sweep_list() -> None:
    bridges = throughput.demo_bridges()
    assert bridges[0] == "mlp" and "hyper_attention" in bridges and "eagle" in bridges and len(bridges) == 7


def test_cli_overrides_replace_the_defaults() -> None:
    merged = overhead.with_defaults(["bridge=qformer", "seed=1"])
    assert merged == ["experiment=quick_ablation", *overhead.DEFAULT_OVERRIDES[2:], "bridge=qformer", "seed=1"]
    assert "bridge=mlp" in overhead.DEFAULT_OVERRIDES
