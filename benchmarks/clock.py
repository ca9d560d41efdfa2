"""Exclusive wall time per model component (encoder, bridge, LM) over training steps, forward and backward.

``ComponentClock(model)`` hooks the ``MultimodalLM``'s parts: the encoder set, the bridge (the module and its direct
children, so inject bridges' resamplers and inserted layers count wherever the LM calls them) and the LM (the HF
model and its input embeddings). At every hand-over the time since the last one is charged to the component on top
of a stack, so nested calls (a Flamingo cross-attention inside an LM layer) are charged exclusively. Forward: module
pre/post hooks. Backward: gradient hooks on a component call's outputs (its backward starts) and on its inputs that
need a gradient (its backward ends); a component whose inputs need no gradient keeps the clock until the next
hand-over, which is right because nothing upstream of those inputs runs backward. Time outside every component
(splicing, the loss outside the LM, clipping, the optimiser) is ``other``. Charges are kept per phase
(``forward`` / ``backward`` / ``optimizer``), which the caller sets.

Hooks cost a few microseconds per call, so the clock is meant for a separate, instrumented pass; the caller times
samples/s without it.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

COMPONENTS = ("encoder", "bridge", "lm", "other")


def _tensors(obj: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """Tensors that need a gradient inside outputs / arguments (tensors, sequences, mappings, dataclasses)."""
    if depth > 4:
        return
    if isinstance(obj, torch.Tensor):
        if obj.requires_grad:
            yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _tensors(value, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value, depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name), depth + 1)


def component_modules(model: nn.Module) -> dict[str, list[nn.Module]]:
    """The modules whose calls the clock charges to each component of a ``MultimodalLM``."""
    bridge = model.bridge
    bridge_mods = [bridge]
    for child in bridge.children():
        bridge_mods += list(child.children()) if isinstance(child, (nn.ModuleDict, nn.ModuleList)) else [child]
    lm = model.lm.model
    return {"encoder": [model.encoders], "bridge": bridge_mods, "lm": [lm, lm.get_input_embeddings()]}


class ComponentClock:
    """Charges wall time to components; ``totals[(component, phase)]`` in seconds. Use as a context manager."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.totals: dict[tuple[str, str], float] = defaultdict(float)
        self.phase = "forward"
        self._stack: list[tuple[str, int]] = []
        self._tokens = itertools.count()
        self._last: float | None = None
        self._handles: list[Any] = []

    # --- accounting -----------------------------------------------------------------------------------------------
    def _charge(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            top = self._stack[-1][0] if self._stack else "other"
            self.totals[(top, self.phase)] += now - self._last
        self._last = now

    def _enter(self, name: str) -> int:
        self._charge()
        token = next(self._tokens)
        self._stack.append((name, token))
        return token

    def _leave(self, token: int) -> None:
        self._charge()
        self._stack = [entry for entry in self._stack if entry[1] != token]

    def set_phase(self, phase: str) -> None:
        """Charge what passed to the old phase, then count in ``phase``; leaving ``backward`` clears the stack."""
        self._charge()
        if self.phase == "backward" and phase != "backward":
            self._stack.clear()
        self.phase = phase

    def start(self) -> None:
        self._stack.clear()
        self._last = time.perf_counter()
        self.phase = "forward"

    def stop(self) -> None:
        self._charge()
        self._stack.clear()
        self._last = None

    # --- hooks ------------------------------------------------------------------------------------------------
    def _hooks(self, name: str, module: nn.Module) -> None:
        calls: list[tuple[int, bool]] = []

        def pre(mod: nn.Module, args: Any, kwargs: Any) -> None:
            outermost = not self._stack or self._stack[-1][0] != name
            calls.append((self._enter(name), outermost))

        def post(mod: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            token, outermost = calls.pop()
            self._leave(token)
            if not outermost or not torch.is_grad_enabled():
                return
            back: list[int] = []  # the token of this call's backward, once it started

            def enter(grad: torch.Tensor) -> None:
                if not back:
                    back.append(self._enter(name))

            def leave(grad: torch.Tensor) -> None:
                if back:
                    self._leave(back[0])

            for tensor in _tensors(output):
                tensor.register_hook(enter)
            for tensor in itertools.chain(_tensors(args), _tensors(kwargs)):
                tensor.register_hook(leave)

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(module.register_forward_hook(post, with_kwargs=True))

    def __enter__(self) -> ComponentClock:
        for name, modules in component_modules(self.model).items():
            for module in modules:
                self._hooks(name, module)
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # --- results ----------------------------------------------------------------------------------------------
    def seconds(self) -> dict[str, float]:
        """Total seconds per component (all phases)."""
        out = dict.fromkeys(COMPONENTS, 0.0)
        for (name, _), value in self.totals.items():
            out[name] += value
        return out

    def by_phase(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {name: {} for name in COMPONENTS}
        for (name, phase), value in self.totals.items():
            out[name][phase] = value
        return out
