"""When the machine runs short of memory, a sweep worker's caches give way (harness/memory.py): the sample pools of
other seeds are dropped before a new one is built, and the feature cache stops storing."""

from __future__ import annotations

from pathlib import Path

import harness_toy  # noqa: F401  (registers the toy data source)
import pytest
import torch

from experiments.harness import build, feature_cache, memory
from experiments.harness.config import compose, validate_config
from encoders.base import VisionFeatures

SEARCH = f"hydra.searchpath=[file://{Path(__file__).parent / 'harness_configs'}]"


def test_available_fraction_reads_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:    6000000 kB\n")
    assert memory.available_fraction(meminfo) == pytest.approx(0.25)
    assert memory.available_fraction(tmp_path / "absent") is None
    (tmp_path / "odd").write_text("MemTotal: 10 kB\n")
    assert memory.available_fraction(tmp_path / "odd") is None


def _pools(seed: int):
    run = validate_config(compose([SEARCH, "experiment=toy", f"seed={seed}"]))
    return build.build_data(run, None)


def _held_seeds() -> int:
    return sum(1 for kind, _ in build._MEMO if kind == "data")


def test_pools_of_other_seeds_are_kept_while_memory_lasts_and_dropped_when_short(monkeypatch) -> None:
    build.clear_memo()
    monkeypatch.setattr(build, "memory_is_short", lambda: False)
    first = _pools(0)
    assert _pools(1) is not first and _pools(0) is first and _held_seeds() == 2  # kept: the next run reuses them
    feature_cache._STORE[("stale",)] = torch.zeros(1)
    monkeypatch.setattr(build, "memory_is_short", lambda: True)
    third = _pools(2)
    assert _held_seeds() == 1 and not feature_cache._STORE  # only the pools being built stay, features are gone
    assert _pools(2) is third  # a pool in use is never dropped for itself
    again = _pools(0)
    assert again is not first and again.train.keys() == first.train.keys()  # rebuilt from its seed
    assert all(repr(again.train[t][0]) == repr(first.train[t][0]) for t in first.train)
    build.clear_memo()


class _Encoder(torch.nn.Module):
    num_layers = 1

    def forward(self, pixels: torch.Tensor, layers, with_cls: bool) -> VisionFeatures:
        hidden = (pixels.flatten(1)[:, None, :4],)
        return VisionFeatures(hidden=hidden, layers=tuple(layers), grid=(1, 1), width=4, num_prefix=0)


def test_the_feature_cache_stops_storing_when_memory_is_short(monkeypatch) -> None:
    feature_cache.clear()
    pixels = torch.rand(3, 1, 2, 2)
    monkeypatch.setattr(feature_cache, "memory_is_short", lambda: True)
    short = feature_cache._features(_Encoder(), "vit", pixels, -1, False, ("id",))
    assert not feature_cache._STORE and torch.equal(short.hidden[0], pixels.flatten(1)[:, None, :4])
    monkeypatch.setattr(feature_cache, "memory_is_short", lambda: False)
    feature_cache._features(_Encoder(), "vit", pixels, -1, False, ("id",))
    assert len(feature_cache._STORE) == 3
    feature_cache.clear()
