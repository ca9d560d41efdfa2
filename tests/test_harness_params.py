"""``bridgelab params``: the Flamingo-9B/80B presets (arithmetic from the recalled hyper-parameters beside the recalled
table figures) and the new baselines' paper presets, built on the meta device."""

from __future__ import annotations

import pytest
import torch

import bridges  # noqa: F401  (registers the built-in bridges and their presets)
from bridges.base import BRIDGES
from bridges.presets import get_preset
from experiments.harness.params import params_report, preset_rows


def _xattn_block(d: int, dv: int = 1536) -> int:
    """One GATED XATTN-DENSE block by hand (BRIDGES.md 1.3, inner width = d): q, kv, out, FFW x4, two LayerNorms."""
    return d * d + dv * 2 * d + d * d + 8 * d * d + 2 * 2 * d


@pytest.mark.parametrize(
    ("name", "d", "blocks", "reported"), [("flamingo_9b", 4096, 10, 1.6e9), ("flamingo_80b", 8192, 12, 10e9)]
)
def test_flamingo_9b_80b_sizes(name: str, d: int, blocks: int, reported: float) -> None:
    preset = get_preset("flamingo", name)
    with torch.device("meta"):
        bridge = BRIDGES.build({"name": "flamingo", **preset.overrides}, preset.io)
    assert len(bridge.layer_indices) == blocks
    xattn = sum(p.numel() for p in bridge.param_groups()[preset.count])
    assert xattn == blocks * _xattn_block(d)
    assert xattn == pytest.approx(preset.expected_params, rel=0.001)
    assert preset.extra["reported"] == int(reported)
    assert abs(xattn / reported - 1) > 0.1  # the arithmetic does not reproduce the recalled table; shown side by side
    perceiver = sum(p.numel() for p in bridge.param_groups()["bridge.perceiver"])
    assert perceiver == pytest.approx(get_preset("flamingo", "flamingo_3b_perceiver").expected_params, rel=0.001)


def test_params_table_lists_the_new_presets_with_the_paper_column() -> None:
    built = preset_rows()
    rows = {(r["bridge"], r["preset"]): r for r in built}
    for key in [
        ("flamingo", "flamingo_9b"),
        ("flamingo", "flamingo_80b"),
        ("avgpool", "llava15_7b_144"),
        ("pixel_shuffle", "idefics3_8b"),
        ("c_abstractor", "honeybee_c_7b_m144"),
    ]:
        assert rows[key]["built"] is not None and rows[key]["rel_error"] <= 0.01, key
    text, ok = params_report(rows=built)
    assert ok
    line = next(row for row in text.splitlines() if " flamingo_80b " in row)
    assert "8,355,446,784" in line and "10,000,000,000" in line and "[recall]" in line
    assert "'paper' is the figure the paper reports" in text
