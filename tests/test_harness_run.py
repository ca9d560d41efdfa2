"""End-to-end runs on tiny stand-ins: the run directory, resume after an interruption, skip, failures, load_run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

import harness_toy
from encoders.registry import ConfigError
from experiments.harness import module as module_lib
from experiments.harness.loading import load_run
from experiments.harness.rundir import RunDir
from experiments.harness.runner import run


def _losses(rd: RunDir) -> list[tuple[str, int, float]]:
    return [(r["stage"], r["step"], r["train/loss"]) for r in rd.read_metrics() if "train/loss" in r]


def test_run_writes_a_complete_run_directory(tmp_path: Path) -> None:
    result = run(harness_toy.toy_config(**{"trainer.loggers": ["csv", "tensorboard"]}), run_dir=tmp_path / "r")
    rd = RunDir(result.run_dir)
    record = rd.read()
    assert record["status"] == "finished" and record["error"] is None
    assert record["config"]["bridge"]["name"] == "mlp" and record["seed"] == 0
    assert record["git"]["sha"] and record["versions"]["torch"]
    assert record["versions"]["lightning"]
    assert record["versions"]["transformers"] == transformers.__version__  # issue 8: the release the run used
    # the tests fix one thread (conftest: BRIDGELAB_THREADS=1), so the governor never changed it
    assert record["threads"] == {"policy": "1", "torch_threads": 1, "changes": []}
    assert [s["name"] for s in record["stages"]] == ["align"]
    assert record["stages"][0]["batch"] == {"effective": 8, "micro": 8, "accumulation": 1, "world_size": 1}
    assert set(record["metrics"]) == {"train/loss", "eval/colour/exact_match", "eval/pair/exact_match",
                                      "eval/mean_exact_match"}
    assert [s for _, s, _ in _losses(rd)] == [0, 1, 2, 3]

    for task in ("colour", "pair"):
        predictions = rd.read_predictions(task)
        assert len(predictions) == 8 and [p["index"] for p in predictions] == list(range(8))
        assert {"prompt", "prediction", "answer", "correct", "meta"} <= set(predictions[0])
        scores = json.loads((rd.eval_dir(task) / "scores.json").read_text())
        assert scores["n"] == 8 and scores["exact_match"] == sum(p["correct"] for p in predictions) / 8
    assert json.loads((rd.eval_dir("pair") / "scores.json").read_text())["chance"] == 0.5
    assert json.loads((rd.eval_dir("colour") / "scores.json").read_text())["text_ceiling"] == 1.0

    eff = rd.read_efficiency()
    assert eff["visual_tokens_per_media"] == 16 and eff["lm_tokens_per_media"] == 16  # a prefix bridge
    assert 0 < eff["trainable_params"] < eff["total_params"]
    assert eff["flops_per_sample_by_task"]["pair"]["forward"] > eff["flops_per_sample_by_task"]["colour"]["forward"]
    assert eff["train_samples_per_s"] > 0 and eff["peak_memory_mb"] > 0

    checkpoint = torch.load(rd.final_checkpoint("align"), weights_only=False)
    assert checkpoint["state_dict"] and all(k.startswith("model.bridge.") for k in checkpoint["state_dict"])
    assert checkpoint["bridgelab"]["config"]["bridge"]["name"] == "mlp"
    assert not list(rd.path.rglob("*.tmp"))
    assert (rd.path / "logs" / "csv" / "align" / "metrics.csv").exists()
    assert list((rd.path / "logs" / "tensorboard" / "align").glob("events.out.tfevents.*"))


def test_rerun_skips_a_finished_run_and_refuses_a_different_config(tmp_path: Path) -> None:
    cfg = harness_toy.toy_config(**{"eval.enabled": False, "efficiency.enabled": False})
    first = run(cfg, run_dir=tmp_path)
    assert not first.skipped
    again = run(harness_toy.toy_config(**{"eval.enabled": False, "efficiency.enabled": False,
                                          "trainer.progress_bar": True}), run_dir=tmp_path)
    assert again.skipped and again.metrics == first.metrics
    other = harness_toy.toy_config(**{"eval.enabled": False, "efficiency.enabled": False, "stages.align.lr": 0.5})
    with pytest.raises(ConfigError, match=r"different config \(differs at: stages.align.lr\)"):
        run(other, run_dir=tmp_path)


class Crash(RuntimeError):
    pass


def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = harness_toy.toy_config(**{
        "stages": {"align": {"trainable": ["bridge*"], "lr": 3e-3, "max_steps": 4},
                   "finetune": {"trainable": ["bridge*", "lm"], "lr": 1e-3, "max_steps": 4}},
        "train.checkpoint_every_n_steps": 2,
        # dropout 0.1 inside the Q-Former: equal losses need the RNG state restored from the checkpoint too
        "bridge": {"name": "qformer", "num_query_tokens": 4, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
                   "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 32, "with_cls": False},
        "eval.limit": 4,
        "efficiency.flops": False,
    })
    straight = run(cfg, run_dir=tmp_path / "straight")

    original = module_lib.BridgeLitModule.training_step

    def crash_in_finetune(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        if self.stage_name == "finetune" and self.global_step == 3:
            raise Crash("simulated interruption")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(module_lib.BridgeLitModule, "training_step", crash_in_finetune)
    with pytest.raises(Crash):
        run(cfg, run_dir=tmp_path / "resumed")
    rd = RunDir(tmp_path / "resumed")
    record = rd.read()
    assert record["status"] == "failed" and "Crash: simulated interruption" in record["error"]
    assert "Traceback" in record["traceback"]
    assert rd.final_checkpoint("align").exists() and rd.last_checkpoint("finetune").exists()
    assert torch.load(rd.last_checkpoint("finetune"), weights_only=False)["global_step"] == 2

    monkeypatch.setattr(module_lib.BridgeLitModule, "training_step", original)
    resumed = run(cfg, run_dir=tmp_path / "resumed")
    assert rd.read()["status"] == "finished" and rd.read()["attempts"] == 2
    got, want = _losses(rd), _losses(RunDir(straight.run_dir))
    assert [(stage, step) for stage, step, _ in got] == [(stage, step) for stage, step, _ in want]
    assert [step for _, step, _ in got] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert [loss for *_, loss in got] == pytest.approx([loss for *_, loss in want], rel=1e-5)
    assert resumed.metrics == pytest.approx(straight.metrics, rel=1e-5)
    a = torch.load(RunDir(straight.run_dir).final_checkpoint("finetune"), weights_only=False)["state_dict"]
    b = torch.load(rd.final_checkpoint("finetune"), weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and any(k.startswith("model.lm.") for k in a)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_load_run_rebuilds_the_trained_model(tmp_path: Path) -> None:
    cfg = harness_toy.toy_config(**{"data": {"name": "_toy_colours", "pair_task": False}, "efficiency.enabled": False})
    result = run(cfg, run_dir=tmp_path)
    loaded = load_run(result.run_dir)
    assert loaded.checkpoint == RunDir(tmp_path).final_checkpoint("align")
    rd = RunDir(tmp_path)
    records = rd.read_predictions("colour")
    samples = harness_toy._samples(8, 5000, 16, False)
    assert loaded.answer(samples, max_new_tokens=3) == [r["prediction"] for r in records]


def test_stages_after_one_that_trained_the_encoder_do_not_read_the_pretrained_features(tmp_path: Path) -> None:
    """The cache holds the pretrained encoder's features; after a stage that trained the encoder (Eagle's
    pre-alignment), a frozen stage must see the trained one: the same losses as without the cache."""
    from experiments.harness import feature_cache

    feature_cache.clear()
    stages = {
        "tune": {"trainable": ["bridge*", "encoder"], "lr": 3e-2, "max_steps": 3},
        "align": {"trainable": ["bridge*"], "lr": 3e-3, "max_steps": 3},
    }
    base = {"eval.enabled": False, "efficiency.flops": False, "stages": stages}
    warm = {**base, "stages": {"align": stages["align"]}, "train.cache_features": True}
    run(harness_toy.toy_config(**warm), run_dir=tmp_path / "warm")  # the pretrained encoder's features, cached
    plain = run(harness_toy.toy_config(**base), run_dir=tmp_path / "plain")
    cached = run(harness_toy.toy_config(**base, **{"train.cache_features": True}), run_dir=tmp_path / "cached")
    got, want = _losses(RunDir(cached.run_dir)), _losses(RunDir(plain.run_dir))
    assert [s for s, *_ in got] == ["tune"] * 3 + ["align"] * 3
    assert [loss for *_, loss in got] == pytest.approx([loss for *_, loss in want], rel=1e-4)
    assert [s["perf"]["feature_cache"] for s in RunDir(cached.run_dir).read()["stages"]] == [False, False]
    first = {**base, "stages": {"align": stages["align"], "tune": stages["tune"]}, "train.cache_features": True}
    frozen_first = run(harness_toy.toy_config(**first), run_dir=tmp_path / "frozen_first")
    assert [s["perf"]["feature_cache"] for s in RunDir(frozen_first.run_dir).read()["stages"]] == [True, False]
    feature_cache.clear()


def test_a_failing_run_records_its_error(tmp_path: Path) -> None:
    cfg = harness_toy.toy_config(**{"stages.align.trainable": ["bridge*", "lm.lorra"]})
    with pytest.raises(ConfigError, match="pattern 'lm.lorra' matches no parameter group"):
        run(cfg, run_dir=tmp_path)
    record = RunDir(tmp_path).read()
    assert record["status"] == "failed" and "lm.lorra" in record["error"]


def test_cached_frozen_features_match_a_fresh_encoder(tmp_path: Path) -> None:
    from experiments.harness import feature_cache

    feature_cache.clear()
    base = {"eval.enabled": False, "efficiency.flops": False, "stages.align.max_steps": 6}
    plain = run(harness_toy.toy_config(**base), run_dir=tmp_path / "plain")
    cached = run(harness_toy.toy_config(**base, **{"train.cache_features": True}), run_dir=tmp_path / "cached")
    assert feature_cache.stats()["items"] > 0
    got, want = _losses(RunDir(cached.run_dir)), _losses(RunDir(plain.run_dir))
    assert [loss for *_, loss in got] == pytest.approx([loss for *_, loss in want], rel=1e-4)
    assert RunDir(cached.run_dir).read_efficiency()["feature_cache"] is True
    assert RunDir(plain.run_dir).read_efficiency()["feature_cache"] is False
    items = feature_cache.stats()["items"]
    run(harness_toy.toy_config(**base, **{"train.cache_features": True, "seed": 1}), run_dir=tmp_path / "again")
    assert feature_cache.stats()["items"] > items  # seed 1 draws other samples: new images were encoded and kept
    feature_cache.clear()
