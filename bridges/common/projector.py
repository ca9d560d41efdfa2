"""The LLaVA-style projector: ``linear`` or ``mlp{k}x_gelu`` (k Linear layers with GELU between them).

Used by the MLP bridge and as the final projection of Eagle, MMFuser and Hyper Attention. The module layout is
an ``nn.Sequential`` of ``Linear, GELU, Linear, ...`` so indices match LLaVA's released checkpoints
(``mm_projector.0.weight``, ``mm_projector.2.weight``).
"""

from __future__ import annotations

import re

from torch import nn

_MLP = re.compile(r"^mlp(\d+)x_gelu$")


def projector_depth(kind: str) -> int:
    """Number of Linear layers of a projector spec (``linear`` = 1, ``mlp2x_gelu`` = 2)."""
    if kind == "linear":
        return 1
    match = _MLP.match(kind)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"Unknown projector '{kind}'. Use 'linear' or 'mlp{{k}}x_gelu' (e.g. 'mlp2x_gelu').")
    return int(match.group(1))


def build_projector(kind: str, in_dim: int, out_dim: int, bias: bool = True) -> nn.Sequential:
    """``(…, in_dim) -> (…, out_dim)``: Linear(in, out), then (GELU, Linear(out, out)) x (k - 1)."""
    depth = projector_depth(kind)
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim, bias=bias)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim, bias=bias)]
    return nn.Sequential(*layers)


def projector_flops(kind: str, in_dim: int, out_dim: int, tokens: int) -> int:
    """Forward FLOPs (2 x multiply-adds) of :func:`build_projector` over ``tokens`` tokens."""
    depth = projector_depth(kind)
    return 2 * tokens * (in_dim * out_dim + (depth - 1) * out_dim * out_dim)
