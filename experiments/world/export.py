"""``bridgelab export-world DIR --format llava|webdataset|hf``: the embedded world's tasks as released datasets look.

The same pools ``data=world`` builds (training pools with ``--seed``, evaluation pools with ``--eval-seed``) are
written as 8-bit PNGs plus a LLaVA JSON per split, as WebDataset tar shards, or as a ``datasets`` ``DatasetDict`` on
disk. The world stores its pixels as 8-bit already (``experiments.world.tasks.to_uint8``), so PNG is lossless and a
run trained from an export sees bit-identical batches to ``data=world`` (``tests/test_export_world.py``). Each
record keeps the world's ``meta`` (chance, choices, per-image answers) and its task in ``meta.task``, which the
sources' ``task_field`` reads to restore the per-task pools. :func:`export_world` returns the ``data=...`` overrides
that train on what it wrote. Videos (``video_motion``) export to ``llava`` only (a folder of frames per clip).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from experiments.world.datasource import WorldData, WorldDataConfig

FORMATS = ("llava", "webdataset", "hf")
SPLITS = {"train": "train", "eval": "test"}  # world pool -> file/split name


def world_pools(tasks: Sequence[str], train_size: int, eval_size: int, seed: int = 0, eval_seed: int = 0,
                image_size: int = 32) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``(train, eval)`` pools by task that ``data=world`` builds with these settings (no world LM)."""
    cfg = WorldDataConfig(tasks=list(tasks), train_size=train_size, eval_size=eval_size, eval_seed=eval_seed,
                          image_size=image_size, text_ceiling=False)
    data = WorldData(cfg, None).build(seed)
    return data.train, data.eval


def png_bytes(image: torch.Tensor) -> bytes:
    """``(3, H, W)`` float ``x / 255`` -> PNG bytes of the 8-bit pixels (exact for the world's images)."""
    array = image.mul(255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _media_items(sample: dict[str, Any]) -> list[torch.Tensor]:
    return list(sample.get("images") or [])


def _is_video(item: torch.Tensor) -> bool:
    return item.dim() == 4


def export_world(out: str | os.PathLike[str], fmt: str, tasks: Sequence[str] = ("attribute", "compare"),
                 train_size: int = 64, eval_size: int = 16, seed: int = 0, eval_seed: int = 0,
                 image_size: int = 32, shard_size: int = 1000) -> list[str]:
    """Write the pools in ``fmt`` under ``out``; returns the ``data=...`` overrides that read them back."""
    if fmt not in FORMATS:
        raise ValueError(f"format '{fmt}' is not one of {', '.join(FORMATS)}")
    out = Path(out)  # as given: the printed overrides name it the way the user did
    out.mkdir(parents=True, exist_ok=True)
    train, evaluation = world_pools(tasks, train_size, eval_size, seed, eval_seed, image_size)
    pools = {"train": train, "eval": evaluation}
    if fmt == "llava":
        return _llava(out, pools)
    for pool in pools.values():
        for task, samples in pool.items():
            if any(_is_video(m) for m in _media_items(samples[0])):
                raise ValueError(f"Task '{task}' holds videos; export it with --format llava (frame folders)")
    return _webdataset(out, pools, shard_size) if fmt == "webdataset" else _hf(out, pools)


def _record_meta(sample: dict[str, Any], task: str) -> dict[str, Any]:
    return {**dict(sample.get("meta") or {}), "task": task}


def _llava(out: Path, pools: dict[str, dict[str, Any]]) -> list[str]:
    for split, pool in pools.items():
        records = []
        for task, samples in pool.items():
            for i in range(len(samples)):
                sample = samples[i]
                sample_id = f"{task}-{split}-{i:06d}"
                images, video = [], None
                for k, item in enumerate(_media_items(sample)):
                    rel = f"images/{task}/{split}/{i:06d}_{k}"
                    if _is_video(item):
                        (out / rel).mkdir(parents=True, exist_ok=True)
                        for f, frame in enumerate(item):
                            (out / rel / f"frame_{f:03d}.png").write_bytes(png_bytes(frame))
                        video = rel
                    else:
                        (out / rel).parent.mkdir(parents=True, exist_ok=True)
                        (out / f"{rel}.png").write_bytes(png_bytes(item))
                        images.append(f"{rel}.png")
                record: dict[str, Any] = {"id": sample_id}
                if images:
                    record["image"] = images if len(images) > 1 else images[0]
                if video:
                    record["video"] = video
                record["conversations"] = [{"from": "human", "value": sample["text"]},
                                           {"from": "gpt", "value": sample["answer"]}]
                record["meta"] = _record_meta(sample, task)
                records.append(record)
        (out / f"{SPLITS[split]}.json").write_text(json.dumps(records, indent=1))
    frames = [int(m.shape[0]) for pool in pools.values() for s in pool.values() for m in _media_items(s[0])
              if _is_video(m)]
    overrides = ["data=llava", f"data.path={out}/train.json", f"data.eval_path={out}/test.json",
                 f"data.image_folder={out}", "data.task_field=meta.task"]
    return overrides + ([f"data.num_frames={frames[0]}"] if frames else [])


def _webdataset(out: Path, pools: dict[str, dict[str, Any]], shard_size: int) -> list[str]:
    from webdataset import ShardWriter

    for split, pool in pools.items():
        folder = out / SPLITS[split]
        folder.mkdir(exist_ok=True)
        with ShardWriter(str(folder / "shard-%05d.tar"), maxcount=shard_size, verbose=0) as sink:
            for task, samples in pool.items():
                for i in range(len(samples)):
                    sample = samples[i]
                    doc = {"text": sample["text"], "answer": sample["answer"], "meta": _record_meta(sample, task)}
                    member: dict[str, Any] = {"__key__": f"{task}-{split}-{i:06d}", "json": json.dumps(doc).encode()}
                    for k, image in enumerate(_media_items(sample)):
                        member[f"{k}.png"] = png_bytes(image)
                    sink.write(member)
    return ["data=webdataset", f"data.urls={out}/train", f"data.eval_urls={out}/test", "data.access=index",
            "data.task_field=meta.task", "data.eval_size=1000000"]


def _hf(out: Path, pools: dict[str, dict[str, Any]]) -> list[str]:
    import datasets

    features = datasets.Features({
        "id": datasets.Value("string"), "task": datasets.Value("string"), "question": datasets.Value("string"),
        "answer": datasets.Value("string"), "images": datasets.List(datasets.Image()), "meta": datasets.Value("string"),
    })
    splits = {}
    for split, pool in pools.items():
        rows: dict[str, list[Any]] = {name: [] for name in features}
        for task, samples in pool.items():
            for i in range(len(samples)):
                sample = samples[i]
                rows["id"].append(f"{task}-{split}-{i:06d}")
                rows["task"].append(task)
                rows["question"].append(sample["text"])
                rows["answer"].append(sample["answer"])
                rows["images"].append([{"bytes": png_bytes(m), "path": None} for m in _media_items(sample)])
                rows["meta"].append(json.dumps(_record_meta(sample, task)))
        splits[SPLITS[split]] = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(out))
    return ["data=hf", f"data.path={out}", "data.columns.image=images", "data.task_field=task"]


def main(argv: Sequence[str]) -> int:
    """``bridgelab export-world``: parse the arguments, export, print the overrides that train on the export."""
    import argparse

    from experiments.world.tasks import TASKS

    parser = argparse.ArgumentParser(prog="bridgelab export-world", description="Write the world's tasks as files")
    parser.add_argument("dir", help="output folder")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--tasks", nargs="+", default=["attribute", "compare"], choices=TASKS, metavar="TASK",
                        help=f"world tasks (default: attribute compare; any of {', '.join(TASKS)})")
    parser.add_argument("--train-size", type=int, default=64, help="training samples per task (default 64)")
    parser.add_argument("--eval-size", type=int, default=16, help="evaluation samples per task (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training pools (the run seed of data=world)")
    parser.add_argument("--eval-seed", type=int, default=0, help="seed of the evaluation pools (data.eval_seed)")
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args(list(argv))
    overrides = export_world(args.dir, args.format, args.tasks, args.train_size, args.eval_size, args.seed,
                             args.eval_seed, args.image_size)
    n = len(args.tasks)
    sizes = f"({args.train_size} train + {args.eval_size} eval)"
    print(f"wrote {n} task(s) x {sizes} samples as {args.format} to {args.dir}")
    print("train on it with:\n  bridgelab train " + " ".join(overrides))
    return 0
