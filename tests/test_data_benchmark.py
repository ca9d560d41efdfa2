"""``python -m benchmarks.data`` at a tiny size: every measure is produced and written (no timing assertions: the
machine is shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.data import generate, measure_memory, run, to_markdown


@pytest.mark.slow  # two fresh interpreters and two DataLoader workers: tens of seconds on a loaded machine
def test_tiny_data_benchmark_writes_every_measure(tmp_path: Path) -> None:
    result = run(entries=3000, samples=64, workers=1, image_size=32, batch_size=16, images=8, out=tmp_path,
                 keep=False, repeats=1)
    saved = json.loads((tmp_path / "data.json").read_text())
    assert saved["index"]["entries"] == saved["json_load"]["entries"] == 3000
    assert saved["index"]["array_bytes"] == 3000 * 20  # two int64 offsets and an int32 line number per record
    assert 0 < result["index_memory_fraction"] < 1
    assert result["samples"] == 64 and result["loader_samples_per_s"] > 0 and result["decode_only_samples_per_s"] > 0
    assert not (tmp_path / "synthetic").exists()  # generated files removed unless --keep
    table = to_markdown(result)
    assert "index resident memory" in table and "target >= 0.8" in table


def test_generated_records_are_llava_records(tmp_path: Path) -> None:
    path = generate(tmp_path, entries=5, images=2, image_size=16)
    lines = path.read_text().splitlines()
    first = json.loads(lines[3])
    assert first["image"] == "img/1.jpg" and first["conversations"][0]["value"].startswith("<image>")
    assert (tmp_path / "img" / "1.jpg").exists()
    assert measure_memory("index", str(path))["entries"] == 5
