"""benchmarks/samplers.py: each CPU sampler really runs on its side, and the CLI writes what it reports."""

from __future__ import annotations

import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import samplers
from bridges.common.deformable import grid_sample_flop_mapping, ms_deform_attn_core


def _op_used() -> set[str]:
    value, locations = torch.randn(1, 4, 2, 3), torch.rand(1, 2, 2, 1, 2, 2)
    with FlopCounterMode(display=False, custom_mapping=grid_sample_flop_mapping()) as counter:
        ms_deform_attn_core(value, [(2, 2)], locations, torch.rand(1, 2, 2, 1, 2))
    return {str(op) for op in counter.get_flop_counts()["Global"]}


def test_only_sampler_selects_one_sampler_and_restores_the_choice() -> None:
    assert samplers.SAMPLERS == ("numba", "gather")
    with samplers.only_sampler("gather"):
        assert _op_used() == {"bridgelab.ms_deform_sample"}
    assert _op_used() == {"bridgelab.ms_deform_sample_compiled"}


def test_cli_times_every_side_and_writes_json_and_markdown(tmp_path) -> None:
    assert samplers.main(["--size", "tiny", "--rounds", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "samplers_tiny.json").read_text())
    assert set(result["fwdbwd_ms"]) == {"reference", "numba", "gather"}
    assert all(len(times) == 2 and min(times) > 0 for times in result["fwdbwd_ms"].values())
    for sampler in ("numba", "gather"):
        expected = result["fwdbwd_median_ms"]["reference"] / result["fwdbwd_median_ms"][sampler]
        assert abs(result["speedup_vs_reference"][sampler] - expected) < 1e-9
    assert result["command"] == f"python -m benchmarks.samplers --size tiny --rounds 2 --out {tmp_path}"
    assert "| ours, `numba` |" in (tmp_path / "samplers_tiny.md").read_text()
