"""Multi-scale deformable attention: parity with transformers' Deformable-DETR reference (fp32, eval, atol 1e-5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from transformers import DeformableDetrConfig
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrMultiscaleDeformableAttention,
    MultiScaleDeformableAttention,
)

from bridges.common.deformable import (
    MSDeformAttn,
    grid_sample_flop_mapping,
    ms_deform_attn_core,
    ms_deform_attn_flops,
    reference_points_grid,
)

ATOL = 1e-5
SHAPES = {
    "same": [(5, 5)] * 3,  # MMFuser's case: one grid_sample for all levels
    "pyramid": [(8, 8), (4, 4), (2, 3)],  # Deformable-DETR's case: one call per level
    "single": [(6, 4)],
}


def _level_start(shapes: list[tuple[int, int]]) -> torch.Tensor:
    sizes = torch.tensor([h * w for h, w in shapes])
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def _reference(d_model: int, levels: int, heads: int, points: int) -> DeformableDetrMultiscaleDeformableAttention:
    config = DeformableDetrConfig(
        d_model=d_model, num_feature_levels=levels, disable_custom_kernels=True, use_pretrained_backbone=False
    )
    ref = DeformableDetrMultiscaleDeformableAttention(config, num_heads=heads, n_points=points).eval()
    with torch.no_grad():  # random weights everywhere, so offsets and weights depend on the query
        for p in ref.parameters():
            p.normal_(0, 0.3)
    return ref


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_core_matches_transformers(kind: str) -> None:
    shapes = SHAPES[kind]
    n, q, m, dh, p = 3, 7, 4, 8, 3
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, m, dh)
    locations = torch.rand(n, q, m, len(shapes), p, 2) * 1.6 - 0.3  # some samples fall outside the map
    weights = torch.randn(n, q, m, len(shapes) * p).softmax(-1).view(n, q, m, len(shapes), p)
    expected = MultiScaleDeformableAttention()(
        value, torch.tensor(shapes), shapes, _level_start(shapes), locations, weights, 64
    )
    ours = ms_deform_attn_core(value, shapes, locations, weights)
    assert ours.shape == (n, q, m * dh)
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)
    # a (L, 2) tensor of shapes gives the same result
    torch.testing.assert_close(
        ms_deform_attn_core(value, torch.tensor(shapes), locations, weights), ours, atol=0, rtol=0
    )


@pytest.mark.parametrize(
    ("kind", "d_model", "heads", "points", "batch", "queries"),
    [("same", 32, 4, 4, 2, 9), ("pyramid", 64, 8, 2, 3, 5), ("single", 16, 2, 3, 1, 24)],
)
def test_module_matches_transformers(
    kind: str, d_model: int, heads: int, points: int, batch: int, queries: int
) -> None:
    shapes = SHAPES[kind]
    ref = _reference(d_model, len(shapes), heads, points)
    ours = MSDeformAttn.from_reference(ref).eval()
    s = sum(h * w for h, w in shapes)
    query, values = torch.randn(batch, queries, d_model), torch.randn(batch, s, d_model)
    points_xy = torch.rand(batch, queries, len(shapes), 2)
    with torch.no_grad():
        expected, _ = ref(
            hidden_states=query,
            encoder_hidden_states=values,
            reference_points=points_xy,
            spatial_shapes=torch.tensor(shapes),
            spatial_shapes_list=shapes,
            level_start_index=_level_start(shapes),
        )
        got = ours(query, points_xy, values, shapes)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_module_boxes_and_padding_match_transformers() -> None:
    shapes = SHAPES["pyramid"]
    ref = _reference(32, len(shapes), 4, 2)
    ours = MSDeformAttn.from_reference(ref).eval()
    s = sum(h * w for h, w in shapes)
    query, values = torch.randn(2, 6, 32), torch.randn(2, s, 32)
    boxes = torch.cat([torch.rand(2, 6, len(shapes), 2), torch.rand(2, 6, len(shapes), 2) * 0.5], -1)
    keep = torch.rand(2, s) > 0.3
    with torch.no_grad():
        expected, _ = ref(
            hidden_states=query,
            attention_mask=keep,  # transformers' mask is True where a value is kept
            encoder_hidden_states=values,
            reference_points=boxes,
            spatial_shapes=torch.tensor(shapes),
            spatial_shapes_list=shapes,
            level_start_index=_level_start(shapes),
        )
        got = ours(query, boxes, values, shapes, padding_mask=~keep)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_reference_initialisation() -> None:
    heads, levels, points = 8, 3, 4
    module = MSDeformAttn(32, levels, heads, points)
    # Deformable-DETR's _reset_parameters, written out with loops
    expected = torch.zeros(heads, levels, points, 2)
    for h in range(heads):
        theta = 2 * math.pi * h / heads
        c, s = math.cos(theta), math.sin(theta)
        norm = max(abs(c), abs(s))
        for p in range(points):
            expected[h, :, p] = torch.tensor([c / norm, s / norm]) * (p + 1)
    torch.testing.assert_close(module.sampling_offsets.bias.view(heads, levels, points, 2), expected)
    assert not module.sampling_offsets.weight.any()
    assert not module.attention_weights.weight.any() and not module.attention_weights.bias.any()
    assert not module.value_proj.bias.any() and not module.output_proj.bias.any()
    bound = math.sqrt(6 / 64)  # Xavier-uniform bound of a (32, 32) matrix
    assert module.value_proj.weight.abs().max() <= bound and module.value_proj.weight.std() > bound / 3


def test_half_precision_runs_core_in_float32() -> None:
    module = MSDeformAttn(32, 2, 4, 2)
    shapes = [(4, 4)] * 2
    query, values, ref = torch.randn(2, 16, 32), torch.randn(2, 32, 32), reference_points_grid(4, 4)
    full = module(query, ref, values, shapes)
    half = module.to(torch.bfloat16)(query.bfloat16(), ref, values.bfloat16(), shapes)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=0.1, rtol=0.05)


def test_reference_points_grid_is_cell_centres() -> None:
    ref = reference_points_grid(2, 3)
    assert ref.shape == (1, 6, 1, 2)
    torch.testing.assert_close(
        ref[0, :, 0],
        torch.tensor([[1 / 6, 0.25], [0.5, 0.25], [5 / 6, 0.25], [1 / 6, 0.75], [0.5, 0.75], [5 / 6, 0.75]]),
    )


def test_grid_sample_flop_mapping_and_module_flops() -> None:
    maps, grid = torch.randn(3, 5, 4, 4), torch.rand(3, 7, 2, 2)
    with FlopCounterMode(display=False, custom_mapping=grid_sample_flop_mapping()) as counter:
        F.grid_sample(maps, grid, align_corners=False)
    assert counter.get_total_flops() == 8 * 3 * 5 * 7 * 2
    module, shapes = MSDeformAttn(32, 2, 4, 3), [(4, 4), (2, 2)]
    with FlopCounterMode(display=False, custom_mapping=grid_sample_flop_mapping()) as counter:
        module(torch.randn(1, 10, 32), torch.rand(1, 10, 2, 2), torch.randn(1, 20, 32), shapes)
    assert counter.get_total_flops() == ms_deform_attn_flops(10, 20, 32, 4, 2, 3)


def test_errors_name_the_problem() -> None:
    module = MSDeformAttn(16, 2, 2, 2)
    with pytest.raises(ValueError, match="built for 2 levels"):
        module(torch.randn(1, 4, 16), torch.rand(1, 4, 1, 2), torch.randn(1, 4, 16), [(2, 2)])
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn_core(torch.randn(1, 5, 2, 8), [(2, 2)], torch.rand(1, 3, 2, 1, 2, 2), torch.rand(1, 3, 2, 1, 2))
    with pytest.raises(ValueError, match="not divisible"):
        MSDeformAttn(30, 1, 4, 2)
