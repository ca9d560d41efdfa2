"""``bridgelab``: the command line of the toolkit.

Commands::

    bridgelab train [OVERRIDES...]        one run (Hydra overrides, e.g. experiment=smoke bridge=qformer seed=1)
    bridgelab sweep [OVERRIDES...]        a multirun, e.g. bridge=mlp,qformer seed=0,1 launcher=joblib
    bridgelab demo  [OVERRIDES...]        the quick ablation (every bridge x tasks x 3 seeds), then its table and plots
    bridgelab table RUNS_DIR [--format markdown|latex]   mean +- std over seeds per bridge and task
    bridgelab report RUNS_DIR [--out DIR]  a sweep's table.md (with separation), scores.csv and plots
    bridgelab params [--tolerance 0.01]   each paper preset built on the meta device vs its published size
    bridgelab params OVERRIDES...         trainable params of each bridge of a sweep, e.g. experiment=matched_params
    bridgelab eval RUN_DIR [data=...] [eval.tasks=...] [--out DIR]   score a run without training
    bridgelab export-world DIR --format llava|webdataset|hf [--tasks T ...]   the world's tasks as released datasets

``run_dir=PATH`` puts a run (or a sweep's runs) in PATH. Rerunning a run continues it from its last checkpoint;
rerunning a sweep skips its finished members. ``bridgelab train --cfg job`` prints the composed config, and
``bridgelab train --help`` lists the config groups and their options (Hydra's own flags work after the command).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

COMMANDS = ("train", "sweep", "demo", "table", "report", "params", "eval", "export-world")


def _usage() -> str:
    return __doc__.split("Commands::", 1)[1].split("``run_dir", 1)[0].rstrip()


def _table(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="bridgelab table", description="Results table of the runs under RUNS_DIR")
    parser.add_argument("runs_dir")
    parser.add_argument("--format", choices=("markdown", "latex"), default="markdown")
    args = parser.parse_args(list(argv))
    from experiments.analysis.sweep_report import results_table

    try:
        print(results_table(args.runs_dir, args.format))
    except (ValueError, FileNotFoundError) as err:
        print(f"bridgelab table: {err}", file=sys.stderr)
        return 1
    return 0


def _params(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="bridgelab params", description="Paper presets vs their published sizes; "
                                     "with OVERRIDES, the trainable parameters of each member of that sweep")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="relative difference allowed (presets: default 0.01; OVERRIDES: tags.param_tolerance)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=matched_params")
    args = parser.parse_args(list(argv))
    if args.overrides:
        from experiments.harness.run_params import members_report

        text, ok = members_report(args.overrides, args.tolerance)
        print(text)
        return 0 if ok else 1
    from experiments.harness.params import params_report

    text, ok = params_report(0.01 if args.tolerance is None else args.tolerance)
    print(text)
    return 0 if ok else 1


def _demo(argv: Sequence[str]) -> int:
    from experiments.analysis.sweep_report import write_sweep_report
    from experiments.harness.app import launch
    from experiments.harness.config import compose

    overrides = ["experiment=quick_ablation", *argv]
    status = launch(overrides, multirun=True)
    plain = [o for o in overrides if "," not in o.partition("=")[2] and not o.startswith(("hydra", "--"))]
    write_sweep_report(str(compose(plain).run_dir))
    return status


def _report(argv: Sequence[str]) -> int:
    from experiments.analysis.sweep_report import STUDY_PLOTS, STUDY_SCORE_COLUMNS, write_sweep_report

    parser = argparse.ArgumentParser(prog="bridgelab report", description="table.md, scores.csv and plots of a sweep")
    parser.add_argument("runs_dir")
    parser.add_argument("--out", default=None, help="folder for the files (default: RUNS_DIR itself)")
    args = parser.parse_args(list(argv))
    try:
        write_sweep_report(args.runs_dir, args.out, STUDY_PLOTS, STUDY_SCORE_COLUMNS)
    except (ValueError, FileNotFoundError) as err:
        print(f"bridgelab report: {err}", file=sys.stderr)
        return 1
    return 0


def _quiet_model_loading() -> None:
    """transformers 5 draws a progress bar for every from_pretrained; a sweep loads the world LM once per run."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()


def _interruptible(command: str, rest: Sequence[str]) -> int:
    """train/sweep/demo with SIGTERM/SIGINT ending them as interrupted: exit 128 + signal, rerun resumes."""
    from experiments.harness.app import launch
    from experiments.harness.signals import RunInterrupted, interrupt_on_signals

    try:
        with interrupt_on_signals():
            return _demo(rest) if command == "demo" else launch(rest, multirun=command == "sweep")
    except RunInterrupted as err:
        print(f"bridgelab {command}: {err}. The running run is recorded as interrupted; run the same command again "
              "to resume it.", file=sys.stderr)
        return err.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bridgelab`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(f"usage: bridgelab COMMAND [ARGS...]\n{_usage()}")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"bridgelab: unknown command '{command}'. Commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _quiet_model_loading()
    from encoders.registry import ConfigError, RegistryError

    try:
        if command in ("train", "sweep", "demo"):
            return _interruptible(command, rest)
        if command == "table":
            return _table(rest)
        if command == "report":
            return _report(rest)
        if command == "export-world":
            from experiments.world.export import main as export_main

            return export_main(rest)
        if command == "eval":
            from experiments.evaluation.command import main as eval_main

            return eval_main(rest)
        return _params(rest)
    except (ConfigError, RegistryError) as err:
        print(f"bridgelab {command}: configuration error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
