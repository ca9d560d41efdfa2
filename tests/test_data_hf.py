"""``data=hf``: save_to_disk folders and parquet files, column mapping, VQA answers, splits, tasks by column."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import datasets
import pytest
from PIL import Image

from encoders.registry import ConfigError
from experiments.data.samples import DataError
from experiments.harness.data import DATA_SOURCES, TaskData

def png(level: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 4), (level, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def vqa_rows(n: int, offset: int = 0) -> dict[str, list[Any]]:
    return {
        "qid": [f"q{offset + i}" for i in range(n)],
        "img": [{"bytes": png(10 * (offset + i)), "path": None} for i in range(n)],
        "q": [f"what is {offset + i}?" for i in range(n)],
        "a": [str(offset + i) for i in range(n)],
        "answers": [[str(offset + i)] * 9 + ["other"] for i in range(n)],
    }


def dataset(rows: dict[str, list[Any]]) -> Any:
    features = datasets.Features({
        "qid": datasets.Value("string"), "img": datasets.Image(), "q": datasets.Value("string"),
        "a": datasets.Value("string"), "answers": datasets.List(datasets.Value("string")),
    })
    return datasets.Dataset.from_dict(rows, features=features)


COLUMNS = {"image": "img", "question": "q", "answer": "a", "id": "qid", "answers": "answers"}


def build(**cfg: Any) -> TaskData:
    entry, config = DATA_SOURCES.make_config({"name": "experiments.data.hf:hf", **cfg})
    return entry.cls(config, None).build(0)


def test_save_to_disk_dict_with_column_mapping_and_vqa_answers(tmp_path: Path) -> None:
    splits = {"train": dataset(vqa_rows(6)), "test": dataset(vqa_rows(3, 100))}
    datasets.DatasetDict(splits).save_to_disk(tmp_path / "d")
    data = build(path=str(tmp_path / "d"), columns=COLUMNS, task="vqav2", metric="vqa_accuracy", image_aspect="pad",
                 pad_colour=[0, 0, 0])
    assert {t: len(p) for t, p in data.train.items()} == {"vqav2": 6}
    assert {t: len(p) for t, p in data.eval.items()} == {"vqav2": 3}
    s = data.train["vqav2"][2]
    assert s["text"] == "<image>\nwhat is 2?" and s["answer"] == "2"  # a marker is added in front, LLaVA-style
    assert s["images"][0].shape == (3, 6, 6) and round(float(s["images"][0][0, 3, 3]) * 255) == 20
    assert s["meta"]["answers"] == ["2"] * 9 + ["other"] and s["meta"]["metric"] == "vqa_accuracy"
    record = data.eval["vqav2"].record(1)
    assert record["meta"]["id"] == "q101" and "images" not in record


def test_parquet_files_and_a_held_out_fraction(tmp_path: Path) -> None:
    dataset(vqa_rows(10)).to_parquet(str(tmp_path / "part-0.parquet"))
    data = build(path=str(tmp_path / "*.parquet"), columns=COLUMNS, eval_fraction=0.2)
    assert len(data.train["hf"]) == 8 and len(data.eval["hf"]) == 2
    train_ids = {data.train["hf"].record(i)["meta"]["id"] for i in range(8)}
    eval_ids = {data.eval["hf"].record(i)["meta"]["id"] for i in range(2)}
    assert not train_ids & eval_ids and len(train_ids | eval_ids) == 10
    assert data.train["hf"][0]["images"][0].shape == (3, 6, 6)


def test_conversations_column_and_errors(tmp_path: Path) -> None:
    conv = [[{"from": "human", "value": "<image> hi"}, {"from": "gpt", "value": "hello"}]]
    turn = {"from": datasets.Value("string"), "value": datasets.Value("string")}
    features = datasets.Features({"image": datasets.Image(), "conversations": datasets.List(turn)})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": png(1), "path": None}], "conversations": conv},
                                    features=features)
    ds.save_to_disk(tmp_path / "c")
    s = build(path=str(tmp_path / "c")).train["hf"][0]
    assert s["text"] == "<image> hi" and s["answer"] == "hello" and len(s["images"]) == 1
    wrong = build(path=str(tmp_path / "c"), columns={"conversations": None, "question": "q"})
    with pytest.raises(DataError, match="set data.columns to this dataset's names"):
        wrong.train["hf"][0]
    with pytest.raises(ConfigError, match="data.split 'validation' is not a split"):
        datasets.DatasetDict({"train": ds}).save_to_disk(tmp_path / "dd")
        build(path=str(tmp_path / "dd"), split="validation")


def test_tasks_by_column(tmp_path: Path) -> None:
    rows = vqa_rows(6)
    rows["kind"] = ["a", "b", "a", "b", "b", "a"]
    ds = dataset({k: v for k, v in rows.items() if k != "kind"}).add_column("kind", rows["kind"])
    ds.save_to_disk(tmp_path / "t")
    data = build(path=str(tmp_path / "t"), columns=COLUMNS, task_field="kind")
    assert list(data.train) == ["a", "b"]
    assert [data.train["b"][i]["answer"] for i in range(3)] == ["1", "3", "4"]
    assert json.dumps(data.info["a"]["metric"]) == '"exact_match"'
