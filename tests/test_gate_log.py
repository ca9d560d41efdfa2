"""The gate figure: ``gate/<attn|ff>/layer<i>`` = mean |tanh(alpha)| in metrics.jsonl, and ``plot_gates``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_bridge_flamingo import _bridge, _lm

from bridges.base import BridgeIO, EncoderInfo
from bridges.hyper_attention import HyperAttentionBridge, HyperAttentionConfig
from experiments.analysis.load import load_metrics
from experiments.analysis.plots import plot_gates
from experiments.cli import main
from experiments.harness.gate_log import gate_openings


class _Model(torch.nn.Module):
    def __init__(self, bridge: torch.nn.Module) -> None:
        super().__init__()
        self.bridge = bridge


def test_openings_are_mean_abs_tanh_per_gated_layer() -> None:
    bridge = _bridge(_lm(layers=3), attach=False, cross_attn_every_n_layers=2)  # one block, before layer 1
    with torch.no_grad():
        bridge.xattn["1"].attn_gate.alpha.fill_(-0.5)
        bridge.xattn["1"].ff_gate.alpha.fill_(0.25)
    got = {k: float(v) for k, v in gate_openings(_Model(bridge)).items()}
    assert got == pytest.approx({"gate/attn/layer1": math.tanh(0.5), "gate/ff/layer1": math.tanh(0.25)})

    vector = _bridge(_lm(), attach=False, gate="vector")
    with torch.no_grad():
        vector.xattn["0"].attn_gate.alpha.copy_(torch.linspace(-1, 1, 64))
    got = gate_openings(_Model(vector))
    assert sorted(got) == ["gate/attn/layer0", "gate/attn/layer1", "gate/ff/layer0", "gate/ff/layer1"]
    assert float(got["gate/attn/layer0"]) == pytest.approx(float(torch.linspace(-1, 1, 64).tanh().abs().mean()))
    assert gate_openings(_Model(_bridge(_lm(), attach=False, gate="none"))) == {}


@pytest.mark.parametrize("fusion, keys", [("adaptive_zero", ["gate/attn/layer1"]), ("adaptive", [])])
def test_hyper_attention_logs_its_tanh_gate_only_where_it_has_one(fusion: str, keys: list[str]) -> None:
    lm = _lm()
    io = BridgeIO((EncoderInfo("tiny", 32, (2, 3), 2),), lm.info)
    bridge = HyperAttentionBridge(HyperAttentionConfig(fusion=fusion, hyper_layers=[1]), io)
    assert sorted(gate_openings(_Model(bridge))) == keys


def test_a_flamingo_run_logs_gates_at_every_logging_step_and_plots_them(tmp_path: Path) -> None:
    run_dir = tmp_path / "flamingo"
    assert main(["train", "experiment=smoke", "bridge=flamingo", "world=tiny", "stages.align.max_steps=6",
                 "train.log_every_n_steps=2", "eval.limit=2", "efficiency.flops=false", "trainer.progress_bar=false",
                 f"run_dir={run_dir}"]) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "train/loss" in r]
    assert len(logged) == 3  # steps 2, 4, 6
    for record in logged:
        assert {"gate/attn/layer0", "gate/attn/layer1", "gate/ff/layer0", "gate/ff/layer1"} <= set(record)
    opening = [r["gate/attn/layer1"] for r in logged]
    assert 0 < opening[0] < opening[-1]  # zero at init, opened by training
    path = plot_gates(run_dir)
    assert path == run_dir / "plots" / "gates.png" and path.stat().st_size > 1000


def test_plot_gates_refuses_a_run_without_gates(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"stage": "align", "step": 2, "train/loss": 1.0}) + "\n")
    assert not load_metrics(tmp_path).empty
    with pytest.raises(ValueError, match="no gate/\\* values.*gate=none"):
        plot_gates(tmp_path)
