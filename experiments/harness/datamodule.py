"""The LightningDataModule: a deterministic, resumable stream of training batches and per-task evaluation sets.

Training draws micro-batches from an infinite stream in which micro-batch ``m`` is a pure function of
``(seed, m)``: its task comes from a seeded schedule over the training tasks (one task per micro-batch, so a batch
holds one format and pads little), and its samples from that task's seeded sequence of permutations. Resuming at
optimiser step ``s`` therefore restarts the stream at micro-batch ``s x accumulation`` and replays exactly what an
uninterrupted run would have seen. Ranks take interleaved micro-batches; DataLoader workers split a rank's share.

Samples are plain dicts (``{"text", "images", "answer", "meta"}``); the model's collators turn a list of them into
a :class:`~llm_adapters.batch.MultimodalBatch` (for training: prompt + answer with labels; for generation: the
prompt alone, left padded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

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
        self.tasks = {n: list(tasks[n]) for n in self.names}
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

    def __iter__(self) -> Iterator[Any]:
        worker = get_worker_info()
        w_id, w_count = (worker.id, worker.num_workers) if worker else (0, 1)
        streams = [TaskStream(len(self.tasks[n]), self.seed * 1000 + i) for i, n in enumerate(self.names)]
        chunk = 4096
        m = self.start
        local = 0  # index among this rank's micro-batches, for worker interleaving
        while True:
            choice, counts = self.schedule(m + chunk)
            for mm in range(m, m + chunk):
                if mm % self.world_size != self.rank:
                    continue
                if local % w_count == w_id:
                    yield self.micro_batch(mm, int(choice[mm]), int(counts[mm]), streams)
                local += 1
            m += chunk


class EvalSet(torch.utils.data.Dataset):
    """One task's evaluation samples, each tagged with its index (for ordering and de-duplication)."""

    def __init__(self, samples: Sequence[Sample], limit: int | None = None) -> None:
        items = list(samples)[: limit if limit is not None else None]
        self.samples = [{**s, "meta": {**dict(s.get("meta") or {}), EVAL_INDEX: i}} for i, s in enumerate(items)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


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
