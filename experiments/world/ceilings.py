"""Reference levels of the world's tasks: chance, majority, "answer from a random image", text-only ceiling.

A bridge score means little alone (WORLD_PROTOTYPE.md): the frozen LM can do no better than it does with the true
captions in the media slots (the *text-only ceiling*), and on multi-image tasks a model that answers about a
uniformly drawn image instead of the right one already scores the *random-image* level.

* ``chance``: mean over samples of ``1 / len(choices)`` (uniform guessing among the possible answers);
* ``majority``: the share of the most frequent answer (a constant guess, known answer distribution);
* ``random_image``: mean over samples of the share of media items whose own answer equals the answer
  (``None`` for single-image tasks and for tasks where it does not apply, e.g. yes/no comparison);
* ``text_ceiling``: greedy exact match of the world LM on the text-only prompt (:func:`text_only_correct`).

``python -m experiments.world.ceilings [--world full]`` prints the table for a (cached) world's LM.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments.world.scenes import WorldConfig
from experiments.world.tasks import TASKS, Sample, TaskOptions, generate_samples, text_only_prompt

SampleLike = Sample | Mapping[str, Any]


def _parts(sample: SampleLike) -> tuple[str, str, dict]:
    if isinstance(sample, Sample):
        return sample.text, sample.answer, sample.meta
    return sample["text"], sample["answer"], sample["meta"]


def baselines(samples: Sequence[SampleLike]) -> dict[str, float | None]:
    """Chance, majority and random-image levels of a list of samples."""
    answers = [_parts(s)[1] for s in samples]
    metas = [_parts(s)[2] for s in samples]
    per_image = []
    for answer, meta in zip(answers, metas):
        image_answers = meta.get("image_answers") or []
        if len(image_answers) > 1 and any(a is not None for a in image_answers):
            per_image.append(np.mean([a == answer for a in image_answers]))
    return {
        "chance": float(np.mean([1.0 / len(m["choices"]) for m in metas])),
        "majority": Counter(answers).most_common(1)[0][1] / len(answers),
        "random_image": float(np.mean(per_image)) if len(per_image) == len(samples) else None,
    }


def text_only_correct(model: Any, samples: Sequence[SampleLike]) -> list[bool]:
    """Whether the LM answers each sample right from its text-only prompt (true captions in the slots)."""
    from experiments.world.pretrain_lm import greedy_answers  # imports transformers: only when a model is given

    prompts = [text_only_prompt(s) for s in samples]
    return [p == _parts(s)[1] for p, s in zip(greedy_answers(model, prompts), samples)]


def task_report(model: Any, samples: Sequence[SampleLike]) -> dict[str, Any]:
    """All reference levels of one task's samples, overall and per question type."""
    correct = text_only_correct(model, samples) if model is not None else None
    by_type: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_type[_parts(s)[2]["qtype"]].append(i)
    per_type = {}
    for qtype, idx in sorted(by_type.items()):
        entry = {"n": len(idx), **baselines([samples[i] for i in idx])}
        if correct is not None:
            entry["text_ceiling"] = float(np.mean([correct[i] for i in idx]))
        per_type[qtype] = entry
    report: dict[str, Any] = {"n": len(samples), **baselines(samples), "per_qtype": per_type}
    if correct is not None:
        report["text_ceiling"] = float(np.mean(correct))
    return report


def ceiling_table(
    model: Any,
    tasks: Sequence[str] = TASKS,
    n: int = 400,
    seed: int = 0,
    options: Mapping[str, TaskOptions] | None = None,
    world: WorldConfig | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`task_report` for ``n`` test samples of each task (``options`` per task, default ``TaskOptions()``)."""
    options = options or {}
    return {
        task: task_report(model, generate_samples(task, "test", n, seed, options.get(task), world)) for task in tasks
    }


def markdown(table: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table of :func:`ceiling_table` (one row per task and question type)."""

    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = ["| task | qtype | n | chance | majority | random image | text ceiling |", "|---|---|---|---|---|---|---|"]
    for task, rep in table.items():
        for qtype, r in rep["per_qtype"].items():
            cells = [fmt(r["chance"]), fmt(r["majority"]), fmt(r["random_image"]), fmt(r.get("text_ceiling"))]
            lines.append(f"| {task} | {qtype} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    from experiments.world.backbones import build_world_backbones

    parser = argparse.ArgumentParser(description="Reference levels of the embedded world's tasks")
    parser.add_argument("--n", type=int, default=400, help="test samples per task")
    parser.add_argument("--distractor-n", type=int, nargs="*", default=[2, 4, 8], help="distractor image counts")
    parser.add_argument("--world", default="default", help="option of the world/ config group (default, full, tiny)")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    from experiments.harness.config import compose, to_container

    config = {**to_container(compose([f"world={args.world}"]).world), "components": ["lm"]}
    world = build_world_backbones(config, cache_dir=args.cache_dir)
    model = world.lm()
    table = ceiling_table(model, [t for t in TASKS if t != "distractor"], args.n, world=world.config.world)
    for k in args.distractor_n:
        opts = {"distractor": TaskOptions(distractor_n=k)}
        rows = ceiling_table(model, ["distractor"], args.n, options=opts, world=world.config.world)
        table[f"distractor_n{k}"] = rows["distractor"]
    print(markdown(table))


if __name__ == "__main__":
    main()
