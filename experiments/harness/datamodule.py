"""The LightningDataModule: a deterministic, resumable stream of training batches and per-task evaluation sets.

Training draws micro-batches from an infinite stream in which micro-batch ``m`` is a pure function of
``(seed, m)``: its task comes from a seeded schedule over the training tasks (one task per micro-batch, so a batch
holds one format and pads little), and its samples from that task's seeded sequence of permutations. Resuming at
optimiser step ``s`` therefore restarts the stream at micro-batch ``s x accumulation`` and replays exactly what an
uninterrupted run would have seen. Ranks take interleaved micro-batches; DataLoader workers split a rank's share.

Tasks may be lazy map-style sequences (only ``len`` and ``task[i]`` are used: samples are made in the workers) or
:class:`~experiments.harness.data.SampleStream` s. A stream is cut into ``world size x workers`` parts; micro-batch
``m`` of a stream task takes the next samples of part :func:`part_of` ``(m)``, and a resumed run skips, in each part,
the records that the micro-batches before the resume point took. So the batches are a pure function of ``(seed, m)``
for a fixed world size and worker count: a kill and resume repeats and skips nothing. With another worker count or
world size the parts are cut differently and a resumed stream is not the continuation of the old one (map-style
tasks are unaffected: their batches never depend on the worker count). Evaluation sets index their tasks lazily too.

Samples are plain dicts (``{"text", "images", "answer", "meta"}``); the model's collators turn a list of them into
a :class:`~llm_adapters.batch.MultimodalBatch` (for training: prompt + answer with labels; for generation: the
prompt alone, left padded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from experiments.harness.data import SampleStream

Sample = Mapping[str, Any]
EVAL_INDEX = "eval_index"  # meta key: a sample's position in its evaluation set
Collate = Callable[[Sequence[Sample]], Any]


class TaskStream:
    """Sample indices of one task, epoch after epoch, each epoch a fresh seeded permutation."""

    def __init__(self, size: int, seed: int) -> None:
        if size < 1:
            raise ValueError("A training task has no samples")
        self.size = size
        self.seed = seed
        self._cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) > 4:
                self._cache.clear()
            self._cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return self._cache[epoch]

    def take(self, start: int, count: int) -> list[int]:
        """Indices at stream positions ``[start, start + count)``."""
        out = []
        for pos in range(start, start + count):
            epoch, offset = divmod(pos, self.size)
            out.append(int(self._perm(epoch)[offset]))
        return out


class TrainStream(IterableDataset):
    """Infinite stream of collated training micro-batches (see the module docstring).

    Args:
        tasks: training samples per task.
        weights: sampling weight per task (``None``: equal); the schedule is seeded.
        batch_size: samples per micro-batch.
        collate: turns a list of samples into a batch.
        seed: the data seed.
        start: first global micro-batch index (``optimiser step x accumulation x world size`` when resuming).
        rank / world_size: this process's share: global micro-batches ``m`` with ``m % world_size == rank``.
    """

    def __init__(
        self,
        tasks: Mapping[str, Sequence[Sample]],
        batch_size: int,
        collate: Collate,
        seed: int,
        weights: Mapping[str, float] | None = None,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("No training tasks")
        self.names = list(tasks)
        self.tasks = {n: tasks[n] if _indexable(tasks[n]) or isinstance(tasks[n], SampleStream) else list(tasks[n])
                      for n in self.names}
        w = np.array([float((weights or {}).get(n, 1.0)) for n in self.names])
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"Task weights must be >= 0 with a positive sum, got {dict(zip(self.names, w))}")
        self.probs = w / w.sum()
        self.batch_size = batch_size
        self.collate = collate
        self.seed = seed
        self.start = start
        self.rank = rank
        self.world_size = world_size

    def schedule(self, upto: int) -> tuple[np.ndarray, np.ndarray]:
        """Task index of each global micro-batch ``< upto`` and how many earlier micro-batches had that task."""
        if len(self.names) == 1:
            return np.zeros(upto, dtype=np.int64), np.arange(upto)
        choice = np.random.default_rng([self.seed, 7919]).choice(len(self.names), size=upto, p=self.probs)
        counts = np.zeros(upto, dtype=np.int64)
        seen = np.zeros(len(self.names), dtype=np.int64)
        for m, t in enumerate(choice):
            counts[m] = seen[t]
            seen[t] += 1
        return choice, counts

    def micro_batch(self, m: int, task: int, occurrence: int, streams: list[TaskStream]) -> Any:
        name = self.names[task]
        idx = streams[task].take(occurrence * self.batch_size, self.batch_size)
        return self.collate([self.tasks[name][i] for i in idx])

    def _stream_reader(self, task: int, part: int, parts: int, choice: np.ndarray) -> Iterator[Any]:
        """Records of part ``part`` of stream task ``task``, past those taken before ``self.start``."""
        source = self.tasks[self.names[task]]
        before = np.arange(self.start)
        taken = int(((choice[: self.start] == task) & (part_of(before, self.world_size, parts) == part)).sum())
        return islice(source.records(part, parts, self.seed * 1000 + task), taken * self.batch_size, None)

    def __iter__(self) -> Iterator[Any]:
        worker = get_worker_info()
        w_id, w_count = (worker.id, worker.num_workers) if worker else (0, 1)
        parts = self.world_size * w_count
        sizes = {i: len(self.tasks[n]) for i, n in enumerate(self.names) if not self._is_stream(i)}
        streams = [TaskStream(sizes[i], self.seed * 1000 + i) if i in sizes else None for i in range(len(self.names))]
        readers: dict[tuple[int, int], Iterator[Any]] = {}
        chunk = 4096
        m = self.start
        local = 0  # index among this rank's micro-batches, for worker interleaving
        while True:
            choice, counts = self.schedule(m + chunk)
            for mm in range(m, m + chunk):
                if mm % self.world_size != self.rank:
                    continue
                if local % w_count == w_id:
                    task = int(choice[mm])
                    if streams[task] is not None:
                        yield self.micro_batch(mm, task, int(counts[mm]), streams)  # type: ignore[arg-type]
                    else:
                        part = int(part_of(np.array([mm]), self.world_size, parts)[0])
                        if (task, part) not in readers:
                            readers[(task, part)] = self._stream_reader(task, part, parts, choice)
                        source = self.tasks[self.names[task]]
                        yield self.collate(source.take(readers[(task, part)], self.batch_size))
                local += 1
            m += chunk

    def _is_stream(self, task: int) -> bool:
        return isinstance(self.tasks[self.names[task]], SampleStream)


def part_of(m: np.ndarray, world_size: int, parts: int) -> np.ndarray:
    """The stream part feeding global micro-batch ``m``: its rank plus ``world_size x`` its worker slot."""
    workers = parts // world_size
    return m % world_size + world_size * ((m // world_size) % workers)


class EvalSet(torch.utils.data.Dataset):
    """One task's evaluation samples, each tagged with its index (for ordering and de-duplication).

    Lazy: ``set[i]`` asks the task for sample ``i`` (decoding its media in a DataLoader worker). ``samples`` is a view
    for joining predictions with their samples: it gives a sample's text, answer and meta without its media when the
    task can (``task.record(i)``), else the whole sample.
    """

    def __init__(self, samples: Sequence[Sample], limit: int | None = None) -> None:
        if not _indexable(samples):
            samples = list(samples)
        self.source = samples
        self.size = len(samples) if limit is None else min(limit, len(samples))
        self.samples = _RecordView(self)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < self.size:
            raise IndexError(f"evaluation sample {i} out of range ({self.size})")
        return _tagged(self.source[i], i)

    def record(self, i: int) -> Sample:
        record = getattr(self.source, "record", None)
        return _tagged(record(i) if record is not None else self.source[i], i)


def _indexable(samples: Any) -> bool:
    """Map-style: indexed lazily, never copied."""
    return hasattr(samples, "__len__") and hasattr(samples, "__getitem__")


def _tagged(sample: Sample, i: int) -> Sample:
    return {**sample, "meta": {**dict(sample.get("meta") or {}), EVAL_INDEX: i}}


class _RecordView(Sequence):
    def __init__(self, owner: EvalSet) -> None:
        self.owner = owner

    def __len__(self) -> int:
        return len(self.owner)

    def __getitem__(self, i: int) -> Sample:  # type: ignore[override]
        if isinstance(i, slice):
            return [self.owner.record(j) for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return self.owner.record(i)


class BridgeDataModule(L.LightningDataModule):
    """Training stream and evaluation sets for one stage of a run.

    Args:
        train_tasks: training samples per task (the stage's tasks).
        eval_tasks: evaluation samples per task.
        train_collate / eval_collate: the model's collators (with answers as labels; prompt only).
        micro_batch_size: per-device samples per forward pass.
        accumulation: micro-batches per optimiser step.
        seed: data seed.
        eval_batch_size / num_workers / eval_limit: as named.
        task_weights: sampling weight per training task.
    """

    def __init__(
        self,
        train_tasks: Mapping[str, Sequence[Sample]],
        eval_tasks: Mapping[str, Sequence[Sample]],
        train_collate: Collate,
        eval_collate: Collate,
        micro_batch_size: int,
        accumulation: int = 1,
        seed: int = 0,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        eval_limit: int | None = None,
        task_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.train_tasks = train_tasks
        self.eval_sets = {t: EvalSet(s, eval_limit) for t, s in eval_tasks.items()}
        self.train_collate = train_collate
        self.eval_collate = eval_collate
        self.micro_batch_size = micro_batch_size
        self.accumulation = accumulation
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.task_weights = task_weights
        self.predict_task: str | None = None

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        step = trainer.global_step if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        stream = TrainStream(
            self.train_tasks,
            self.micro_batch_size,
            self.train_collate,
            self.seed,
            weights=self.task_weights,
            start=step * self.accumulation * world,
            rank=rank,
            world_size=world,
        )
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers)

    def eval_dataloader(self, task: str) -> DataLoader:
        if task not in self.eval_sets:
            raise KeyError(f"No evaluation set '{task}'; tasks: {', '.join(self.eval_sets)}")
        return DataLoader(
            self.eval_sets[task],
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self.eval_collate,
            num_workers=self.num_workers,
        )

    def predict_dataloader(self) -> DataLoader:
        if self.predict_task is None:
            raise RuntimeError("Set predict_task before trainer.predict")
        return self.eval_dataloader(self.predict_task)
