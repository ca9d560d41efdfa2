"""``data=hf``: a Hugging Face ``datasets`` dataset: ``save_to_disk`` folders, local parquet / arrow files, or a hub id.

``data.path`` is a ``save_to_disk`` folder (a ``Dataset`` or a ``DatasetDict``, split by ``data.split``), parquet or
arrow file(s) (a glob or brace list), or, on a machine with the hub, a dataset id (``datasets.load_dataset``). The
column mapping ``data.columns`` names where the image(s), the question and answer (or LLaVA ``conversations``), the
VQA reference ``answers``, an id and a JSON ``meta`` live. Rows are read in arrow format, so image columns stay encoded
and decoded by bridgelab's loader (EXIF orientation, ``image_aspect``) when a worker asks for the sample; the arrow
tables are memory-mapped, so only what a worker touches is read. A question without ``<image>`` markers gets one per
image in front (``"<image>\\nquestion"``, LLaVA's layout), since VQA datasets do not carry markers.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from braceexpand import braceexpand

from encoders.registry import ConfigError
from experiments.data.llava import split_rows
from experiments.data.media import ImageOptions, image_tensor
from experiments.data.samples import IMAGE_TOKEN, DataError, LazySamples, conversation_messages, conversation_sample
from experiments.harness.data import DATA_SOURCES, DataSource, TaskData


@dataclass
class HFColumns:
    """Column names (``None``: the dataset has no such column)."""

    image: str | None = "image"
    question: str | None = "question"
    answer: str | None = "answer"
    conversations: str | None = "conversations"
    answers: str | None = "answers"
    options: str | None = "options"
    id: str | None = "id"
    meta: str | None = "meta"


@dataclass
class HFDataConfig(ImageOptions):
    """A ``datasets`` dataset (see the module docstring); the image fields come from :class:`ImageOptions`.

    Attributes:
        path: ``save_to_disk`` folder, parquet/arrow file(s), or a hub dataset id.
        config_name: the hub configuration (``load_dataset(path, config_name)``), if any.
        split: training split (a ``DatasetDict`` or hub dataset); ignored for a single ``Dataset``.
        eval_path / eval_split: the evaluation dataset (default: ``path`` with ``eval_split``); with neither an
            ``eval_split`` present nor ``eval_path``, ``eval_fraction`` of the training split is held out.
        eval_fraction / split_seed: the held-out share and its seed.
        columns: the column mapping (:class:`HFColumns`).
        task / metric / skip_bad_samples: as for ``data=llava``.
        task_field: a column naming each row's task (several tasks in one dataset); ``None``: one task, ``task``.
    """

    path: str = ""
    config_name: str | None = None
    split: str = "train"
    eval_path: str | None = None
    eval_split: str | None = "test"
    eval_fraction: float = 0.0
    split_seed: int = 0
    columns: HFColumns = field(default_factory=HFColumns)
    task: str = "hf"
    task_field: str | None = None
    metric: str = "exact_match"
    skip_bad_samples: int = 0


def load_hf(path: str, split: str | None, name: str | None = None) -> tuple[Any, bool]:
    """``(datasets.Dataset, whether it is a split of several)``; the dataset is ``None`` when that split is missing."""
    import datasets

    if not path:
        raise ConfigError("data.path is empty: give a save_to_disk folder, parquet/arrow files or a hub dataset id")
    if os.path.isdir(path):
        loaded = datasets.load_from_disk(path)
    elif path.endswith((".parquet", ".arrow")):
        files = sorted(f for p in braceexpand(path) for f in glob.glob(p))
        if not files:
            raise ConfigError(f"data.path: no files match {path}")
        if path.endswith(".arrow"):
            loaded = datasets.concatenate_datasets([datasets.Dataset.from_file(f) for f in files])
        else:
            loaded = datasets.load_dataset("parquet", data_files=files, split="train")
    else:
        if os.path.exists(path):
            raise ConfigError(f"data.path {path} is a file but not .parquet or .arrow")
        loaded = datasets.load_dataset(path, name)
    if isinstance(loaded, datasets.DatasetDict):
        return (loaded[split] if split in loaded else None), True
    return loaded, False


class HFSamples:
    """Builds samples from rows of a ``datasets.Dataset`` (picklable: the dataset pickles as its arrow files)."""

    def __init__(self, ds: Any, rows: np.ndarray | None, cfg: HFDataConfig, where: str) -> None:
        self.ds = ds
        self.rows = rows
        self.cfg = cfg
        self.where = where
        self.names = set(self.ds.column_names)
        columns = [c for c in vars(cfg.columns).values() if c is not None and c in self.names]
        image = cfg.columns.image if cfg.columns.image in self.names else None
        # arrow rows: image columns stay encoded ({"bytes", "path"}), nothing is decoded or copied up front
        self._full = self.ds.select_columns(columns).with_format("arrow")
        self._text = self.ds.select_columns([c for c in columns if c != image]).with_format("arrow")
        self._images = self.ds.select_columns([image]).with_format("arrow") if image else None

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.ds)

    def _get(self, row: dict[str, Any], key: str) -> Any:
        column = getattr(self.cfg.columns, key)
        return row.get(column) if column is not None else None

    def describe(self, i: int, with_media: bool = False) -> dict[str, Any]:
        index = int(self.rows[i]) if self.rows is not None else i
        row = _row(self._full if with_media else self._text, index)
        where = f"{self.where} row {index}"
        sample_id = self._get(row, "id")
        sample_id = index if sample_id is None else sample_id
        raw_meta = self._get(row, "meta")
        meta = json.loads(raw_meta) if isinstance(raw_meta, str) else dict(raw_meta or {})
        for key in ("answers", "options"):  # what vqa_accuracy / multiple_choice read (experiments.evaluation)
            if self._get(row, key) is not None:
                meta[key] = list(self._get(row, key))
        meta.update(id=sample_id, source="hf", metric=meta.get("metric", self.cfg.metric))
        n_images = self._count_images(index)
        images: list[Any] = [None] * n_images
        if with_media:
            refs = self._get(row, "image")
            refs = [] if refs is None else refs if isinstance(refs, list) else [refs]
            images = [image_tensor(_image_source(r, where), self.cfg) for r in refs]
        if self._get(row, "conversations") is not None:
            messages = conversation_messages(self._get(row, "conversations"), sample_id, where)
        elif self._get(row, "question") is not None and self._get(row, "answer") is not None:
            question = str(self._get(row, "question"))
            if IMAGE_TOKEN not in question and n_images:
                question = "\n".join([IMAGE_TOKEN] * n_images + [question])
            answer = str(self._get(row, "answer"))
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        else:
            raise DataError(
                f"Sample {sample_id!r} ({where}) has neither a '{self.cfg.columns.conversations}' column nor "
                f"'{self.cfg.columns.question}' + '{self.cfg.columns.answer}'; "
                "set data.columns to this dataset's names "
                f"(columns: {sorted(self.names)})"
            )
        sample = conversation_sample(messages, images, meta, sample_id, where)
        if not with_media:
            sample.pop("images")
        return sample

    def _count_images(self, index: int) -> int:
        if self._images is None:
            return 0
        value = _row(self._images, index)[self.cfg.columns.image]
        return 0 if value is None else len(value) if isinstance(value, list) else 1

    def __call__(self, i: int) -> dict[str, Any]:
        return self.describe(i, with_media=True)


def _row(table: Any, index: int) -> dict[str, Any]:
    rows = table[index].to_pylist()
    return rows[0] if rows else {}


def _image_source(ref: Any, where: str) -> Any:
    if isinstance(ref, dict):
        if ref.get("bytes"):
            return ref["bytes"]
        if ref.get("path"):
            return ref["path"]
    if isinstance(ref, (bytes, str)):
        return ref
    raise DataError(f"{where}: cannot read image {type(ref).__name__} {str(ref)[:60]}")


def lazy(ds: Any, rows: np.ndarray | None, cfg: HFDataConfig, where: str) -> LazySamples:
    samples = HFSamples(ds, rows, cfg, where)
    return LazySamples(len(samples), samples, samples.describe, cfg.skip_bad_samples)


@DATA_SOURCES.register("hf", HFDataConfig)
class HFData(DataSource):
    """A ``datasets`` dataset as one task."""

    config: HFDataConfig

    def build(self, seed: int) -> TaskData:
        cfg = self.config
        train, _ = load_hf(cfg.path, cfg.split, cfg.config_name)
        if train is None:
            raise ConfigError(f"data.split '{cfg.split}' is not a split of {cfg.path}")
        held, where = None, ""
        if cfg.eval_path:
            held, _ = load_hf(cfg.eval_path, cfg.eval_split or cfg.split, cfg.config_name)
            where = f"{cfg.eval_path}[{cfg.eval_split}]"
            if held is None:
                raise ConfigError(f"data.eval_split '{cfg.eval_split}' is not a split of {cfg.eval_path}")
        elif cfg.eval_split:
            candidate, several = load_hf(cfg.path, cfg.eval_split, cfg.config_name)
            held, where = (candidate, f"{cfg.path}[{cfg.eval_split}]") if several else (None, "")
        train_rows, eval_rows = None, None
        if held is None and cfg.eval_fraction > 0:
            train_rows, eval_rows = split_rows(len(train), cfg.eval_fraction, cfg.split_seed)
            held, where = train, f"{cfg.path}[{cfg.split}]"
        train_tasks = self._by_task(train, train_rows, f"{cfg.path}[{cfg.split}]")
        eval_tasks = self._by_task(held, eval_rows, where) if held is not None else {}
        info = {t: {"description": f"datasets {cfg.path}", "metric": cfg.metric, "source": "hf"}
                for t in {**train_tasks, **eval_tasks}}
        return TaskData(train=train_tasks, eval=eval_tasks, info=info)

    def _by_task(self, ds: Any, rows: np.ndarray | None, where: str) -> dict[str, LazySamples]:
        cfg = self.config
        rows = np.arange(len(ds)) if rows is None else rows
        if not cfg.task_field:
            return {cfg.task: lazy(ds, rows, cfg, where)} if len(rows) else {}
        if cfg.task_field not in ds.column_names:
            raise ConfigError(f"data.task_field '{cfg.task_field}' is not a column of {where} ({ds.column_names})")
        column = np.asarray(ds.select_columns([cfg.task_field])[cfg.task_field], dtype=object)[rows]
        names = list(dict.fromkeys(column.tolist()))
        return {str(n): lazy(ds, rows[column == n], cfg, where) for n in names}
