"""``data=webdataset``: tar shards read with the ``webdataset`` package (img2dataset pairs, MMC4 / OBELICS documents).

``data.urls`` is a brace expansion (``/data/laion/{00000..01743}.tar``; ``http://`` and ``pipe:`` URLs work as in
``webdataset``) or a local folder (its ``*.tar``, sorted). One tar sample (members sharing a key) becomes:

* image-text pair: ``KEY.jpg|png|jpeg|webp`` + ``KEY.txt`` (or ``KEY.json`` with ``caption``): a plain document
  ``"<image> caption"`` trained on all its text (OpenFlamingo), or with ``pair_format: answer`` the caption as the
  answer to ``"<image> caption_prompt"`` (LLaVA's alignment stage);
* OBELICS document: ``KEY.json`` with ``texts`` and ``images`` lists of equal length, ``null`` where the other is set;
  an image entry names a member of the sample (``"0.jpg"``) or is base64 data;
* MMC4 document as OpenFlamingo converts it: ``KEY.json`` with ``text_list`` and ``image_info`` (``image_base64`` or
  ``image_name`` member, ``matched_text_index``): each image is placed before its matched sentence;
* a conversation (``KEY.json`` with LLaVA ``conversations``) or a bridgelab sample (``text``, ``answer``, ``meta``),
  images from the sample's members ``KEY.jpg`` or ``KEY.0.png``, ``KEY.1.png``, ... in order.

Why ``webdataset`` and not ``litdata``: the paper datasets are released (or converted by img2dataset and
OpenFlamingo's scripts) as plain tar shards, which ``webdataset`` reads as they are; ``litdata`` streams its own
optimised chunk format and would need a conversion pass first. Shard splitting and resumption are bridgelab's (see
``experiments.harness.datamodule``): ``webdataset`` only opens and groups the tar members here.
"""

from __future__ import annotations

import base64
import binascii
import glob
import json
import logging
import os
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
from braceexpand import braceexpand

from encoders.registry import ConfigError
from experiments.data.media import IMAGE_SUFFIXES, ImageOptions, image_tensor
from experiments.data.samples import (BAD_SAMPLE_ERRORS, IMAGE_TOKEN, DataError, LazySamples, check_markers,
                                      conversation_messages, conversation_sample, interleaved_text)
from experiments.harness.data import DATA_SOURCES, DataSource, SampleStream, TaskData

log = logging.getLogger(__name__)
IMAGE_KEYS = tuple(s.lstrip(".") for s in IMAGE_SUFFIXES)


@dataclass
class WebDatasetConfig(ImageOptions):
    """Tar shards (see the module docstring); the image fields come from :class:`ImageOptions`.

    Attributes:
        urls: training shards: a brace expansion or a folder of ``.tar`` files.
        eval_urls: evaluation shards (same forms), read into memory once (undecoded) up to ``eval_size`` samples.
        eval_size: evaluation samples kept from ``eval_urls``.
        access: ``stream`` (shards read in order, split across ranks and workers: any size, any URL) or ``index``
            (local shards only: the tar headers are indexed once and samples are read by offset, map-style, so
            training draws seeded permutations exactly as for the other sources).
        task: the task's name.
        task_field: with ``access: index``, a field of each sample's JSON member (dotted) naming its task.
        metric: how the evaluation scores it (passed to meta and ``TaskData.info``).
        pair_format: ``document`` (loss on the whole ``<image> caption``) or ``answer`` (caption as the answer).
        caption_prompt: the user text after ``<image>`` when ``pair_format: answer``.
        shuffle_shards: a fresh seeded shard order every epoch.
        shuffle_buffer: samples in a seeded shuffle buffer (0: none); raw bytes of that many samples stay in memory.
        skip_bad_samples: broken samples a worker may skip (each logged with its key).
    """

    urls: str = ""
    eval_urls: str | None = None
    eval_size: int = 256
    access: str = "stream"
    task: str = "webdataset"
    task_field: str | None = None
    metric: str = "exact_match"
    pair_format: str = "document"
    caption_prompt: str = ""
    shuffle_shards: bool = True
    shuffle_buffer: int = 0
    skip_bad_samples: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pair_format not in ("document", "answer"):
            raise ValueError(f"pair_format '{self.pair_format}' is not 'document' or 'answer'")
        if self.access not in ("stream", "index"):
            raise ValueError(f"access '{self.access}' is not 'stream' or 'index'")
        if self.task_field and self.access != "index":
            raise ValueError("task_field needs access: index (a stream cannot be grouped by task up front)")


def shard_list(urls: str, key: str = "data.urls") -> list[str]:
    """Shards named by a brace expansion or a folder."""
    if not urls:
        raise ConfigError(f"{key} is empty: give shards as /path/shard-{{0000..0099}}.tar or a folder of .tar files")
    if os.path.isdir(urls):
        found = sorted(glob.glob(os.path.join(urls, "*.tar")))
        if not found:
            raise ConfigError(f"{key}: folder {urls} holds no .tar shards")
        return found
    shards = list(braceexpand(urls))
    local = [s for s in shards if "://" not in s and not s.startswith("pipe:")]
    missing = [s for s in local if not os.path.isfile(s)]
    if missing:
        raise ConfigError(f"{key}: {len(missing)} shard(s) not found, e.g. {missing[0]}")
    return shards


def read_shards(shards: list[str]) -> Iterator[dict[str, Any]]:
    """Raw samples (``__key__`` plus member bytes by suffix) of ``shards`` in order."""
    from webdataset.tariterators import tarfile_samples

    return tarfile_samples({"url": s} for s in shards)


class SampleDecoder:
    """Raw tar sample -> bridgelab sample (see the module docstring)."""

    def __init__(self, cfg: WebDatasetConfig) -> None:
        self.cfg = cfg

    def _image(self, raw: dict[str, Any], ref: Any, key: str) -> Any:
        if isinstance(ref, str) and ref in raw:
            return image_tensor(raw[ref], self.cfg)
        if isinstance(ref, str) and ref.startswith(("http://", "https://")):
            raise DataError(
                f"Sample {key!r}: image {ref} is a URL; fetch the images first (img2dataset) and shard them")
        try:
            data = base64.b64decode(ref, validate=True) if isinstance(ref, str) else None
        except (binascii.Error, ValueError):
            data = None
        if not data:
            raise DataError(
                f"Sample {key!r}: image {str(ref)[:60]!r} is neither a member of the sample nor base64 data")
        return image_tensor(data, self.cfg)

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        key = raw.get("__key__", "?")
        where = f"{raw.get('__url__', '?')} key {key}"
        members = sorted((k for k in raw if k.rsplit(".", 1)[-1].lower() in IMAGE_KEYS), key=_member_order)
        meta: dict[str, Any] = {"id": key, "source": "webdataset", "metric": self.cfg.metric}
        doc = None
        if "json" in raw:
            try:
                doc = json.loads(raw["json"])
            except json.JSONDecodeError as err:
                raise DataError(f"Sample {key!r} ({where}): malformed JSON member: {err}") from None
        if isinstance(doc, dict):
            meta = {**dict(doc.get("meta") or {}), **{k: doc[k] for k in ("answers",) if k in doc}, **meta}
            if "conversations" in doc:
                images = [image_tensor(raw[m], self.cfg) for m in members]
                messages = conversation_messages(doc["conversations"], key, where)
                return conversation_sample(messages, images, meta, key, where)
            if "texts" in doc and "images" in doc:
                refs = list(doc["images"])
                text = interleaved_text(list(doc["texts"]), refs, key, where)
                return {"text": text, "images": [self._image(raw, r, key) for r in refs if r is not None], "meta": meta}
            if "text_list" in doc and "image_info" in doc:
                return self._mmc4(raw, doc, key, meta)
            if "text" in doc:
                images = [image_tensor(raw[m], self.cfg) for m in members]
                check_markers([doc["text"]], len(images), key, where)
                out = {"text": doc["text"], "images": images, "meta": meta}
                if doc.get("answer") is not None:
                    out["answer"] = doc["answer"]
                return out
        caption = doc.get("caption") if isinstance(doc, dict) else None
        if caption is None and "txt" in raw:
            caption = raw["txt"].decode("utf-8") if isinstance(raw["txt"], bytes) else str(raw["txt"])
        if caption is None or len(members) != 1:
            raise DataError(
                f"Sample {key!r} ({where}) is not a pair (one image + .txt), an OBELICS/MMC4 document or a "
                f"conversation; members: {sorted(k for k in raw if not k.startswith('__'))}"
            )
        image = [image_tensor(raw[members[0]], self.cfg)]
        if self.cfg.pair_format == "answer":
            prompt = f"{IMAGE_TOKEN} {self.cfg.caption_prompt}".strip()
            return {"text": prompt, "answer": caption.strip(), "images": image, "meta": meta}
        return {"text": f"{IMAGE_TOKEN} {caption.strip()}", "images": image, "meta": meta}

    def _mmc4(self, raw: dict[str, Any], doc: dict[str, Any], key: str, meta: dict[str, Any]) -> dict[str, Any]:
        sentences = [str(t) for t in doc["text_list"]]
        before: dict[int, list[Any]] = {}
        for info in doc["image_info"]:
            ref = info.get("image_base64") or info.get("image_name")
            before.setdefault(int(info.get("matched_text_index", 0)), []).append(ref)
        texts: list[str | None] = []
        refs: list[Any] = []
        for i, sentence in enumerate(sentences):
            for ref in before.get(i, []):
                texts.append(None)
                refs.append(ref)
            texts.append(sentence)
            refs.append(None)
        text = interleaved_text(texts, refs, key, f"key {key}")
        return {"text": text, "images": [self._image(raw, r, key) for r in refs if r is not None], "meta": meta}


def _member_order(name: str) -> tuple[int, str]:
    head = name.split(".", 1)[0]
    return (int(head), name) if head.isdigit() else (-1, name)


class ShardStream(SampleStream):
    """A stream task over tar shards: parts are shard subsets (or every ``parts``-th sample when shards are few)."""

    def __init__(self, shards: list[str], cfg: WebDatasetConfig) -> None:
        self.shards = shards
        self.cfg = cfg
        self.decoder = SampleDecoder(cfg)
        self.skipped = 0
        self._length: int | None = None

    def records(self, part: int, parts: int, seed: int) -> Iterator[Any]:
        epoch = 0
        while True:
            order = list(self.shards)
            if self.cfg.shuffle_shards:
                order = [order[i] for i in np.random.default_rng([seed, epoch]).permutation(len(order))]
            if len(order) >= parts:
                raw: Iterator[Any] = read_shards(order[part::parts])
            else:
                raw = islice(read_shards(order), part, None, parts)
            if self.cfg.shuffle_buffer > 0:
                raw = _buffer_shuffle(raw, self.cfg.shuffle_buffer, random.Random(f"{seed}-{epoch}-{part}"))
            count = 0
            for record in raw:
                count += 1
                yield record
            if count == 0:
                raise DataError(f"Stream part {part} of {parts} of {len(self.shards)} shard(s) has no samples")
            epoch += 1

    def decode(self, record: Any) -> dict[str, Any]:
        return self.decoder(record)

    def take(self, records: Iterator[Any], count: int) -> list[dict[str, Any]]:
        out = []
        while len(out) < count:
            try:
                out.append(self.decode(next(records)))
            except BAD_SAMPLE_ERRORS as err:
                if self.skipped >= self.cfg.skip_bad_samples:
                    raise
                self.skipped += 1
                log.warning("Skipping bad sample %d/%d: %s", self.skipped, self.cfg.skip_bad_samples, err)
        return out

    def __len__(self) -> int:
        """Samples in all shards (counted once, on first use, by reading the shards)."""
        if self._length is None:
            self._length = sum(1 for _ in read_shards(self.shards))
        return self._length

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Sample ``i`` of the shards in their listed order (reads from the start: for a quick look only)."""
        record = next(islice(read_shards(self.shards), i, None), None)
        if record is None:
            raise IndexError(f"sample {i} out of range")
        return self.decode(record)


def _buffer_shuffle(raw: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    buf: list[Any] = []
    for record in raw:
        if len(buf) < size:
            buf.append(record)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = record
    rng.shuffle(buf)
    yield from buf


class TarIndex:
    """Member offsets of local tar shards, grouped into samples as ``webdataset`` groups them (by key)."""

    def __init__(self, shards: list[str]) -> None:
        remote = [s for s in shards if "://" in s or s.startswith("pipe:")]
        if remote:
            raise ConfigError(f"access: index needs local shards; {remote[0]} is remote (use access: stream)")
        self.shards = shards
        shard_of, offsets, sizes, suffixes, starts, keys = [], [], [], [], [], []
        for k, shard in enumerate(shards):
            with tarfile.open(shard) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, suffix = _split_name(member.name)
                    if not keys or keys[-1] != key or shard_of[-1] != k:
                        starts.append(len(offsets))
                        keys.append(key)
                    shard_of.append(k)
                    offsets.append(member.offset_data)
                    sizes.append(member.size)
                    suffixes.append(suffix)
        self.shard_of = np.asarray(shard_of, np.int32)
        self.offsets = np.asarray(offsets, np.int64)
        self.sizes = np.asarray(sizes, np.int64)
        self.suffixes = suffixes
        self.starts = np.asarray([*starts, len(offsets)], np.int64)
        self.keys = keys
        self._fds: dict[int, int] = {}
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fds": {}, "_pid": None}

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()
        a, b = int(self.starts[i]), int(self.starts[i + 1])
        shard = int(self.shard_of[a])
        if shard not in self._fds:
            self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
        raw: dict[str, Any] = {"__key__": self.keys[i], "__url__": self.shards[shard]}
        for m in range(a, b):
            raw[self.suffixes[m]] = os.pread(self._fds[shard], int(self.sizes[m]), int(self.offsets[m]))
        return raw


def _split_name(name: str) -> tuple[str, str]:
    """``dir/KEY.suffix.ext`` -> (``dir/KEY``, ``suffix.ext``), webdataset's rule."""
    head, _, base = name.rpartition("/")
    key, _, suffix = base.partition(".")
    return (f"{head}/{key}" if head else key), suffix


class _IndexedPool:
    """Samples ``rows`` of a :class:`TarIndex`, decoded on access (picklable)."""

    def __init__(self, index: TarIndex, rows: np.ndarray, decoder: SampleDecoder) -> None:
        self.index, self.rows, self.decoder = index, rows, decoder

    def __call__(self, i: int) -> dict[str, Any]:
        return self.decoder(self.index[int(self.rows[i])])


class _RawPool:
    """Undecoded evaluation records in memory, decoded on access (picklable)."""

    def __init__(self, raw: list[dict[str, Any]], decoder: SampleDecoder) -> None:
        self.raw, self.decoder = raw, decoder

    def __call__(self, i: int) -> dict[str, Any]:
        return self.decoder(self.raw[i])


@DATA_SOURCES.register("webdataset", WebDatasetConfig)
class WebDatasetData(DataSource):
    """Tar shards as one streamed training task, or indexed tasks (``access: index``); evaluation from ``eval_urls``."""

    config: WebDatasetConfig

    def build(self, seed: int) -> TaskData:
        cfg = self.config
        shards = shard_list(cfg.urls)
        decoder = SampleDecoder(cfg)
        info = {"description": f"WebDataset shards {cfg.urls}", "metric": cfg.metric, "source": "webdataset",
                "n_shards": len(shards)}
        if cfg.access == "index":
            train = self._indexed(TarIndex(shards), decoder, None)
            evaluation = self._indexed(TarIndex(shard_list(cfg.eval_urls, "data.eval_urls")), decoder,
                                       cfg.eval_size) if cfg.eval_urls else {}
            return TaskData(train=train, eval=evaluation, info={t: dict(info) for t in {**train, **evaluation}})
        evaluation = {}
        if cfg.eval_urls:
            raw = list(islice(read_shards(shard_list(cfg.eval_urls, "data.eval_urls")), cfg.eval_size))
            evaluation[cfg.task] = LazySamples(len(raw), _RawPool(raw, decoder), None, cfg.skip_bad_samples)
        return TaskData(train={cfg.task: ShardStream(shards, cfg)}, eval=evaluation, info={cfg.task: info})

    def _indexed(self, index: TarIndex, decoder: SampleDecoder, limit: int | None) -> dict[str, LazySamples]:
        cfg = self.config
        rows = np.arange(len(index) if limit is None else min(limit, len(index)))
        if not cfg.task_field:
            groups = {cfg.task: rows}
        else:
            names: dict[str, int] = {}
            ids = np.array([names.setdefault(self._task_of(index[int(r)]), len(names)) for r in rows], np.int32)
            groups = {name: rows[ids == k] for name, k in names.items()}
        return {t: LazySamples(len(r), _IndexedPool(index, r, decoder), None, cfg.skip_bad_samples)
                for t, r in groups.items() if len(r)}

    def _task_of(self, raw: dict[str, Any]) -> str:
        doc = json.loads(raw["json"]) if "json" in raw else {}
        value: Any = doc
        for part in str(self.config.task_field).split("."):
            if not isinstance(value, dict) or part not in value:
                raise DataError(
                    f"Sample {raw['__key__']!r} has no JSON field '{self.config.task_field}' (data.task_field)")
            value = value[part]
        return str(value)
