"""``data=llava``: JSON / JSONL records, lazy index, conversations, multi-image and video, errors, splits, mixtures."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from encoders.registry import ConfigError
from experiments.data.index import RecordError
from experiments.data.llava import sample_strategy
from experiments.data.media import MediaError
from experiments.data.samples import DataError
from experiments.harness.config import compose
from experiments.harness.data import DATA_SOURCES, TaskData


def colour_png(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (12, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


def record(i: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"s{i}", "image": f"img/{i}.png",
            "conversations": [{"from": "human", "value": "<image>\nwhat colour?"}, {"from": "gpt", "value": f"c{i}"}],
            **extra}


def write(path: Path, records: list[Any], jsonl: bool) -> Path:
    if jsonl:
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, indent=2))
    return path


def build(seed: int = 0, **cfg: Any) -> TaskData:
    entry, config = DATA_SOURCES.make_config({"name": "experiments.data.llava:llava", **cfg})
    return entry.cls(config, None).build(seed)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for i in range(10):
        colour_png(tmp_path / "img" / f"{i}.png", (20 * i, 0, 255 - 20 * i))
    return tmp_path


@pytest.mark.parametrize("jsonl", [False, True])
def test_records_become_world_shaped_samples_lazily(folder: Path, jsonl: bool) -> None:
    path = write(folder / ("d.jsonl" if jsonl else "d.json"), [record(i) for i in range(10)], jsonl)
    data = build(path=str(path), image_folder=str(folder), image_aspect="pad", pad_colour=[0.0, 0.0, 0.0])
    assert list(data.train) == ["llava"] and data.eval == {}
    assert data.info["llava"]["metric"] == "exact_match"
    pool = data.train["llava"]
    (folder / "img" / "9.png").unlink()  # building read no image: only access does
    s = pool[3]
    assert s["text"] == "<image>\nwhat colour?" and s["answer"] == "c3"
    assert s["meta"] == {"id": "s3", "source": "llava", "metric": "exact_match"}
    image = s["images"][0]
    assert image.shape == (3, 12, 12)  # 12 x 8 padded to a square
    assert torch.equal(image[:, 2:10, :], torch.tensor([60, 0, 195]).float().div(255)[:, None, None].expand(3, 8, 12))
    assert image[:, :2].abs().sum() == 0  # the pad colour
    with pytest.raises(MediaError, match=r"not found: .*img/9\.png"):
        pool[9]


def test_multi_turn_trains_on_every_assistant_turn(folder: Path) -> None:
    from test_llm_fakes import fake_encoders

    from llm_adapters import MultimodalCollator, build_multimodal_lm

    turns = [{"from": "system", "value": "be brief"}, {"from": "human", "value": "<image> first?"},
             {"from": "gpt", "value": "alpha"}, {"from": "human", "value": "second?"}, {"from": "gpt", "value": "beta"}]
    path = write(folder / "m.json", [{"id": "m", "image": "img/0.png", "conversations": turns}], False)
    sample = build(path=str(path), image_folder=str(folder)).train["llava"][0]
    assert sample["messages"][0] == {"role": "system", "content": "be brief"}
    assert [m["role"] for m in sample["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    model = build_multimodal_lm(fake_encoders(), "_test_linear", "tiny_llama")
    batch = MultimodalCollator.for_model(model, train=True)([sample])
    tok = model.lm.tokenizer
    targets = tok.decode(batch.labels[0][batch.labels[0] != -100])
    assert "alpha" in targets and "beta" in targets
    assert "first" not in targets and "second" not in targets and "brief" not in targets
    prompt = MultimodalCollator.for_model(model, train=False)([sample])
    assert prompt.meta[0]["answer"] == "beta"  # generation holds back the last answer
    assert "alpha" in tok.decode(prompt.input_ids[0])


def test_multi_image_video_and_text_only_records(folder: Path) -> None:
    from test_data_media import brightness_clip

    frames = folder / "vid" / "clip1"
    frames.mkdir(parents=True)
    for k, frame in enumerate(brightness_clip(5, size=8)):
        Image.fromarray(frame).save(frames / f"{k}.png")
    records = [
        {"id": "two", "image": ["img/1.png", "img/2.png"],
         "conversations": [{"from": "human", "value": "<image> and <image>: same?"}, {"from": "gpt", "value": "no"}]},
        {"id": "clip", "video": "clip1",
         "conversations": [{"from": "human", "value": "<image>\nwhat happens?"}, {"from": "gpt", "value": "fades"}]},
        {"id": "text", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    ]
    path = write(folder / "mm.jsonl", records, True)
    pool = build(path=str(path), image_folder=str(folder), video_folder=str(folder / "vid"), num_frames=3,
                 image_aspect="resize").train["llava"]
    two, clip, text = pool[0], pool[1], pool[2]
    assert len(two["images"]) == 2 and two["images"][0].shape == (3, 8, 12)
    assert not torch.equal(two["images"][0], two["images"][1])
    assert clip["images"][0].shape == (3, 3, 8, 8)  # one media item of F = 3 frames
    assert clip["images"][0].mean((1, 2, 3)).mul(255).round().tolist() == [20.0, 60.0, 100.0]
    assert text["images"] == [] and text["answer"] == "hello"


def test_bad_records_name_the_sample_and_where_it_is(folder: Path) -> None:
    lines = [record(0), '{"id": "s1", "image": "img/1.png", "conversations": [', record(2, image="img/missing.png"),
             {"id": "s3", "image": ["img/3.png", "img/4.png"], "conversations": record(3)["conversations"]}]
    path = write(folder / "bad.jsonl", lines, True)
    pool = build(path=str(path), image_folder=str(folder)).train["llava"]
    assert pool[0]["answer"] == "c0"
    with pytest.raises(RecordError, match=r"Malformed JSON at .*bad\.jsonl line 2"):
        pool[1]
    with pytest.raises(MediaError, match=r"not found: .*img/missing\.png"):
        pool[2]
    with pytest.raises(DataError, match=r"Sample 's3' \(.*bad\.jsonl line 4\) has 1 <image> marker\(s\) but 2 image"):
        pool[3]
    json_path = write(folder / "bad.json", [record(0), {**record(1), "image": ["img/1.png", "img/2.png"]}], False)
    with pytest.raises(DataError, match=r"Sample 's1' \(.*bad\.json index 1\) has 1 <image> marker\(s\) but 2"):
        build(path=str(json_path), image_folder=str(folder)).train["llava"][1]
    with pytest.raises(DataError, match="ends on a user turn"):
        build(path=str(write(folder / "open.json", [{"id": "o", "conversations": [{"from": "human", "value": "?"}]}],
                             False))).train["llava"][0]
    with pytest.raises(ConfigError, match="no such file"):
        build(path=str(folder / "absent.json"))


def test_skip_bad_samples_skips_up_to_n_and_logs_each(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = [record(0), record(1, image="img/gone.png"), "{oops", record(3)]
    path = write(folder / "skip.jsonl", lines, True)
    pool = build(path=str(path), image_folder=str(folder), skip_bad_samples=2).train["llava"]
    with caplog.at_level(logging.WARNING):
        assert pool[1]["meta"]["id"] == "s3"  # s1 (missing image) and line 3 (malformed) skipped
    assert "gone.png" in caplog.text and "line 3" in caplog.text
    strict = build(path=str(path), image_folder=str(folder), skip_bad_samples=1).train["llava"]
    with pytest.raises(RecordError, match="after skipping 1 bad samples"):
        strict[1]


def test_eval_fraction_and_eval_path(folder: Path) -> None:
    path = write(folder / "d.jsonl", [record(i) for i in range(10)], True)
    a = build(path=str(path), image_folder=str(folder), eval_fraction=0.3, seed=0)
    b = build(path=str(path), image_folder=str(folder), eval_fraction=0.3, seed=5)  # the run seed: same split
    ids = lambda pool: [pool.record(i)["meta"]["id"] for i in range(len(pool))]  # noqa: E731
    assert len(a.train["llava"]) == 7 and len(a.eval["llava"]) == 3
    assert not set(ids(a.train["llava"])) & set(ids(a.eval["llava"]))
    assert ids(a.eval["llava"]) == ids(b.eval["llava"])
    c = build(path=str(path), image_folder=str(folder), eval_fraction=0.3, split_seed=1)
    assert ids(c.eval["llava"]) != ids(a.eval["llava"])
    d = build(path=str(path), eval_path=str(path), task="vqa", metric="vqa_accuracy")
    assert len(d.eval["vqa"]) == 10 and d.info["vqa"]["metric"] == "vqa_accuracy"
    assert d.eval["vqa"].record(0)["meta"]["metric"] == "vqa_accuracy"
    assert "images" not in d.eval["vqa"].record(0)  # evaluation records never decode media


def test_llava_next_mixture_yaml_and_brace_lists(folder: Path) -> None:
    write(folder / "a.json", [record(i) for i in range(10)], False)
    write(folder / "b.jsonl", [record(i, id=f"b{i}") for i in range(10)], True)
    (folder / "mix.yaml").write_text(
        "datasets:\n"
        f"  - json_path: {folder / 'a.json'}\n    sampling_strategy: first:3\n"
        "  - json_path: b.jsonl\n    sampling_strategy: end:20%\n"  # relative to the YAML
        f"  - json_path: {folder / 'a.json'}\n    sampling_strategy: random:50%\n"
    )
    pool = build(path=str(folder / "mix.yaml"), image_folder=str(folder)).train["llava"]
    ids = [pool.record(i)["meta"]["id"] for i in range(len(pool))]
    assert ids[:5] == ["s0", "s1", "s2", "b8", "b9"] and len(ids) == 10
    again = build(path=str(folder / "mix.yaml"), image_folder=str(folder), seed=3).train["llava"]
    assert [again.record(i)["meta"]["id"] for i in range(len(again))] == ids  # deterministic
    braces = build(path=f"{folder}/{{a.json,b.jsonl}}").train["llava"]
    assert len(braces) == 20
    rng = np.random.default_rng(0)
    assert sample_strategy(10, "all", rng, "x").tolist() == list(range(10))
    with pytest.raises(ConfigError, match="sampling_strategy 'middle:3'"):
        sample_strategy(10, "middle:3", rng, "x")


def test_data_llava_composes_from_the_command_line(folder: Path) -> None:
    path = write(folder / "d.json", [record(i) for i in range(4)], False)
    cfg = compose(["data=llava", f"data.path={path}", f"data.image_folder={folder}", "data.image_aspect=crop"])
    entry, config = DATA_SOURCES.make_config(cfg.data)
    assert entry.name == "llava" and config.image_aspect == "crop"
    assert entry.cls(config, None).build(0).train["llava"][0]["images"][0].shape == (3, 8, 8)
    with pytest.raises(ConfigError, match="Did you mean 'image_folder'"):
        DATA_SOURCES.make_config({**dict(cfg.data), "image_foldr": "x"})


def test_skip_bad_samples_is_one_budget_across_dataloader_workers(folder: Path) -> None:
    """Two workers, two bad samples, a budget of one: the run stops, whichever worker meets the second."""
    lines = [record(0), record(1, image="img/gone.png"), record(2), record(3, image="img/gone.png"), record(4)]
    path = write(folder / "two_bad.jsonl", lines, True)
    pool = build(path=str(path), image_folder=str(folder), skip_bad_samples=1).train["llava"]
    loader = torch.utils.data.DataLoader(pool, batch_size=None, num_workers=2, collate_fn=lambda s: s["meta"]["id"])
    with pytest.raises(MediaError, match="after skipping 1 bad samples"):
        list(loader)
    generous = build(path=str(path), image_folder=str(folder), skip_bad_samples=2).train["llava"]
    loader = torch.utils.data.DataLoader(generous, batch_size=None, num_workers=2, collate_fn=lambda s: s["meta"]["id"])
    assert sorted(loader) == ["s0", "s2", "s2", "s4", "s4"]  # each bad sample replaced by the next good one


def test_a_pickled_pool_counts_its_own_skips(folder: Path) -> None:
    path = write(folder / "bad.jsonl", [record(0, image="img/gone.png"), record(1)], True)
    pool = build(path=str(path), image_folder=str(folder), skip_bad_samples=1).train["llava"]
    copy = pickle.loads(pickle.dumps(pool))
    assert pool[0]["meta"]["id"] == "s1" and copy[0]["meta"]["id"] == "s1"
