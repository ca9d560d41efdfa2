"""Can the world LM learn a task format from text alone? Pretrain an LM on that one format and report its QA.

A bridge cannot beat the LM's text-only ceiling, so a format has to be learnable from captions before any bridge is
trained on it (issue 10, "tasks that transfer"). This trains the world LM's architecture and recipe
(``LMPretrainConfig`` defaults) on one task's documents with the given ``TaskOptions`` and prints, as JSON, the
text-only exact match per question type on held-out samples::

    python -m experiments.world.learnability --task spatial --objects 2 --option spatial_ask_by=shape --steps 5000

Nothing is cached: it is a measurement, not a world backbone (``world=<name>`` configs build those).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch
import yaml

from experiments.world.pretrain_lm import LMPretrainConfig, pretrain_lm
from experiments.world.scenes import WorldConfig


def measure(task: str, options: dict, steps: int, seed: int = 0, objects: int = 1, layers: int = 2) -> dict:
    """Text-only QA of an LM of ``layers`` layers pretrained ``steps`` steps on ``task`` alone (warm-up: the first
    fifth)."""
    cfg = LMPretrainConfig(
        tasks=[task], spatial_objects=[objects], steps=steps, single_steps=steps // 5, task_options=options,
        gate_tasks=[task], max_extra_rounds=0, seed=seed, num_layers=layers,
    )
    start = time.perf_counter()
    model, quality = pretrain_lm(cfg, WorldConfig(), progress=False)
    return {"task": task, "objects": objects, "options": options, "steps": steps, "seed": seed,
            "layers": model.config.num_hidden_layers, "seconds": round(time.perf_counter() - start, 1),
            "text_qa": quality["text_qa"]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--objects", type=int, default=1, help="objects of spatial documents (1 or 2)")
    parser.add_argument("--option", action="append", default=[], help="a TaskOptions field, KEY=VALUE (YAML value)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=2, help="LM layers (the world LM has 2; world=deep 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the result depends on it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--option {item!r}: expected KEY=VALUE, e.g. spatial_ask_by=shape")
        options[key] = yaml.safe_load(value)
    report = measure(args.task, options, args.steps, args.seed, args.objects, args.layers)
    print(json.dumps({**report, "threads": args.threads}))


if __name__ == "__main__":
    main()
