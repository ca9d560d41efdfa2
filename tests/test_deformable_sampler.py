"""The two CPU samplers, compiled loops (bridges/common/deformable_numba.py) and library gathers
(bridges/common/deformable_sampler.py), against the grid_sample core and transformers' reference: values and
gradients, points outside the maps and on their borders, several levels of different (odd) sizes."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DeformableDetrConfig
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrMultiscaleDeformableAttention,
    MultiScaleDeformableAttention,
)

from bridges.common import deformable_numba
from bridges.common.deformable import MSDeformAttn, grid_sample_flop_mapping, ms_deform_attn_core

#: the CPU samplers that replace grid_sample (``ms_deform_attn_core(..., implementation)``)
SAMPLERS = ["numba", "gather"]

SHAPES = {
    "one_run": [(5, 5)] * 3,  # MMFuser's case: all levels one shape
    "pyramid_odd": [(7, 5), (3, 3), (1, 2)],  # one level per run, odd sizes, a one-row map
    "runs": [(4, 6), (4, 6), (3, 5)],  # a run of two levels, then one
    "single_odd": [(5, 7)],
}


def _level_start(shapes: list[tuple[int, int]]) -> torch.Tensor:
    sizes = torch.tensor([h * w for h, w in shapes])
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def _inputs(shapes: list[tuple[int, int]], dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """value, locations (some outside the maps, some on the padded border's edges), weights, output gradient."""
    g = torch.Generator().manual_seed(seed)
    n, q, m, dh, p, levels = 2, 5, 3, 4, 3, len(shapes)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, m, dh, generator=g, dtype=dtype)
    locations = torch.rand(n, q, m, levels, p, 2, generator=g, dtype=dtype) * 1.8 - 0.4
    # exact pixel borders, in pixels x = loc * W - 0.5: -1 (last padded column), -0.5, 0, W - 1, W (outside)
    for lvl, (h, w) in enumerate(shapes):
        for i, px in enumerate((-1.0, -0.5, 0.0, w - 1.0, float(w))):
            locations[0, i, 0, lvl, 0, 0] = (px + 0.5) / w
        for i, py in enumerate((-1.0, 0.0, h - 1.0, float(h), -3.0)):
            locations[1, i, 1, lvl, 1, 1] = (py + 0.5) / h
    weights = torch.rand(n, q, m, levels * p, generator=g, dtype=dtype).softmax(-1).view(n, q, m, levels, p)
    grad_out = torch.randn(n, q, m * dh, generator=g, dtype=dtype)
    return value, locations, weights, grad_out


def _value_and_grads(fn, value, locations, weights, grad_out) -> list[torch.Tensor]:
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    out = fn(*leaves)
    return [out.detach(), *torch.autograd.grad(out, leaves, grad_out)]


def _transformers_core(shapes: list[tuple[int, int]]):
    attn = MultiScaleDeformableAttention()
    return lambda v, loc, w: attn(v, torch.tensor(shapes), shapes, _level_start(shapes), loc, w, 64)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("kind", sorted(SHAPES))
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_values_and_gradients_match_grid_sample_and_transformers(
    sampler: str, kind: str, dtype: torch.dtype, atol: float
) -> None:
    shapes = SHAPES[kind]
    inputs = _inputs(shapes, dtype)
    gather = _value_and_grads(lambda v, loc, w: ms_deform_attn_core(v, shapes, loc, w, sampler), *inputs)
    grid = _value_and_grads(lambda v, loc, w: ms_deform_attn_core(v, shapes, loc, w, "grid_sample"), *inputs)
    reference = _value_and_grads(_transformers_core(shapes), *inputs)
    names = ("output", "d value", "d locations", "d weights")
    for name, ours, a, b in zip(names, gather, grid, reference):
        # location gradients are W (or H) times larger than the rest: compare them relative to their scale
        tol = atol * (1 + a.abs().max().item()) if name == "d locations" else atol
        torch.testing.assert_close(ours, a, atol=tol, rtol=0, msg=f"{sampler} {kind} {dtype} {name} vs grid_sample")
        torch.testing.assert_close(ours, b, atol=tol, rtol=0, msg=f"{sampler} {kind} {dtype} {name} vs transformers")
    assert gather[2].abs().sum() > 0 and gather[3].abs().sum() > 0  # the gradients are not trivially zero


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_gradcheck_float64(sampler: str) -> None:
    shapes = [(3, 4), (2, 3)]
    g = torch.Generator().manual_seed(1)
    value = torch.randn(1, 18, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    # away from pixel borders (kinks of the bilinear interpolation), some outside
    locations = (torch.rand(1, 4, 2, 2, 2, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2).requires_grad_()
    weights = torch.rand(1, 4, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn_core(v, shapes, loc, w, sampler), (value, locations, weights)
    )


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("which", [0, 1, 2])
def test_gradient_of_one_input_only(sampler: str, which: int) -> None:
    shapes = SHAPES["runs"]
    inputs = list(_inputs(shapes, torch.float64))
    expected = _value_and_grads(lambda v, loc, w: ms_deform_attn_core(v, shapes, loc, w, "grid_sample"), *inputs)
    leaf = inputs[which].clone().requires_grad_()
    args = [leaf if i == which else t for i, t in enumerate(inputs[:3])]
    out = ms_deform_attn_core(args[0], shapes, args[1], args[2], sampler)
    (grad,) = torch.autograd.grad(out, leaf, inputs[3])
    torch.testing.assert_close(grad, expected[1 + which], atol=1e-10, rtol=0)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_non_finite_locations_give_nan_as_in_grid_sample(sampler: str) -> None:
    shapes = SHAPES["pyramid_odd"]
    value, locations, weights, _ = _inputs(shapes, torch.float32)
    locations[0, 0, 0, 0, 0, 0] = float("nan")
    locations[0, 1, 0, 1, 0, 1] = float("inf")
    locations[1, 2, 2, 2, 2, 0] = -float("inf")
    gather = ms_deform_attn_core(value, shapes, locations, weights, sampler)
    expected = ms_deform_attn_core(value, shapes, locations, weights, "grid_sample")
    assert expected.isnan().any()
    torch.testing.assert_close(gather, expected, atol=2e-5, rtol=0, equal_nan=True)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_empty_batch_forward_and_backward(sampler: str) -> None:
    shapes = SHAPES["runs"]
    value = torch.randn(0, sum(h * w for h, w in shapes), 2, 4, requires_grad=True)
    locations = torch.rand(0, 3, 2, 3, 2, 2, requires_grad=True)
    weights = torch.rand(0, 3, 2, 3, 2, requires_grad=True)
    out = ms_deform_attn_core(value, shapes, locations, weights, sampler)
    assert out.shape == (0, 3, 8)
    out.sum().backward()
    assert value.grad.shape == value.shape and locations.grad.shape == locations.shape


def _reference(d_model: int, levels: int, heads: int, points: int) -> DeformableDetrMultiscaleDeformableAttention:
    config = DeformableDetrConfig(
        d_model=d_model, num_feature_levels=levels, disable_custom_kernels=True, use_pretrained_backbone=False
    )
    ref = DeformableDetrMultiscaleDeformableAttention(config, num_heads=heads, n_points=points).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    return ref


@pytest.mark.parametrize("kind", ["one_run", "pyramid_odd"])
def test_module_gradients_match_transformers(kind: str) -> None:
    shapes = SHAPES[kind]
    torch.manual_seed(0)
    ref = _reference(24, len(shapes), 4, 3).double()
    ours = MSDeformAttn.from_reference(ref).eval()
    s = sum(h * w for h, w in shapes)
    query = torch.randn(2, 6, 24, dtype=torch.float64, requires_grad=True)
    values = torch.randn(2, s, 24, dtype=torch.float64, requires_grad=True)
    points = torch.rand(2, 6, len(shapes), 2, dtype=torch.float64)
    grad_out = torch.randn(2, 6, 24, dtype=torch.float64)
    expected, _ = ref(
        hidden_states=query,
        encoder_hidden_states=values,
        reference_points=points,
        spatial_shapes=torch.tensor(shapes),
        spatial_shapes_list=shapes,
        level_start_index=_level_start(shapes),
    )
    ref_grads = torch.autograd.grad(expected, [query, values, *ref.parameters()], grad_out)
    got = ours(query, points, values, shapes)
    our_grads = torch.autograd.grad(got, [query, values, *ours.parameters()], grad_out)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    names = ["query", "values", *(name for name, _ in ref.named_parameters())]
    assert names[2:] == [name for name, _ in ours.named_parameters()]
    for name, a, b in zip(names, our_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9, msg=f"d {name}")


def test_flops_are_counted_as_for_grid_sample() -> None:
    shapes = SHAPES["runs"]
    value, locations, weights, _ = _inputs(shapes, torch.float32)
    counts = {}
    for impl in (*SAMPLERS, "grid_sample"):
        with FlopCounterMode(display=False, custom_mapping=grid_sample_flop_mapping()) as counter:
            ms_deform_attn_core(value, shapes, locations, weights, impl)
        counts[impl] = counter.get_total_flops()
    n, q, m, levels, p = weights.shape
    assert counts["numba"] == counts["gather"] == counts["grid_sample"] == 10 * n * q * m * levels * p * value.shape[-1]


def test_auto_falls_back_to_grid_sample_and_errors_name_the_problem() -> None:
    shapes = SHAPES["one_run"]
    value, locations, weights, _ = (t.bfloat16() for t in _inputs(shapes, torch.float32))
    half = ms_deform_attn_core(value, shapes, locations, weights)  # auto: grid_sample (no bf16 gather kernels)
    full = ms_deform_attn_core(value.float(), shapes, locations.float(), weights.float())
    torch.testing.assert_close(half.float(), full, atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match="implementation='gather' takes CPU tensors"):
        ms_deform_attn_core(value, shapes, locations, weights, "gather")
    with pytest.raises(ValueError, match="implementation='numba' takes CPU tensors"):
        ms_deform_attn_core(value, shapes, locations, weights, "numba")
    with pytest.raises(ValueError, match="must be 'auto', 'numba', 'gather' or 'grid_sample'"):
        ms_deform_attn_core(value.float(), shapes, locations.float(), weights.float(), "fast")
    assert math.isfinite(full.sum().item())


def _sampling_ops(fn) -> set[str]:
    with FlopCounterMode(display=False, custom_mapping=grid_sample_flop_mapping()) as counter:
        fn()
    return {str(op) for op in counter.get_flop_counts()["Global"]}


def test_auto_prefers_the_compiled_sampler_and_falls_back_to_gathers_without_numba(monkeypatch) -> None:
    shapes = SHAPES["runs"]
    value, locations, weights, _ = _inputs(shapes, torch.float32)
    compiled = ms_deform_attn_core(value, shapes, locations, weights)
    assert _sampling_ops(lambda: ms_deform_attn_core(value, shapes, locations, weights)) == {
        "bridgelab.ms_deform_sample_compiled"
    }
    monkeypatch.setattr(deformable_numba, "available", lambda: False)  # as on a machine without numba
    assert _sampling_ops(lambda: ms_deform_attn_core(value, shapes, locations, weights)) == {
        "bridgelab.ms_deform_sample"
    }
    torch.testing.assert_close(ms_deform_attn_core(value, shapes, locations, weights), compiled, atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="with numba installed"):
        ms_deform_attn_core(value, shapes, locations, weights, "numba")
