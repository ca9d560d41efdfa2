"""Shared test settings: offline hub, fixed seeds, one thread per worker (pytest-xdist runs two workers)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# subprocesses (CLI tests) keep one fixed thread too: runs stay bit-reproducible whatever else the machine runs
os.environ.setdefault("BRIDGELAB_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
