"""Tiny stand-ins for the harness tests: a colour-question data source (registered as ``_toy_colours``).

Imported by the ``test_harness_*`` files (and, in spawned DDP children, through ``plugins: [harness_toy]``).
Images are 16x16 squares of one of four colours; the question asks for the colour, the answer is one word.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from experiments.harness.data import DATA_SOURCES, DataSource, TaskData

COLOURS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 1.0, 0.1), "blue": (0.1, 0.1, 1.0), "white": (1.0, 1.0, 1.0)}


@dataclass
class ToyConfig:
    """Sizes of the toy data (train samples per task, eval samples per task, image side)."""

    n_train: int = 64
    n_eval: int = 8
    size: int = 16
    pair_task: bool = True


def _image(colour: str, size: int, gen: torch.Generator) -> torch.Tensor:
    img = torch.rand(3, size, size, generator=gen) * 0.1
    img[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = torch.tensor(COLOURS[colour])[:, None, None]
    return img


def _samples(n: int, seed: int, size: int, pair: bool) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(seed)
    names = list(COLOURS)
    out = []
    for _ in range(n):
        a, b = (names[int(i)] for i in torch.randint(len(names), (2,), generator=gen))
        if pair:
            text = "<image> <image> same colour ? answer :"
            out.append({"text": text, "images": [_image(a, size, gen), _image(b, size, gen)],
                        "answer": "yes" if a == b else "no",
                        "meta": {"qtype": "same", "choices": ["yes", "no"], "image_answers": [None, None]}})
        else:
            out.append({"text": "<image> colour ? answer :", "images": [_image(a, size, gen)], "answer": a,
                        "meta": {"qtype": "colour", "choices": names, "image_answers": [a]}})
    return out


if "_toy_colours" not in DATA_SOURCES:

    @DATA_SOURCES.register("_toy_colours", ToyConfig)
    class ToyColours(DataSource):
        def build(self, seed: int) -> TaskData:
            c = self.config
            train = {"colour": _samples(c.n_train, 1000 + seed, c.size, False)}
            evals = {"colour": _samples(c.n_eval, 5000, c.size, False)}
            if c.pair_task:
                train["pair"] = _samples(c.n_train, 2000 + seed, c.size, True)
                evals["pair"] = _samples(c.n_eval, 6000, c.size, True)
            return TaskData(train, evals, info={"colour": {"text_ceiling": 1.0}})


def toy_config(**overrides: Any) -> dict[str, Any]:
    """A complete tiny run config (tiny ViT, tiny Llama, MLP bridge, toy data, 4 steps)."""
    cfg: dict[str, Any] = {
        "name": "toy",
        "seed": 0,
        "plugins": ["harness_toy"],
        "encoder": "tiny_vit",
        "llm": "tiny_llama",
        "bridge": {"name": "mlp"},
        "data": {"name": "_toy_colours"},
        "stages": {"align": {"trainable": ["bridge*"], "lr": 3e-3, "max_steps": 4, "warmup_ratio": 0.25}},
        "train": {"effective_batch_size": 8, "log_every_n_steps": 1, "checkpoint_every_n_steps": 0},
        "trainer": {"loggers": [], "progress_bar": False},
        "eval": {"batch_size": 8, "max_new_tokens": 3},
        "efficiency": {"skip_steps": 1},
    }
    for key, value in overrides.items():
        node = cfg
        *head, last = key.split(".")
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg

