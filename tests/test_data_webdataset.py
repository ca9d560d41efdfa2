"""``data=webdataset``: pairs, MMC4 / OBELICS documents, shard lists, the stream split across ranks and workers,
resumption."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from encoders.registry import ConfigError
from experiments.data.samples import DataError
from experiments.harness.data import DATA_SOURCES, SampleStream, TaskData
from experiments.harness.datamodule import TrainStream


def png(level: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (level, level, level)).save(buf, format="PNG")
    return buf.getvalue()


def level_of(image: torch.Tensor) -> int:
    return int(round(float(image.mean()) * 255))


def write_shards(folder: Path, samples: list[dict[str, Any]], per_shard: int, name: str = "shard") -> None:
    from webdataset import TarWriter

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(0, len(samples), per_shard):
        with TarWriter(str(folder / f"{name}-{k // per_shard:04d}.tar")) as sink:
            for sample in samples[k : k + per_shard]:
                sink.write(sample)


def pairs(n: int) -> list[dict[str, Any]]:
    return [{"__key__": f"p{i:04d}", "png": png(i), "txt": f"caption {i}".encode()} for i in range(n)]


def build(seed: int = 0, **cfg: Any) -> TaskData:
    entry, config = DATA_SOURCES.make_config({"name": "experiments.data.shards:webdataset", **cfg})
    return entry.cls(config, None).build(seed)


def ids(batch: list[dict[str, Any]]) -> list[str]:
    return [s["meta"]["id"] for s in batch]


def test_pairs_as_documents_or_answers_from_a_brace_list_or_a_folder(tmp_path: Path) -> None:
    write_shards(tmp_path / "s", pairs(6), per_shard=2)
    data = build(urls=f"{tmp_path}/s/shard-{{0000..0002}}.tar", shuffle_shards=False)
    stream = data.train["webdataset"]
    assert isinstance(stream, SampleStream) and len(stream) == 6
    first = stream[0]
    assert first["text"] == "<image> caption 0" and "answer" not in first  # a plain document: loss on all text
    assert level_of(first["images"][0]) == 0 and first["meta"]["id"] == "p0000"
    answer = build(urls=str(tmp_path / "s"), pair_format="answer", caption_prompt="describe").train["webdataset"][4]
    assert answer["text"] == "<image> describe" and answer["answer"] == "caption 4"
    with pytest.raises(ConfigError, match="1 shard\\(s\\) not found, e.g. .*shard-0003.tar"):
        build(urls=f"{tmp_path}/s/shard-{{0000..0003}}.tar")
    with pytest.raises(ConfigError, match="holds no .tar shards"):
        build(urls=str(tmp_path))


def test_obelics_and_mmc4_documents_place_images_where_they_belong(tmp_path: Path) -> None:
    layout = {"texts": [None, "a cat.", None, "a dog."], "images": ["0.png", None, "1.png", None]}
    obelics = {"__key__": "doc1", "0.png": png(10), "1.png": png(20), "json": json.dumps(layout)}
    mmc4 = {"__key__": "doc2", "json": json.dumps({
        "text_list": ["first sentence.", "second sentence."],
        "image_info": [{"image_base64": base64.b64encode(png(30)).decode(), "matched_text_index": 1}]})}
    remote = {"__key__": "doc3", "json": json.dumps({"texts": [None, "x"], "images": ["https://e.org/a.jpg", None]})}
    write_shards(tmp_path / "d", [obelics, mmc4, remote], per_shard=3)
    stream = build(urls=str(tmp_path / "d")).train["webdataset"]
    doc = stream[0]
    assert doc["text"] == "<image> a cat. <image> a dog." and [level_of(i) for i in doc["images"]] == [10, 20]
    doc = stream[1]
    assert doc["text"] == "first sentence. <image> second sentence." and level_of(doc["images"][0]) == 30
    with pytest.raises(DataError, match="is a URL; fetch the images first"):
        stream[2]


def test_conversations_and_marker_errors(tmp_path: Path) -> None:
    conv = {"__key__": "c1", "jpg": png(5), "json": json.dumps({"conversations": [
        {"from": "human", "value": "<image> colour?"}, {"from": "gpt", "value": "grey"}], "answers": ["grey", "gray"]})}
    bad = {"__key__": "c2", "jpg": png(5), "json": json.dumps({"text": "no marker", "answer": "x"})}
    write_shards(tmp_path / "c", [conv, bad], per_shard=2)
    stream = build(urls=str(tmp_path / "c"), metric="vqa_accuracy").train["webdataset"]
    s = stream[0]
    assert s["text"] == "<image> colour?" and s["answer"] == "grey"
    assert s["meta"]["answers"] == ["grey", "gray"] and s["meta"]["metric"] == "vqa_accuracy"
    with pytest.raises(DataError, match=r"Sample 'c2' .* has 0 <image> marker\(s\) but 1"):
        stream[1]


def micro_batches(stream: TrainStream, count: int, workers: int = 0) -> list[list[str]]:
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    out = []
    for batch in loader:
        out.append(ids(batch))
        if len(out) == count:
            break
    return out


def train_stream(data: TaskData, **kw: Any) -> TrainStream:
    return TrainStream(data.train, batch_size=3, collate=list, seed=0, **kw)


def test_stream_covers_every_sample_once_per_epoch_and_resumes_exactly(tmp_path: Path) -> None:
    write_shards(tmp_path / "s", pairs(12), per_shard=4)
    data = build(urls=str(tmp_path / "s"), shuffle_buffer=5)
    run = micro_batches(train_stream(data), 8)  # two epochs of 12 samples
    flat = [k for b in run for k in b]
    assert Counter(flat[:12]) == Counter(f"p{i:04d}" for i in range(12))  # no repeat, no gap
    assert Counter(flat[12:]) == Counter(flat[:12]) and flat[12:] != flat[:12]  # a new seeded order
    again = micro_batches(train_stream(data), 8)
    assert again == run  # deterministic
    resumed = micro_batches(train_stream(data, start=3), 5)  # killed after 3 micro-batches, resumed
    assert resumed == run[3:]


def test_stream_parts_split_shards_across_ranks_and_workers(tmp_path: Path) -> None:
    write_shards(tmp_path / "s", pairs(16), per_shard=2)  # 8 shards
    data = build(urls=str(tmp_path / "s"), shuffle_shards=False)
    ranks = [micro_batches(train_stream(data, rank=r, world_size=2), 2) for r in range(2)]
    seen = [{k for b in r for k in b} for r in ranks]
    assert not seen[0] & seen[1]  # ranks read disjoint shards
    two_workers = micro_batches(train_stream(data), 6, workers=2)
    assert len({k for b in two_workers for k in b}) == 18 - 2  # 16 distinct samples, 2 of the second epoch
    resumed = micro_batches(train_stream(data, start=2), 4, workers=2)
    assert resumed == two_workers[2:]  # exact with the same worker count


def test_few_shards_split_by_sample(tmp_path: Path) -> None:
    write_shards(tmp_path / "s", pairs(6), per_shard=6)  # one shard, two ranks
    data = build(urls=str(tmp_path / "s"), shuffle_shards=False)
    r0, r1 = (micro_batches(train_stream(data, rank=r, world_size=2), 1)[0] for r in range(2))
    assert r0 == ["p0000", "p0002", "p0004"] and r1 == ["p0001", "p0003", "p0005"]


def test_indexed_access_is_map_style_with_tasks_and_an_eval_pool(tmp_path: Path) -> None:
    samples = [{"__key__": f"k{i}", "0.png": png(i), "json": json.dumps(
        {"text": "<image> q", "answer": str(i), "meta": {"task": "even" if i % 2 == 0 else "odd"}})} for i in range(8)]
    write_shards(tmp_path / "tr", samples, per_shard=3)
    write_shards(tmp_path / "ev", samples[:4], per_shard=4)
    data = build(urls=str(tmp_path / "tr"), eval_urls=str(tmp_path / "ev"), access="index", task_field="meta.task",
                 eval_size=3)
    assert list(data.train) == ["even", "odd"] and [len(data.train[t]) for t in data.train] == [4, 4]
    assert [data.train["odd"][i]["answer"] for i in range(4)] == ["1", "3", "5", "7"]
    assert level_of(data.train["odd"][3]["images"][0]) == 7
    assert {t: len(p) for t, p in data.eval.items()} == {"even": 2, "odd": 1}  # eval_size caps the pool
    with pytest.raises(ValueError, match="task_field needs access: index"):
        build(urls=str(tmp_path / "tr"), task_field="meta.task")


def test_a_stream_beside_a_map_style_task_resumes_exactly(tmp_path: Path) -> None:
    write_shards(tmp_path / "s", pairs(10), per_shard=5)
    stream = build(urls=str(tmp_path / "s")).train["webdataset"]
    pool = [{"text": "<image> q", "answer": str(i), "images": [], "meta": {"id": f"m{i}"}} for i in range(7)]
    tasks = {"shards": stream, "pool": pool}
    whole = micro_batches(TrainStream(tasks, batch_size=3, collate=list, seed=1), 12)
    assert {b[0][0] for b in whole} == {"p", "m"}  # both tasks drawn
    for start in (1, 5, 9):
        resumed = micro_batches(TrainStream(tasks, batch_size=3, collate=list, seed=1, start=start), 12 - start)
        assert resumed == whole[start:], start
