"""Trainable parameters of the runs a composed config would start, without training or the world's cached weights.

``bridgelab params experiment=matched_params`` (or ``python -m experiments.harness.run_params OVERRIDES...``)
composes the config of each sweep member (``compose([*overrides, f"bridge={name}"])``), builds its model through
the harness's own builder (:func:`experiments.harness.build.build_model`, so ``by_bridge`` fragments, the world's
encoder/LM specs and the new-token rows are exactly a run's) and applies the first stage's policy
(:func:`experiments.harness.stages.apply_stage`): the count is what ``run.json``'s stage table and
``efficiency.json``'s ``trainable_params`` report for a single-stage run.

The world's backbones are built at their configured architecture (ViT, ConvNeXt expert, Llama LM and the world
tokenizer) but randomly initialised and never pretrained or cached: a parameter count does not depend on weights,
and counting must not wait for an hour of pretraining.

A config may state a budget in ``tags.param_target`` (and ``tags.param_tolerance``, default 0.1): the report then
marks every member outside ``target * (1 +- tolerance)`` and the command fails.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from encoders.registry import ConfigError
from experiments.harness.config import RunConfig, compose, is_sweep_value, validate_config

DEFAULT_TOLERANCE = 0.1


@contextlib.contextmanager
def random_world(world_cfg: Any) -> Iterator[Any]:
    """The world's backbones (:class:`experiments.world.backbones.WorldBackbones`) at the architecture of
    ``world_cfg``, randomly initialised: the encoder specs carry no weights, the LM directory (a temporary one,
    removed on exit) holds a fresh ``LlamaForCausalLM`` and the world tokenizer, as a pretrained world's does."""
    from experiments.world.backbones import LM_META_FILE, WorldBackbones, as_config
    from experiments.world.pretrain_lm import build_lm
    from experiments.world.pretrain_vision import backbone_spec, create_expert, create_vit
    from experiments.world.vocab import build_tokenizer

    cfg = as_config(world_cfg)
    with tempfile.TemporaryDirectory(prefix="bridgelab-params-") as tmp:
        lm_dir = Path(tmp) / "lm"
        build_lm(cfg.lm).save_pretrained(str(lm_dir))
        build_tokenizer().save_pretrained(str(lm_dir))
        (lm_dir / LM_META_FILE).write_text(json.dumps({"chat_template": "none", "new_tokens": []}))
        yield WorldBackbones(
            vit_spec=backbone_spec("timm_vit", cfg.vit, None, create_vit(cfg.vit)),
            expert_spec=backbone_spec("timm_convnet", cfg.expert, None, create_expert(cfg.expert)),
            lm_dir=str(lm_dir),
            tokenizer=build_tokenizer(),
            quality={},
            config=cfg,
            dirs={},
            built={},
        )


def run_trainable_params(run: RunConfig, world: Any = None) -> dict[str, Any]:
    """``{"bridge", "stage", "trainable_params", "groups": {group: params}}`` of the first stage of ``run``.

    ``world``: backbones to resolve ``{world: ...}`` specs with; ``None`` builds :func:`random_world` from
    ``run.world`` (a run without a world builds its encoder and LM specs as they are).
    """
    from experiments.harness.build import build_model
    from experiments.harness.stages import apply_stage

    if world is None and run.world is not None:
        with random_world(run.world) as fresh:
            return run_trainable_params(run, fresh)
    model = build_model(run, world)
    stage_name, stage = next(iter(run.stages.items()))
    plan = apply_stage(model, stage_name, stage)
    return {
        "bridge": model.bridge.registry_name,
        "stage": stage_name,
        "trainable_params": plan.trainable_params,
        "groups": {r.group: r.params for r in plan.rows if r.trainable and r.params},
    }


def sweep_bridges(overrides: Sequence[str]) -> list[str]:
    """The bridges the sweep of ``overrides`` would run: a ``bridge=a,b`` override, else the config's
    ``hydra.sweeper.params.bridge``, else the one composed bridge."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key == "bridge":
            return [v.strip() for v in value.split(",")]
    cfg = compose([o for o in overrides if not is_sweep_value(o.partition("=")[2])], with_hydra=True)
    swept = cfg.hydra.get("sweeper", {}).get("params", {}) or {}
    if "bridge" in swept:
        return [v.strip() for v in str(swept["bridge"]).split(",")]
    return [str(cfg.bridge.name)]


def member_rows(overrides: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One record per swept bridge (see :func:`run_trainable_params`) and the config's ``tags``.

    Other sweep axes (``seed=0,1``) take their first value: they do not change a model's size."""
    plain = [o for o in overrides if not o.startswith("bridge=") and not is_sweep_value(o.partition("=")[2])]
    rows: list[dict[str, Any]] = []
    tags: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        worlds: dict[str, Any] = {}  # one random world per distinct world config
        for name in sweep_bridges(overrides):
            run = validate_config(compose([*plain, f"bridge={name}"]))
            tags = dict(run.tags)
            world = None
            if run.world is not None:
                key = json.dumps(run.world, sort_keys=True, default=str)
                if key not in worlds:
                    worlds[key] = stack.enter_context(random_world(run.world))
                world = worlds[key]
            try:
                rows.append(run_trainable_params(run, world))
            except (ConfigError, ValueError) as err:
                rows.append({"bridge": name, "stage": None, "trainable_params": None, "groups": {},
                             "error": f"{type(err).__name__}: {err}"})
    return rows, tags


def budget(tags: dict[str, Any]) -> tuple[int | None, float]:
    """``(tags.param_target, tags.param_tolerance)``; the target is ``None`` when the config states none."""
    target = tags.get("param_target")
    tolerance = tags.get("param_tolerance", DEFAULT_TOLERANCE)
    if target is not None and (isinstance(target, bool) or not isinstance(target, int) or target <= 0):
        raise ConfigError(f"tags.param_target={target!r} must be a positive whole number of parameters, e.g. 100000.")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
        raise ConfigError(f"tags.param_tolerance={tolerance!r} must be a fraction in [0, 1), e.g. 0.1 for 10%.")
    return target, float(tolerance)


def members_report(overrides: Sequence[str], tolerance: float | None = None) -> tuple[str, bool]:
    """The table (bridge, trainable parameters, deviation from the target, groups) and whether every member built
    and, when the config states ``tags.param_target``, lies within the tolerance (``tolerance``, else
    ``tags.param_tolerance``, else 0.1)."""
    rows, tags = member_rows(overrides)
    target, stated = budget(tags)
    tolerance = stated if tolerance is None else tolerance
    ok = True
    lines = [f"{'bridge':<16}  {'stage':<8}  {'trainable':>10}  {'vs target':>9}  groups"]
    for r in rows:
        if r["trainable_params"] is None:
            ok = False
            lines.append(f"{r['bridge']:<16}  {'-':<8}  {'ERROR':>10}  {'':>9}  {r['error']}")
            continue
        diff, flag = "", ""
        if target is not None:
            rel = r["trainable_params"] / target - 1
            diff = f"{100 * rel:+.1f}%"
            if abs(rel) > tolerance:
                ok, flag = False, "  <-- off"
        groups = ", ".join(f"{g} {n:,}" for g, n in r["groups"].items())
        lines.append(f"{r['bridge']:<16}  {r['stage']:<8}  {r['trainable_params']:>10,}  {diff:>9}  {groups}{flag}")
    if target is None:
        lines.append(f"{len(rows)} bridge(s); the config states no tags.param_target")
    else:
        verdict = "all within" if ok else "NOT all within"
        lines.append(f"{len(rows)} bridge(s); target {target:,} trainable parameters +- {100 * tolerance:.0f}%: "
                     f"{verdict}")
    return "\n".join(lines), ok


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.harness.run_params OVERRIDES...``: print :func:`members_report`; 1 when off."""
    text, ok = members_report(list(sys.argv[1:] if argv is None else argv))
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
