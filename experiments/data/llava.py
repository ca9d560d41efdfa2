"""``data=llava``: LLaVA conversation JSON / JSONL with an image folder, as LLaVA, LLaVA-NeXT and ShareGPT4V release it.

``data.path`` is one file (``.json`` list or ``.jsonl``), a brace list (``{a,b}.json``) or a LLaVA-NeXT mixture YAML
(``datasets: [{json_path, sampling_strategy}]`` with ``all`` / ``first:N`` / ``end:N`` / ``random:N``, ``N`` a count
or a percentage). A record::

    {"id": "...", "image": "rel/a.jpg" | ["a.jpg", "b.jpg"], "video": "rel/clip.mp4" | "rel/frames_dir",
     "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]}

One ``<image>`` per image (a video counts once); records without media are text-only. Only byte offsets are kept
in memory (:class:`~experiments.data.index.RecordIndex`); a record is parsed and its media decoded when a
DataLoader worker asks for it. The evaluation pool is ``data.eval_path`` or the last ``eval_fraction`` of a seeded
permutation (``split_seed``) of the records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from braceexpand import braceexpand

from encoders.registry import ConfigError
from experiments.data.index import RecordIndex
from experiments.data.media import ImageOptions, image_tensor, load_video
from experiments.data.samples import DataError, LazySamples, conversation_messages, conversation_sample
from experiments.harness.data import DATA_SOURCES, DataSource, TaskData

# record keys copied to meta: what the evaluation's metrics read (experiments/evaluation/__init__.py)
PASSTHROUGH = ("answers", "choices", "options", "circular_id", "question", "question_id", "question_type", "category",
               "data_source")


@dataclass
class LlavaDataConfig(ImageOptions):
    """LLaVA-format data (see the module docstring); the image fields come from :class:`ImageOptions`.

    Attributes:
        path: training records: ``.json``, ``.jsonl``, a brace list of them, or a LLaVA-NeXT mixture ``.yaml``.
        image_folder: folder the records' ``image`` paths are relative to.
        video_folder: folder of ``video`` paths (default: ``image_folder``).
        eval_path: evaluation records (same forms as ``path``); ``None``: split ``path`` by ``eval_fraction``.
        eval_fraction: share of ``path`` held out for evaluation when there is no ``eval_path``.
        split_seed: seed of the held-out split and of ``random:N`` sampling (fixed across runs).
        task: name of the task (training and evaluation), as tables show it.
        task_field: a record field (dotted for nested: ``meta.task``) whose value names each record's task, to keep
            several tasks in one file (``bridgelab export-world`` writes ``meta.task``); every record is parsed once
            at start-up to group them. ``None``: one task, ``task``.
        metric: how the evaluation scores this task (a name of ``experiments.evaluation.METRICS``: ``exact_match``,
            ``vqa_accuracy``, ``multiple_choice``, ``circular_mc``, ``caption``); in ``TaskData.info`` and every
            sample's meta. Records may carry what the metric reads (``answers``, ``options``, ``circular_id``).
        skip_bad_samples: broken samples a process may skip (each logged with its id); 0: stop at the first.
    """

    path: str = ""
    image_folder: str = ""
    video_folder: str | None = None
    eval_path: str | None = None
    eval_fraction: float = 0.0
    split_seed: int = 0
    task: str = "llava"
    task_field: str | None = None
    metric: str = "exact_match"
    skip_bad_samples: int = 0


class RecordSet:
    """Records of several files with an optional selection: ``records[i]`` and ``records.where(i)``."""

    def __init__(self, files: list[RecordIndex], file_of: np.ndarray | None = None, entry: np.ndarray | None = None):
        self.files = files
        if file_of is None:
            sizes = [len(f) for f in files]
            file_of = np.repeat(np.arange(len(files), dtype=np.int32), sizes)
            entry = np.concatenate([np.arange(n, dtype=np.int64) for n in sizes]) if files else np.zeros(0, np.int64)
        self.file_of, self.entry = file_of, entry

    def __len__(self) -> int:
        return len(self.entry)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.files[int(self.file_of[i])][int(self.entry[i])]

    def where(self, i: int) -> str:
        return self.files[int(self.file_of[i])].where(int(self.entry[i]))

    def subset(self, rows: np.ndarray) -> RecordSet:
        return RecordSet(self.files, self.file_of[rows], self.entry[rows])

    def nbytes(self) -> int:
        return sum(f.nbytes() for f in self.files) + self.file_of.nbytes + self.entry.nbytes


def sample_strategy(n: int, strategy: str, rng: np.random.Generator, where: str) -> np.ndarray:
    """Rows kept by a LLaVA-NeXT ``sampling_strategy`` (``all``, ``first:N``, ``end:N``, ``random:N``; N or N%)."""
    if strategy in ("", "all"):
        return np.arange(n)
    kind, _, amount = strategy.partition(":")
    if kind not in ("first", "end", "random") or not amount:
        raise ConfigError(
            f"{where}: sampling_strategy '{strategy}' is not all, first:N, end:N or random:N (N may be N%)")
    try:
        count = int(n * float(amount[:-1]) / 100) if amount.endswith("%") else int(amount)
    except ValueError:
        raise ConfigError(
            f"{where}: sampling_strategy '{strategy}': '{amount}' is not a count or a percentage") from None
    count = max(0, min(count, n))
    if kind == "first":
        return np.arange(count)
    if kind == "end":
        return np.arange(n - count, n)
    return np.sort(rng.permutation(n)[:count])


def load_records(path: str, seed: int = 0) -> RecordSet:
    """A :class:`RecordSet` from a file, a brace list or a LLaVA-NeXT mixture YAML."""
    if not path:
        raise ConfigError("data.path is empty: give a LLaVA .json/.jsonl file or a mixture .yaml (data.path=FILE)")
    if path.endswith((".yaml", ".yml")):
        return _mixture_yaml(path, seed)
    files = [RecordIndex(_existing(p, "data.path")) for p in braceexpand(path)]
    return RecordSet(files)


def _existing(path: str, key: str) -> str:
    if not Path(path).is_file():
        raise ConfigError(f"{key}: no such file {path}")
    return path


def _mixture_yaml(path: str, seed: int) -> RecordSet:
    spec = yaml.safe_load(Path(_existing(path, "data.path")).read_text())
    entries = spec.get("datasets") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            f"{path}: a LLaVA-NeXT mixture YAML needs a 'datasets' list of {{json_path, sampling_strategy}}")
    rng = np.random.default_rng(seed)
    files, file_of, entry = [], [], []
    for k, item in enumerate(entries):
        if not isinstance(item, dict) or "json_path" not in item:
            raise ConfigError(f"{path}: datasets[{k}] needs a 'json_path'")
        json_path = str(item["json_path"])
        if not os.path.isabs(json_path) and not Path(json_path).exists():
            json_path = str(Path(path).parent / json_path)  # relative to the YAML when not to the working directory
        index = RecordIndex(_existing(json_path, f"{path}: datasets[{k}].json_path"))
        rows = sample_strategy(len(index), str(item.get("sampling_strategy", "all")), rng, f"{path}: datasets[{k}]")
        files.append(index)
        file_of.append(np.full(len(rows), k, np.int32))
        entry.append(rows.astype(np.int64))
    return RecordSet(files, np.concatenate(file_of), np.concatenate(entry))


class LlavaSamples:
    """Builds samples from LLaVA records (picklable: holds the index and the options)."""

    def __init__(self, records: RecordSet, cfg: LlavaDataConfig, source: str = "llava") -> None:
        self.records = records
        self.cfg = cfg
        self.source = source

    def describe(self, i: int, with_media: bool = False) -> dict[str, Any]:
        rec = self.records[i]
        where = self.records.where(i)
        sample_id = rec.get("id", rec.get("sample_id", i))
        images = rec.get("image")
        paths = [] if images is None else [images] if isinstance(images, str) else list(images)
        if not all(isinstance(p, str) for p in paths):
            raise DataError(
                f"Sample {sample_id!r} ({where}): 'image' must be a path or a list of paths, got {images!r}")
        messages = conversation_messages(rec.get("conversations"), sample_id, where)
        meta = dict(rec.get("meta") or {})
        meta.update({k: rec[k] for k in PASSTHROUGH if k in rec})
        meta.update(id=sample_id, source=self.source, metric=meta.get("metric", self.cfg.metric))
        media: list[Any] = []
        n_media = len(paths) + (1 if rec.get("video") else 0)
        if with_media:
            media = [image_tensor(os.path.join(self.cfg.image_folder, p), self.cfg) for p in paths]
            if rec.get("video"):
                folder = self.cfg.video_folder if self.cfg.video_folder is not None else self.cfg.image_folder
                media.append(load_video(os.path.join(folder, str(rec["video"])), self.cfg))
            sample = conversation_sample(messages, media, meta, sample_id, where)
        else:
            sample = conversation_sample(messages, [None] * n_media, meta, sample_id, where)
            sample.pop("images")
        return sample

    def __call__(self, i: int) -> dict[str, Any]:
        return self.describe(i, with_media=True)


def split_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, eval rows): the last ``fraction`` of a seeded permutation is held out, each part in file order."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"data.eval_fraction must be in [0, 1), got {fraction}")
    perm = np.random.default_rng([seed, 1]).permutation(n)
    n_eval = int(round(n * fraction))
    return np.sort(perm[: n - n_eval]), np.sort(perm[n - n_eval :])


def field_value(record: dict[str, Any], dotted: str, where: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DataError(f"Record at {where} has no field '{dotted}' (data.task_field)")
        value = value[part]
    return value


def group_by_task(records: RecordSet, cfg: LlavaDataConfig) -> dict[str, RecordSet]:
    """``{task: records}``: one task, or grouped by ``task_field`` in order of first appearance."""
    if not cfg.task_field:
        return {cfg.task: records} if len(records) else {}
    names: dict[str, int] = {}
    ids = np.array([names.setdefault(str(field_value(records[i], cfg.task_field, records.where(i))), len(names))
                    for i in range(len(records))], dtype=np.int32)
    return {name: records.subset(np.flatnonzero(ids == k)) for name, k in names.items()}


def lazy(records: RecordSet, cfg: LlavaDataConfig) -> LazySamples:
    samples = LlavaSamples(records, cfg)
    return LazySamples(len(records), samples, samples.describe, cfg.skip_bad_samples)


@DATA_SOURCES.register("llava", LlavaDataConfig)
class LlavaData(DataSource):
    """LLaVA conversation data: one task, trained and evaluated."""

    config: LlavaDataConfig

    def build(self, seed: int) -> TaskData:
        cfg = self.config
        records = load_records(cfg.path, cfg.split_seed)
        if cfg.eval_path:
            train, held = records, load_records(cfg.eval_path, cfg.split_seed)
        else:
            rows_train, rows_eval = split_rows(len(records), cfg.eval_fraction, cfg.split_seed)
            train, held = records.subset(rows_train), records.subset(rows_eval)
        if len(train) == 0:
            raise ConfigError(f"data.path {cfg.path} holds no training records")
        train_tasks, eval_tasks = group_by_task(train, cfg), group_by_task(held, cfg)
        info = {task: {"description": f"LLaVA conversations from {cfg.path}", "metric": cfg.metric, "source": "llava",
                       "n_train": len(train_tasks.get(task, ())), "n_eval": len(eval_tasks.get(task, ()))}
                for task in {**train_tasks, **eval_tasks}}
        return TaskData(train={t: lazy(r, cfg) for t, r in train_tasks.items()},
                        eval={t: lazy(r, cfg) for t, r in eval_tasks.items()}, info=info)
