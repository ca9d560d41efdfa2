"""The multi-image scaling study at tiny N: every quantity recorded, ratios to Hyper Attention, curves stopped at the
memory budget with the reason, report files and the log-log plot. No timing assertions (the CPU is shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import scaling
from benchmarks.scaling_model import ENCODER, LM, Setup

#: The study's model shrunk for the test: 32x32 images (16 patches), a 4-layer LM of width 64.
TINY = Setup(
    encoder={**ENCODER, "image_size": 32},
    lm={**LM, "config": {**LM["config"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4}},
)


@pytest.fixture(scope="module")
def result() -> dict:
    bridges = ["mlp", "flamingo", "hyper_attention"]
    return scaling.run_scaling(bridges, ns=(1, 3), repeats=1, warmup=0, device="cpu", threads=1, setup=TINY)


def test_every_point_is_measured(result: dict) -> None:
    points = {(p["bridge"], p["n"]): p for p in result["points"]}
    assert set(points) == {(b, n) for b in ("mlp", "flamingo", "hyper_attention") for n in (1, 3)}
    for p in points.values():
        assert p["prefill_ms"] > 0 and p["per_token_ms"] > 0 and p["encoder_ms"] > 0
        assert p["peak_prefill_bytes"] > 0 and p["kv_cache_bytes"] > 0 and p["prefill_flops"] > 0
        assert p["predicted_peak_bytes"] > 0
    mlp, hyper = points[("mlp", 3)], points[("hyper_attention", 3)]
    # a prefix bridge puts T = 16 tokens per image into the LM, an inject bridge one placeholder
    assert mlp["lm_sequence_length"] - points[("mlp", 1)]["lm_sequence_length"] == 2 * 16
    assert hyper["lm_sequence_length"] - points[("hyper_attention", 1)]["lm_sequence_length"] == 2
    assert mlp["visual_memory_bytes"] is None and hyper["visual_memory_bytes"] > 0
    assert mlp["kv_cache_bytes"] > hyper["kv_cache_bytes"]
    assert result["meta"]["flop_method"].startswith("torch.utils.flop_counter") and not result["stopped"]


def test_ratios_to_hyper_attention(result: dict) -> None:
    pairs = {(r["pair"], r["n"]): r for r in result["ratios"]}
    assert set(pairs) == {(p, n) for p in ("mlp/hyper_attention", "flamingo/hyper_attention") for n in (1, 3)}
    by = {(p["bridge"], p["n"]): p for p in result["points"]}
    row = pairs[("mlp/hyper_attention", 3)]
    assert row["lm_sequence_length"] == by[("mlp", 3)]["lm_sequence_length"] / by[("hyper_attention", 3)][
        "lm_sequence_length"]
    assert row["prefill_ms"] == pytest.approx(by[("mlp", 3)]["prefill_ms"] / by[("hyper_attention", 3)]["prefill_ms"])


def test_reports_and_plot(result: dict, tmp_path: Path) -> None:
    paths = scaling.write_outputs(result, tmp_path / "s")
    assert json.loads(paths["json"].read_text())["points"][0]["bridge"] == "mlp"
    text = paths["md"].read_text()
    assert "| mlp/hyper_attention | 3 |" in text and "Stopped curves: none" in text
    assert paths["png"].stat().st_size > 10_000


def test_a_curve_stops_at_the_memory_budget() -> None:
    out = scaling.run_scaling(["mlp"], ns=(1, 2), budget_gib=1e-5, repeats=1, warmup=0, device="cpu", setup=TINY)
    # the cost model predicts the first N over the budget, so nothing is run and the reason says why
    assert not out["points"] and "cost model predicts" in out["stopped"]["mlp"] and "N=1" in out["stopped"]["mlp"]
    with pytest.raises(ValueError, match="Unknown scaling bridges"):
        scaling.run_scaling(["nope"], ns=(1,))
    with pytest.raises(ValueError, match="positive"):
        scaling.run_scaling(["mlp"], ns=(0,))


@pytest.mark.slow
def test_quick_command_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m benchmarks.scaling --quick --threads 1 --out runs/benchmarks/scaling-quick`` (benchmarks/README)."""
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    assert scaling.main(["--quick", "--threads", "1", "--out", "runs/benchmarks/scaling-quick"]) == 0
    assert torch.get_num_threads() == threads  # the thread setting does not leak out of the run
    data = json.loads((tmp_path / "runs/benchmarks/scaling-quick/scaling.json").read_text())
    assert {p["n"] for p in data["points"]} == set(scaling.QUICK_NS)
    assert {p["bridge"] for p in data["points"]} == set(data["meta"]["bridges"]) and len(data["meta"]["bridges"]) == 5
