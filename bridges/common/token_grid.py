"""Patch tokens as a 2-D grid, and the target token counts a grid admits.

The token-reducing bridges (``avgpool``, ``pixel_shuffle``, ``c_abstractor``) take a target visual-token count and
must check it against the encoder's patch grid before anything is built; the checks and their error messages live
here once, beside the ``(N, h*w, C) <-> (N, C, h, w)`` reshapes they all need.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange


def to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(N, h*w, C)`` row-major patch tokens -> ``(N, C, h, w)``."""
    h, w = grid
    if tokens.shape[1] != h * w:
        raise ValueError(
            f"Expected {h} x {w} = {h * w} patch tokens, got {tokens.shape[1]} (tokens {tuple(tokens.shape)})"
        )
    return rearrange(tokens, "n (h w) c -> n c h w", h=h, w=w)


def from_grid(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, h, w)`` -> ``(N, h*w, C)`` row-major."""
    return rearrange(x, "n c h w -> n (h w) c")


def average_pool(tokens: torch.Tensor, grid: tuple[int, int], side: int) -> torch.Tensor:
    """``(N, h*w, C)`` row-major patch tokens -> ``(N, side*side, C)``: adaptive average pooling of the grid."""
    return from_grid(F.adaptive_avg_pool2d(to_grid(tokens, grid), side))


def square_side(num_tokens: object) -> int | None:
    """``s`` when ``num_tokens`` is a positive perfect square ``s * s``, else ``None``."""
    side = math.isqrt(num_tokens) if isinstance(num_tokens, int) and num_tokens > 0 else 0
    return side if side and side * side == num_tokens else None


def pooled_side(bridge: str, num_tokens: int, grid: tuple[int, int]) -> int:
    """The side ``s`` of the square ``s x s`` grid that ``num_tokens`` asks for, checked against the encoder grid.

    Raises:
        ValueError: ``num_tokens`` is not a positive perfect square, or its side exceeds the encoder grid.
    """
    h, w = grid
    valid = [s * s for s in range(1, min(h, w) + 1)]
    side = square_side(num_tokens)
    if side is None or side > min(h, w):
        raise ValueError(
            f"{bridge}: num_tokens={num_tokens!r} cannot be pooled from the {h} x {w} encoder grid: it must be a "
            f"square s * s with s <= {min(h, w)}. Valid counts for this grid: {valid}."
        )
    return side


def shuffle_factors(grid: tuple[int, int]) -> dict[int, int]:
    """Token count -> space-to-depth factor ``s`` for every ``s`` that divides both sides of ``grid``."""
    h, w = grid
    return {(h // s) * (w // s): s for s in range(1, math.gcd(h, w) + 1) if h % s == 0 and w % s == 0}


def shuffle_factor(bridge: str, num_tokens: int, grid: tuple[int, int]) -> int:
    """The space-to-depth factor that turns ``grid`` into ``num_tokens`` tokens.

    Raises:
        ValueError: no integer factor dividing both grid sides gives ``num_tokens``.
    """
    factors = shuffle_factors(grid)
    if num_tokens not in factors:
        h, w = grid
        raise ValueError(
            f"{bridge}: num_tokens={num_tokens!r} is not reachable by space-to-depth from the {h} x {w} encoder grid "
            f"(a factor s must divide both sides, giving (h/s) * (w/s) tokens). Valid counts for this grid: "
            f"{sorted(factors, reverse=True)} (factors {[factors[t] for t in sorted(factors, reverse=True)]})."
        )
    return factors[num_tokens]
