"""The contention benchmark's parts: settings parsing, the in-process worker, the competitor's session, the report,
and (slow) real alone-vs-beside measurements of the worker and of a command. The measurement itself needs a quiet
machine; here only its mechanics are checked."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import contention


def test_settings_parse_to_the_worker_environment() -> None:
    assert contention.parse_setting("auto") == {"BRIDGELAB_THREADS": "auto"}
    assert contention.parse_setting("default") == {"BRIDGELAB_THREADS": str(contention.torch_default_threads())}
    env = contention.parse_setting("threads=1,wait=passive")
    assert env == {"OMP_NUM_THREADS": "1", "BRIDGELAB_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    for bad in ("threads=0", "wait=sometimes", "cores=2"):
        with pytest.raises(ValueError, match="threads=N"):
            contention.parse_setting(bad)
    with pytest.raises(ValueError, match="Bad contention setting"):
        contention.run_contention(["auto", "nope"], seconds=0.1, repeats=1)
    with pytest.raises(ValueError, match="Unknown competitor 'other'"):
        contention.run_contention(["auto"], seconds=0.1, repeats=1, competitor="other")


@pytest.mark.parametrize("setting", ["1", "auto"])
def test_worker_trains_and_reports_steps_per_second(monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    threads = torch.get_num_threads()
    monkeypatch.setenv("BRIDGELAB_THREADS", setting)
    try:
        out = contention.worker(0.2, warmup_s=0.1)
    finally:
        torch.set_num_threads(threads)
    assert out["steps_per_s"] > 0 and 1 <= out["threads"] <= max(threads, 1)


def test_the_other_session_competitor_has_its_own_session() -> None:
    for kind, own in (("other-session", True), ("same-session", False)):
        rival = contention.start_competitor(kind)
        try:
            assert (os.getsid(rival.pid) == rival.pid) is own and (os.getsid(rival.pid) != os.getsid(0)) is own
        finally:
            rival.kill()
            rival.wait()


@pytest.mark.slow
def test_alone_and_beside_are_measured_in_one_run(tmp_path: Path) -> None:
    assert contention.main(["--seconds", "0.3", "--repeats", "1", "--settings", "threads=1",
                            "--out", str(tmp_path)]) == 0
    text = (tmp_path / "contention.md").read_text()
    assert "| threads=1 |" in text and "Chosen" in text and "other-session" in text
    row = json.loads((tmp_path / "contention.json").read_text())["rows"][0]
    assert row["alone_steps_per_s"] > 0 and row["beside_steps_per_s"] > 0 and row["slowdown"] > 0


@pytest.mark.slow
def test_a_command_is_timed_alone_and_beside_with_its_own_directory(tmp_path: Path) -> None:
    script = "import os, sys; open(sys.argv[1] + '/threads.txt', 'w').write(os.environ['BRIDGELAB_THREADS'])"
    command = f"{sys.executable} -c \"{script}\" {{out}}"
    assert contention.main(["--command", command, "--repeats", "1", "--settings", "auto", "--name", "cmd",
                            "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "cmd.json").read_text())
    assert result["command"] == command and result["unit"].startswith("runs/s")
    assert [p.read_text() for p in sorted(tmp_path.glob("*/threads.txt"))] == ["auto", "auto"]
    assert sorted(p.parent.name for p in tmp_path.glob("*/threads.txt")) == ["auto-alone-0", "auto-beside-0"]
    assert "wall s" in (tmp_path / "cmd.md").read_text()
