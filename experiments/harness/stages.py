"""Stage policies: which named parameter groups train in a stage, at what learning rate; the frozen/trainable table.

A model exposes ``param_groups() -> {name: [parameters]}`` with names such as ``encoder``, ``encoder.last_k``,
``bridge``, ``bridge.gates``, ``lm``, ``lm.new_tokens``, ``lm.lora``; every parameter belongs to exactly one
group. A stage lists glob patterns over those names (``bridge*`` = ``bridge`` and ``bridge.gates``). Applying a
stage sets ``requires_grad`` from the patterns alone, and :func:`assert_stage` checks it again when training
starts, so a stage never trains more or less than its config says.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from encoders.registry import ConfigError
from experiments.harness.config import StageConfig


class FreezeError(RuntimeError):
    """The model's trainable parameters do not match the stage's declared groups."""


@dataclass(frozen=True)
class GroupRow:
    """One row of the frozen/trainable table."""

    group: str
    tensors: int
    params: int
    trainable: bool
    lr: float | None


@dataclass(frozen=True)
class StagePlan:
    """The resolved policy of one stage: trainable groups and their learning rates."""

    stage: str
    trainable_groups: tuple[str, ...]
    group_lr: Mapping[str, float]
    rows: tuple[GroupRow, ...]

    @property
    def trainable_params(self) -> int:
        return sum(r.params for r in self.rows if r.trainable)

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.rows)

    def table(self) -> str:
        """The frozen/trainable table as aligned text (logged at each stage start)."""
        width = max([len(r.group) for r in self.rows] + [5])
        lines = [f"stage '{self.stage}': {self.trainable_params:,} of {self.total_params:,} parameters train"]
        lines.append(f"  {'group':<{width}}  {'tensors':>7}  {'params':>12}  {'state':<9}  lr")
        for r in self.rows:
            state = "TRAIN" if r.trainable else "frozen"
            lr = f"{r.lr:.3g}" if r.lr is not None else "-"
            lines.append(f"  {r.group:<{width}}  {r.tensors:>7}  {r.params:>12,}  {state:<9}  {lr}")
        return "\n".join(lines)

    def as_records(self) -> list[dict[str, object]]:
        return [r.__dict__.copy() for r in self.rows]


def model_param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The model's named groups, checked: every parameter in exactly one group."""
    if not hasattr(model, "param_groups"):
        raise TypeError(f"{type(model).__name__} has no param_groups(); the harness needs named parameter groups")
    groups = {name: list(params) for name, params in model.param_groups().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    owner: dict[int, str] = {}
    for group, params in groups.items():
        for p in params:
            if id(p) in owner and owner[id(p)] != group:
                raise FreezeError(
                    f"Parameter '{names.get(id(p), '?')}' is in groups '{owner[id(p)]}' and '{group}'; "
                    "param_groups() must put every parameter in exactly one group."
                )
            owner[id(p)] = group
    missing = [n for i, n in names.items() if i not in owner]
    if missing:
        raise FreezeError(
            f"{len(missing)} parameters belong to no group (e.g. {', '.join(missing[:3])}); "
            "param_groups() must cover every parameter."
        )
    return groups


# The group names of the MultimodalLM contract; a model may leave some out (no LoRA, no new tokens, ...).
STANDARD_GROUPS = ("encoder", "encoder.last_k", "bridge", "bridge.gates", "lm", "lm.new_tokens", "lm.lora")


def match_groups(patterns: Sequence[str], groups: Iterable[str], where: str) -> list[str]:
    """The group names matched by any of ``patterns``.

    A pattern must match a group of this model or, at least, a standard group name (:data:`STANDARD_GROUPS`) that
    this model happens not to have (``lm.new_tokens`` without added tokens); anything else is a typo and raises.
    """
    names = list(groups)
    matched: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits and not any(fnmatch.fnmatchcase(n, pattern) for n in STANDARD_GROUPS):
            raise ConfigError(
                f"'{where}': pattern '{pattern}' matches no parameter group. Groups of this model: {', '.join(names)}."
            )
        matched += [h for h in hits if h not in matched]
    return matched


def resolve_lr(group: str, stage: StageConfig) -> float:
    for pattern, lr in stage.group_lr.items():
        if fnmatch.fnmatchcase(group, pattern):
            return float(lr)
    return float(stage.lr)


def apply_stage(model: nn.Module, name: str, stage: StageConfig) -> StagePlan:
    """Freeze everything, unfreeze the stage's groups, and return the plan (with the table)."""
    groups = model_param_groups(model)
    for pattern in stage.group_lr:
        match_groups([pattern], groups, f"stages.{name}.group_lr")
    trainable = match_groups(stage.trainable, groups, f"stages.{name}.trainable")
    empty = [g for g in trainable if not groups[g]]
    if len(empty) == len(trainable):
        raise ConfigError(
            f"'stages.{name}.trainable' selects only empty groups ({', '.join(empty)}). "
            "For lm.lora set llm.lora_rank > 0; for encoder.last_k set the encoder's unfreeze_last_k."
        )
    model.requires_grad_(False)
    for group in trainable:
        for p in groups[group]:
            p.requires_grad_(True)
    lrs = {g: resolve_lr(g, stage) for g in trainable}
    rows = tuple(
        GroupRow(g, len(ps), sum(p.numel() for p in ps), g in trainable, lrs.get(g)) for g, ps in groups.items()
    )
    plan = StagePlan(name, tuple(trainable), lrs, rows)
    assert_stage(model, plan)
    return plan


def assert_stage(model: nn.Module, plan: StagePlan) -> None:
    """Raise :class:`FreezeError` unless exactly the plan's groups are trainable and at least one parameter is."""
    groups = model_param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    wrong: list[str] = []
    for group, params in groups.items():
        want = group in plan.trainable_groups
        bad = [names[id(p)] for p in params if p.requires_grad != want]
        if bad:
            state = "frozen" if want else "trainable"
            wrong.append(f"group '{group}' should be {'trainable' if want else 'frozen'} but {len(bad)} tensors are "
                         f"{state} (e.g. {bad[0]})")
    if wrong:
        raise FreezeError(f"Stage '{plan.stage}': " + "; ".join(wrong))
    if not any(p.requires_grad for p in model.parameters()):
        raise FreezeError(f"Stage '{plan.stage}' has no trainable parameter")


def optimizer_groups(model: nn.Module, plan: StagePlan, weight_decay: float) -> list[dict[str, object]]:
    """AdamW parameter groups: one per (trainable group, decay or not); matrices decay, biases and norms do not."""
    groups = model_param_groups(model)
    out: list[dict[str, object]] = []
    for group in plan.trainable_groups:
        params = [p for p in groups[group] if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        lr = plan.group_lr[group]
        if decay:
            out.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": group})
        if no_decay:
            out.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{group}.no_decay"})
    return out


def trainable_state_keys(model: nn.Module, groups: Iterable[str]) -> set[str]:
    """State-dict keys of the parameters in ``groups`` (what a trainable-only checkpoint stores)."""
    wanted = {id(p) for g, ps in model_param_groups(model).items() if g in set(groups) for p in ps}
    return {n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in wanted}


def count_params(model: nn.Module) -> dict[str, int]:
    return {
        "total_params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


@torch.no_grad()
def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter (for tests that check which tensors a step changed)."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}
