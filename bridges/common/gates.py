"""Learned gates for residual branches that must start closed (Flamingo) or half open (mPLUG-Owl3 variants).

* :class:`TanhGate`: ``tanh(alpha) * x`` with ``alpha`` zero-initialised, so a gated branch is exactly the identity
  at init (Flamingo's ``attn_gate`` / ``ff_gate``, BRIDGES.md 1.3; IDEFICS ``alpha_cross_attn`` / ``alpha_dense``).
* :class:`SigmoidGate`: a static per-channel ``sigmoid(gamma)`` with ``gamma = 0`` (0.5 at init), the gate of an
  unattributed Paddle port of mPLUG-Owl3 (BRIDGES.md 6.6).

Both are tiny modules so stage policies can find every gate parameter by type (see :func:`gate_parameters`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

GateKind = Literal["scalar", "vector"]


class TanhGate(nn.Module):
    """``x -> tanh(alpha) * x``; ``alpha`` is one scalar (``kind="scalar"``) or one value per channel (``"vector"``).

    Args:
        dim: channel count ``D`` (the last axis of ``x``); needed for ``kind="vector"``.
        kind: ``"scalar"`` (OpenFlamingo, IDEFICS ``alpha_type="float"``) or ``"vector"`` (IDEFICS ``"vector"``).
        init: initial ``alpha``; 0.0 (the papers) makes the gated branch vanish exactly.
    """

    def __init__(self, dim: int | None = None, kind: GateKind = "scalar", init: float = 0.0) -> None:
        super().__init__()
        if kind == "scalar":
            shape: tuple[int, ...] = (1,)
        elif kind == "vector":
            if not dim:
                raise ValueError("A vector TanhGate needs its channel count: TanhGate(dim=D, kind='vector').")
            shape = (dim,)
        else:
            raise ValueError(f"Unknown gate kind '{kind}'. Use 'scalar' or 'vector'.")
        self.kind = kind
        self.alpha = nn.Parameter(torch.full(shape, float(init)))

    def value(self) -> torch.Tensor:
        """``tanh(alpha)``, shape ``(1,)`` or ``(D,)`` (what gets logged as the gate opening)."""
        return torch.tanh(self.alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., D) -> tanh(alpha) * x``."""
        return self.value() * x

    def extra_repr(self) -> str:
        return f"kind={self.kind}, shape={tuple(self.alpha.shape)}"


class SigmoidGate(nn.Module):
    """A static per-channel gate ``sigmoid(gamma)``, ``gamma (D,)`` initialised to ``init`` (0.0 gives 0.5)."""

    def __init__(self, dim: int, init: float = 0.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def value(self) -> torch.Tensor:
        """``sigmoid(gamma)``, shape ``(D,)``."""
        return torch.sigmoid(self.gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., D) -> sigmoid(gamma) * x``."""
        return self.value() * x


def gate_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """Every parameter that belongs to a :class:`TanhGate` or :class:`SigmoidGate` inside ``module``."""
    for sub in module.modules():
        if isinstance(sub, (TanhGate, SigmoidGate)):
            yield from sub.parameters()
