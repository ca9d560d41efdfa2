"""``bridgelab eval RUN_DIR [data=...] [data.KEY=...] [eval.KEY=...] [--out DIR] [--device cpu]``.

Scores a finished or partly trained run without training: the model is rebuilt from the run directory
(:func:`~experiments.harness.loading.load_run`: the last finished stage's weights, else an unfinished stage's
``last.ckpt``), the data come from the run's own data config with the overrides applied (``data=OPTION`` picks
another data source, e.g. ``data=llava data.path=...``), and ``eval.*`` overrides change how it is scored
(``eval.tasks``, ``eval.mode=generate|loglikelihood``, ``eval.limit``, ``eval.batch_size``, ``eval.max_new_tokens``).

Results go to ``RUN_DIR/eval/<task>/{predictions.jsonl,scores.json}``, or with ``--out DIR`` to ``DIR/eval/...``
beside a copy of the run's ``run.json`` (its ``evaluated_from`` naming the run) and ``efficiency.json``, so that
``load_runs`` reads an ``--out`` directory like any run. Each evaluation is appended to ``evaluations`` in the
``run.json`` written.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from encoders.registry import ConfigError

ALLOWED = ("data", "eval")


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str], list[str], list[str]]:
    """``(data group choice, data.* overrides, eval.* overrides, hydra.* overrides)``; anything else is refused."""
    group, data, evaluation, hydra = [], [], [], []
    for item in overrides:
        key = item.partition("=")[0].lstrip("+~")
        if "=" not in item:
            raise ConfigError(f"bridgelab eval: '{item}' is not an override KEY=VALUE (e.g. eval.mode=loglikelihood).")
        if key == "data":
            group.append(item)
        elif key.startswith("data."):
            data.append(item)
        elif key.startswith("eval."):
            evaluation.append(item)
        elif key.startswith("hydra."):
            hydra.append(item)
        else:
            raise ConfigError(
                f"bridgelab eval takes only data=OPTION, data.KEY=VALUE and eval.KEY=VALUE overrides; got '{item}'. "
                "The model (encoder, bridge, LM, world, weights) comes from the run directory as it was trained."
            )
    return group, data, evaluation, hydra


def _dotlist(items: Sequence[str], prefix: str) -> dict[str, Any]:
    tree = OmegaConf.to_container(OmegaConf.from_dotlist([i.lstrip("+") for i in items]), resolve=True)
    return dict(tree.get(prefix, {})) if isinstance(tree, dict) else {}


def eval_config(trained: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """The run's resolved config dict with the ``data``/``eval`` overrides applied (validated by the caller)."""
    from experiments.harness.config import compose

    group, data, evaluation, hydra = split_overrides(overrides)
    config = dict(trained)
    if group:
        composed = compose([*hydra, *group, *data])
        config["data"] = OmegaConf.to_container(composed.data, resolve=True)
    elif data:
        merged = OmegaConf.merge(OmegaConf.create(config.get("data") or {}), _dotlist(data, "data"))
        config["data"] = OmegaConf.to_container(merged, resolve=True)
    if evaluation:
        merged = OmegaConf.merge(OmegaConf.create(config.get("eval") or {}), _dotlist(evaluation, "eval"))
        config["eval"] = OmegaConf.to_container(merged, resolve=True)
    return config


def _output_dir(run_dir: Path, out: Path | None, record: dict[str, Any]) -> Any:
    from experiments.harness.rundir import RunDir

    if out is None or out.resolve() == run_dir.resolve():
        return RunDir(run_dir)
    target = RunDir(out)
    target.path.mkdir(parents=True, exist_ok=True)
    previous = target.read() if target.exists() else {}
    target.update(**{**record, "evaluations": previous.get("evaluations", []), "evaluated_from": str(run_dir)})
    source = RunDir(run_dir).efficiency_file
    if source.exists():
        shutil.copyfile(source, target.efficiency_file)
    return target


def evaluate_run(
    run_dir: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None, device: str = "cpu"
) -> dict[str, dict[str, Any]]:
    """Score the run in ``run_dir`` (see the module docstring); the scores by task."""
    import lightning as L

    from experiments.evaluation.scoring import check_mode, evaluate_tasks
    from experiments.harness.build import build_data, build_world
    from experiments.harness.config import config_dict, validate_config
    from experiments.harness.loading import load_run
    from experiments.harness.rundir import RunDir, now_iso

    run_dir = Path(run_dir)
    if not RunDir(run_dir).exists():
        raise ConfigError(f"bridgelab eval: {run_dir} holds no run.json; give the directory of a run (run_dir=...).")
    loaded = load_run(run_dir, device=device)
    config = validate_config(eval_config(config_dict(loaded.config), overrides))
    check_mode(config.eval.mode)
    L.seed_everything(config.seed, workers=True, verbose=False)
    data = build_data(config, build_world(config))
    tasks = data.select_eval(config.eval.tasks, "eval.tasks")
    target = _output_dir(run_dir, Path(out) if out is not None else None, loaded.record)
    checkpoint = str(loaded.checkpoint.relative_to(run_dir)) if loaded.checkpoint is not None else None
    data_name = (config_dict(config).get("data") or {}).get("name")
    results = evaluate_tasks(
        loaded.model, loaded.collate, tasks, target, info=data.info, mode=config.eval.mode,
        batch_size=config.eval.batch_size, max_new_tokens=config.eval.max_new_tokens, limit=config.eval.limit,
        extra={"checkpoint": checkpoint, "data": data_name},
    )
    entry = {"at": now_iso(), "checkpoint": checkpoint, "data": data_name, "mode": config.eval.mode,
             "overrides": list(overrides), "tasks": {t: s["score"] for t, s in results.items()}}
    target.update(evaluations=[*(target.read().get("evaluations") or []), entry])
    return results


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bridgelab eval", description="Score a (finished or partly trained) run without training"
    )
    parser.add_argument("run_dir")
    parser.add_argument("overrides", nargs="*", help="data=OPTION, data.KEY=VALUE, eval.KEY=VALUE")
    parser.add_argument("--out", default=None, help="write eval/<task>/ here instead of into RUN_DIR")
    parser.add_argument("--device", default="cpu", help="torch device to evaluate on (default cpu)")
    args = parser.parse_args(list(argv))
    results = evaluate_run(args.run_dir, args.overrides, args.out, args.device)
    for task, scores in results.items():
        print(f"{task}: {scores['metric']} {scores['score']:.4f} (n={scores['n']}, mode={scores['mode']})")
    return 0
