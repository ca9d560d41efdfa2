"""efficiency.json counts what it claims: attention included on CPU, the method recorded, and the recorded FLOPs per
sample equal to an independent recount (fused attention kernels counted by formula, no math backend) within 1%."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import harness_toy
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from bridges.common.deformable import grid_sample_flop_mapping
from experiments.harness.build import build_data
from experiments.harness.efficiency import FLOP_METHOD, count_call_flops
from experiments.harness.loading import load_run
from experiments.harness.rundir import RunDir
from experiments.harness.runner import run

aten = torch.ops.aten


def _fused_cpu_sdpa(q_shape: Any, k_shape: Any, v_shape: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(q_shape, k_shape, v_shape)


def _fused_cpu_sdpa_backward(grad_shape: Any, q_shape: Any, k_shape: Any, v_shape: Any, *args: Any, **kw: Any) -> int:
    # the gradients of Q, K, V and of the probabilities: twice the forward; a flash kernel's recompute of the scores
    # (which sdpa_backward_flop_count adds) is work of that kernel, not of the computation
    return 2 * sdpa_flop_count(q_shape, k_shape, v_shape)


#: The independent route: attention left to whatever kernel torch picks, the CPU fused kernels counted by their
#: shapes (``torch.utils.flop_counter`` knows the CUDA ones, not these).
INDEPENDENT = {
    aten._scaled_dot_product_flash_attention_for_cpu: _fused_cpu_sdpa,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _fused_cpu_sdpa_backward,
    **grid_sample_flop_mapping(),
}


def _independent(model: torch.nn.Module, batch: Any, backward: bool) -> tuple[int, int]:
    """(independent count, count of the old method: the plain counter, fused attention unseen)."""
    model.train(backward)
    counts = []
    for mapping in (INDEPENDENT, {}):
        counter = FlopCounterMode(display=False, custom_mapping=mapping)
        with counter:
            if backward:
                model(batch).loss.backward()
            else:
                with torch.no_grad():
                    model(batch)
        model.zero_grad(set_to_none=True)
        counts.append(int(counter.get_total_flops()))
    return counts[0], counts[1]


SMALL_QFORMER = {"with_cls": False, "num_layers": 2, "hidden_size": 64, "num_heads": 4, "intermediate_size": 128}


@pytest.mark.parametrize("bridge", ["mlp", "qformer"])
def test_recorded_flops_equal_an_independent_count(tmp_path: Path, bridge: str) -> None:
    spec = {"name": bridge, **(SMALL_QFORMER if bridge == "qformer" else {})}
    cfg = harness_toy.toy_config(**{"bridge": spec, "eval.enabled": False, "stages.align.max_steps": 2})
    rd = RunDir(run(cfg, run_dir=tmp_path / bridge).run_dir)
    eff = rd.read_efficiency()
    assert eff["flops_method"] == FLOP_METHOD and "SDPBackend.MATH" in eff["flops_method"]
    loaded = load_run(rd.path)
    tasks = build_data(loaded.config, None).select_train(None, "data")
    assert set(eff["flops_per_sample_by_task"]) == set(tasks)
    for task, items in tasks.items():
        batch = loaded.train_collate(list(items[:2]))
        recorded = eff["flops_per_sample_by_task"][task]
        for key, backward in (("forward", False), ("train", True)):
            independent, unseen = (c / 2 for c in _independent(loaded.model, batch, backward))
            assert recorded[key] == pytest.approx(independent, rel=0.01), (task, key)
            assert recorded[key] > unseen * 1.005, (task, key)  # attention is in the figure (it was not before)
    forward = [v["forward"] for v in eff["flops_per_sample_by_task"].values()]
    assert eff["flops_per_sample"] == pytest.approx(sum(forward) / len(forward))


def test_count_call_flops_counts_attention_and_grid_sample() -> None:
    q = torch.randn(2, 4, 64, 16)
    expected_attention = 2 * (2 * 2 * 4 * 64 * 64 * 16)  # QK^T and PV
    assert count_call_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)) == expected_attention
    maps, grid = torch.randn(3, 5, 8, 8), torch.rand(3, 6, 7, 2) * 2 - 1
    assert count_call_flops(lambda: torch.nn.functional.grid_sample(maps, grid, align_corners=False)) == 8 * 3 * 5 * 42
