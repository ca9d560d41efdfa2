"""``data=mixture``: weighted sources keep their tasks, metrics and evaluation pools; lazy tasks in the DataModule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from encoders.registry import ConfigError
from experiments.harness.data import DATA_SOURCES, TaskData
from experiments.harness.datamodule import EvalSet, TrainStream


def llava_file(folder: Path, name: str, n: int) -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        Image.new("RGB", (4, 4), (i, i, i)).save(folder / "img" / f"{name}{i}.png")
        records.append({"id": f"{name}{i}", "image": f"img/{name}{i}.png", "conversations": [
            {"from": "human", "value": "<image> q"}, {"from": "gpt", "value": f"{name}{i}"}]})
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def build(mixture: dict[str, Any], seed: int = 0) -> TaskData:
    entry, config = DATA_SOURCES.make_config({"name": "experiments.data.mixture:mixture", "mixture": mixture})
    return entry.cls(config, None).build(seed)


def test_weights_tasks_and_metrics_of_each_source(tmp_path: Path) -> None:
    llava = "experiments.data.llava:llava"
    data = build({
        "m3w": {"name": llava, "path": str(llava_file(tmp_path, "a", 10)), "image_folder": str(tmp_path),
                "weight": 1.0, "eval_fraction": 0.2},
        "align": {"name": llava, "path": str(llava_file(tmp_path, "b", 5)), "image_folder": str(tmp_path),
                  "weight": 0.2, "metric": "caption", "eval_fraction": 0.4},
        "world": {"name": "experiments.world.datasource:world", "tasks": ["attribute", "compare"], "train_size": 4,
                  "eval_size": 2, "text_ceiling": False, "weight": 0.5},
    })
    assert list(data.train) == ["m3w", "align", "world/attribute", "world/compare"]
    assert data.weights == {"m3w": 1.0, "align": 0.2, "world/attribute": 0.25, "world/compare": 0.25}
    assert set(data.eval) == {"m3w", "align", "world/attribute", "world/compare"}
    assert data.info["align"]["metric"] == "caption" and data.info["m3w"]["metric"] == "exact_match"
    assert data.eval["align"].record(0)["meta"]["metric"] == "caption"

    stream = TrainStream(data.train, batch_size=2, collate=list, seed=0, weights=data.weights)
    choice, _ = stream.schedule(20000)
    share = np.bincount(choice, minlength=4) / len(choice)
    assert np.allclose(share, np.array([1.0, 0.2, 0.25, 0.25]) / 1.7, atol=0.01)


def test_mixture_errors_name_the_entry(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.mixture is empty"):
        build({})
    with pytest.raises(ConfigError, match=r"data\.mixture\.bad\.pth"):
        build({"bad": {"name": "experiments.data.llava:llava", "pth": "x"}})


class CountingPool:
    """A lazy map-style task that counts the samples it is asked for."""

    def __init__(self, n: int) -> None:
        self.n, self.asked = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.asked += 1
        return {"text": "t", "answer": str(i), "meta": {}}

    def record(self, i: int) -> dict[str, Any]:
        return {"text": "t", "answer": str(i), "meta": {"light": True}}


def test_datamodule_reads_lazy_tasks_by_index_only() -> None:
    pool = CountingPool(1_000_000)
    stream = iter(TrainStream({"big": pool}, batch_size=4, collate=list, seed=0))
    batch = next(stream)
    assert len(batch) == 4 and pool.asked == 4  # never copied into a list
    evalset = EvalSet(pool, limit=10)
    assert len(evalset) == 10 and evalset[3]["meta"]["eval_index"] == 3 and pool.asked == 5
    assert evalset.samples[2]["meta"] == {"light": True, "eval_index": 2} and pool.asked == 5  # no media decoded
