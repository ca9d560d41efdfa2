"""The contention benchmark's parts: settings parsing, the in-process worker, the report, and (slow) one real
alone-vs-beside measurement. The measurement itself needs a quiet machine; here only its mechanics are checked."""

from __future__ import annotations

import pytest
import torch

from benchmarks import contention


def test_settings_parse_to_the_worker_environment() -> None:
    assert contention.parse_setting("default") == {}
    env = contention.parse_setting("threads=1,wait=passive")
    assert env == {"OMP_NUM_THREADS": "1", "BRIDGELAB_TORCH_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    for bad in ("threads=0", "wait=sometimes", "cores=2"):
        with pytest.raises(ValueError, match="threads=N"):
            contention.parse_setting(bad)
    with pytest.raises(ValueError, match="Bad contention setting"):
        contention.run_contention(["default", "nope"], seconds=0.1, repeats=1)


def test_worker_trains_and_reports_steps_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = torch.get_num_threads()
    monkeypatch.setenv("BRIDGELAB_TORCH_THREADS", "1")
    try:
        out = contention.worker(0.2)
    finally:
        torch.set_num_threads(threads)
    assert out["steps_per_s"] > 0 and out["threads"] == 1


@pytest.mark.slow
def test_alone_and_beside_are_measured_in_one_run(tmp_path) -> None:
    assert contention.main(["--seconds", "0.3", "--repeats", "1", "--settings", "threads=1",
                            "--out", str(tmp_path)]) == 0
    text = (tmp_path / "contention.md").read_text()
    assert "| threads=1 |" in text and "Chosen" in text
    import json

    row = json.loads((tmp_path / "contention.json").read_text())["rows"][0]
    assert row["alone_steps_per_s"] > 0 and row["beside_steps_per_s"] > 0 and row["slowdown"] > 0
