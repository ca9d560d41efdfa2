"""Faults (issue 12, section 2): kills at checkpoints, signals, two processes on one run, damaged files, a full disk,
re-evaluation without retraining. RELIABILITY.md lists each guarantee with the test here that shows it.

Processes are ended at named points (``BRIDGELAB_FAULT``, experiments/harness/faults.py), not after guessed delays.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import harness_toy  # noqa: F401  (registers the toy data source)
from experiments.cli import main
from experiments.harness import faults, runlock
from experiments.harness import module as module_lib
from experiments.harness.loading import load_run
from experiments.harness.rundir import CorruptRunFile, RunDir

TESTS = Path(__file__).parent
ROOT = TESTS.parent
SEARCH = f"hydra.searchpath=[file://{TESTS / 'harness_configs'}]"
# 8 steps, a checkpoint every 4, every step logged: a kill at step 4 or 5 is "at" or "right after" a checkpoint.
TOY = [SEARCH, "experiment=toy", "stages.align.max_steps=8", "train.checkpoint_every_n_steps=2", "eval.limit=2"]


def _steps(rd: RunDir) -> list[int]:
    return [r["step"] for r in rd.read_metrics() if "train/loss" in r]


def _ckpt_step(path: Path) -> int | None:
    return int(torch.load(path, weights_only=False)["global_step"]) if path.exists() else None


def _resume_step(rd: RunDir) -> int:
    """The step a rerun resumes from: last.ckpt, else prev.ckpt, else 0 (runner._resume_point)."""
    for path in (rd.last_checkpoint("align"), rd.previous_checkpoint("align")):
        if path.exists():
            return _ckpt_step(path) or 0
    return 0


def _bridgelab(args: list[str], fault: str | None = None, mark: Path | None = None, **kw) -> subprocess.Popen:
    """``python -m experiments.cli ARGS`` in its own session (a process-group signal reaches it and its children
    only)."""
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "1"}
    env.pop(faults.ENV, None)
    if fault:
        env[faults.ENV] = fault
    if mark:
        env[faults.MARK_ENV] = str(mark)
    return subprocess.Popen([sys.executable, "-m", "experiments.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {path}:\n{proc.stdout.read()}")
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


# 1. kill -9 at and right after a checkpoint ---------------------------------------------------------------------
def test_metrics_and_checkpoint_agree_at_every_fault_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a kill -9 leaves is what is on disk at that instant: at every named point, whatever checkpoint a rerun
    would resume from at step s, metrics.jsonl already holds the records of every step before s."""
    seen: list[tuple[str, int | None, int, list[int]]] = []
    broken: list[str] = []
    rd = RunDir(tmp_path / "r")

    def check(name: str, step: int | None = None) -> None:
        if not rd.metrics_file.exists():
            return
        resume = _resume_step(rd)
        on_disk = _steps(rd)
        seen.append((name, step, resume, on_disk))
        if not set(range(resume)) <= set(on_disk):
            broken.append(f"at {name}@{step}: resume from {resume}, on disk {on_disk}")

    monkeypatch.setattr("experiments.harness.callbacks.fault_point", check)
    monkeypatch.setattr("experiments.harness.runner.fault_point", check)
    assert main(["train", *TOY, f"run_dir={rd.path}"]) == 0
    assert not broken
    assert {name for name, *_ in seen} == {"train.step", "checkpoint.saving", "checkpoint.written",
                                           "checkpoint.committed", "stage.final", "eval.start"}
    committed = [(step, resume) for name, step, resume, _ in seen if name == "checkpoint.committed"]
    assert committed == [(2, 2), (4, 4), (6, 6)]  # each checkpoint became the resume point when committed
    right_after = [on_disk for name, step, _, on_disk in seen if name == "train.step" and step == 5]
    assert right_after and 3 in right_after[0]  # the step before the checkpoint at 4 is on disk right after it


@pytest.mark.slow
@pytest.mark.parametrize("point", ["checkpoint.committed@4", "train.step@5"])
def test_kill_9_at_a_checkpoint_then_resume_equals_an_uninterrupted_run(tmp_path: Path, point: str) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = _bridgelab(["train", *TOY, f"run_dir={killed}"], fault=f"{point}:kill")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, out
    rd = RunDir(killed)
    assert rd.read()["status"] == "running"  # nothing could record the kill
    resume = _resume_step(rd)
    assert resume == {"checkpoint.committed@4": 4, "train.step@5": 4, "checkpoint.written@4": 2}[point]
    assert set(range(resume)) <= set(_steps(rd)), (resume, _steps(rd))

    assert main(["train", *TOY, f"run_dir={killed}"]) == 0
    assert main(["train", *TOY, f"run_dir={straight}"]) == 0
    want = [(r["step"], r["train/loss"]) for r in RunDir(straight).read_metrics() if "train/loss" in r]
    got = [(r["step"], r["train/loss"]) for r in rd.read_metrics() if "train/loss" in r]
    assert [s for s, _ in got] == list(range(8))
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-5)
    assert rd.read()["status"] == "finished" and rd.read()["attempts"] == 2


# 2. SIGTERM / SIGINT ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("action", "code", "workers"), [("sigterm", 143, 0), ("sigint", 130, 0),
                                                        ("sigint_group", 130, 2)])
def test_a_signal_ends_a_run_as_interrupted_and_a_rerun_resumes_it(tmp_path: Path, action: str, code: int,
                                                                   workers: int) -> None:
    """sigint_group is Ctrl-C in a terminal: SIGINT to the process group, two DataLoader workers included."""
    proc = _bridgelab(["train", *TOY, f"run_dir={tmp_path}", f"train.num_workers={workers}"],
                      fault=f"checkpoint.committed@4:{action}")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == code, out
    assert "recorded as interrupted" in out and "run the same command again" in out
    record = RunDir(tmp_path).read()
    assert record["status"] == "interrupted" and action.split("_")[0].upper() in record["error"]
    assert _resume_step(RunDir(tmp_path)) == 4
    assert main(["train", *TOY, f"run_dir={tmp_path}"]) == 0
    assert RunDir(tmp_path).read()["status"] == "finished" and _steps(RunDir(tmp_path)) == list(range(8))


def _pids_alive(pids: list[int]) -> list[int]:
    return [p for p in pids if runlock.pid_alive(p) and not _is_zombie(p)]


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("parent_signal", [signal.SIGTERM, signal.SIGKILL])
def test_joblib_workers_stop_when_the_sweep_process_is_killed(tmp_path: Path, parent_signal: int) -> None:
    mark = tmp_path / "paused"
    sweep = tmp_path / "sweep"
    proc = _bridgelab(["sweep", *TOY, f"run_dir={sweep}", "seed=0,1", "launcher=joblib"],
                      fault="checkpoint.committed@2:pause", mark=mark)
    _wait_for(mark, proc)
    deadline = time.monotonic() + 240
    members = [sweep / "seed=0", sweep / "seed=1"]
    while not all((m / "checkpoints/align/last.ckpt").exists() for m in members):  # both workers at the pause
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    workers = [RunDir(m).read()["pid"] for m in members]
    assert len(set(workers)) == 2 and proc.pid not in workers and _pids_alive(workers) == workers
    os.kill(proc.pid, parent_signal)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    deadline = time.monotonic() + 60
    while _pids_alive(workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _pids_alive(workers), "sweep workers kept running after the sweep process was killed"
    assert [RunDir(m).read()["status"] for m in members] == ["interrupted", "interrupted"]
    if parent_signal == signal.SIGTERM:
        assert proc.returncode == 143
    assert main(["sweep", *TOY, f"run_dir={sweep}", "seed=0,1"]) == 0  # both resume and finish
    assert [RunDir(m).read()["status"] for m in members] == ["finished", "finished"]


# 3. two processes on one run directory ---------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder(tmp_path: Path, capsys) -> None:
    mark = tmp_path / "paused"
    run_dir = tmp_path / "run"
    first = _bridgelab(["train", *TOY, f"run_dir={run_dir}"], fault="checkpoint.committed@2:pause", mark=mark)
    _wait_for(mark, first)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert main(["train", *TOY, f"run_dir={run_dir}"]) != 0
    err = capsys.readouterr().err
    assert f"pid {first.pid} on host {socket.gethostname()}" in err and "in use by another bridgelab process" in err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before  # the refusal touched nothing
    first.kill()
    first.communicate(timeout=60)
    assert main(["train", *TOY, f"run_dir={run_dir}"]) == 0  # the dead holder's lock is no obstacle
    assert RunDir(run_dir).read()["status"] == "finished" and not (run_dir / runlock.LOCK_FILE).exists()


def _holder_process() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_run_lock_refuses_a_live_holder_and_takes_over_stale_ones(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from experiments.harness.runlock import RunLock; "
        f"lock = RunLock({str(tmp_path)!r}); lock.acquire(); print('locked', flush=True); time.sleep(60)")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(runlock.RunDirLocked, match=rf"pid {holder.pid} on host {socket.gethostname()}"):
            runlock.RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((tmp_path / runlock.LOCK_FILE).read_text())["pid"] == holder.pid  # left behind by kill -9
    with runlock.RunLock(tmp_path) as lock:  # the kernel dropped the dead holder's flock
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / runlock.LOCK_FILE).exists()


def test_run_lock_without_flock_judges_stale_records_by_pid_and_boot(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runlock.fcntl, "flock", no_flock)
    path = tmp_path / runlock.LOCK_FILE
    live = _holder_process()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        here = {"host": socket.gethostname(), "boot_id": runlock.boot_id()}
        path.write_text(json.dumps({**here, "pid": live.pid}))
        with pytest.raises(runlock.RunDirLocked, match=f"pid {live.pid}"):
            runlock.RunLock(tmp_path).acquire()
        for stale in ({**here, "pid": dead.pid}, {**here, "pid": live.pid, "boot_id": "an-earlier-boot"}):
            path.write_text(json.dumps(stale))
            with runlock.RunLock(tmp_path):
                assert json.loads(path.read_text())["pid"] == os.getpid()
        path.write_text(json.dumps({"host": "elsewhere", "pid": dead.pid}))  # another host: cannot tell, refuse
        with pytest.raises(runlock.RunDirLocked, match=f"If that process is gone, delete {path}"):
            runlock.RunLock(tmp_path).acquire()
    finally:
        live.kill()
        live.wait()


# 4. damaged files ------------------------------------------------------------------------------------------------
class Crash(RuntimeError):
    pass


def _crash_at_step_7(monkeypatch: pytest.MonkeyPatch) -> None:
    original = module_lib.BridgeLitModule.training_step

    def crash(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        if self.global_step == 7:
            raise Crash("simulated crash")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(module_lib.BridgeLitModule, "training_step", crash)


def test_a_truncated_last_checkpoint_is_named_with_the_fallbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys) -> None:
    run_dir = tmp_path / "run"
    args = ["train", *TOY, f"run_dir={run_dir}"]
    with monkeypatch.context() as patch:
        _crash_at_step_7(patch)
        assert main(args) != 0
    rd = RunDir(run_dir)
    last, prev = rd.last_checkpoint("align"), rd.previous_checkpoint("align")
    assert (_ckpt_step(last), _ckpt_step(prev)) == (6, 4)
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])
    capsys.readouterr()
    assert main(args) != 0
    err = capsys.readouterr().err
    assert f"{last} is damaged and cannot be loaded" in err
    assert f"resume_from_corrupt=previous (resume from {prev})" in err and "resume_from_corrupt=restart_stage" in err
    assert last.exists()  # still there: the default policy changes nothing
    assert main([*args, "resume_from_corrupt=previous"]) == 0
    assert rd.read()["status"] == "finished" and _steps(rd) == list(range(8))
    assert last.with_name("last.ckpt.corrupt").read_bytes() == data[: len(data) // 3]


def test_restart_stage_trains_a_stage_with_a_damaged_checkpoint_again(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    args = ["train", *TOY, f"run_dir={run_dir}"]
    with monkeypatch.context() as patch:
        _crash_at_step_7(patch)
        assert main(args) != 0
    rd = RunDir(run_dir)
    rd.last_checkpoint("align").write_bytes(b"not a checkpoint")
    assert main([*args, "resume_from_corrupt=restart_stage"]) == 0
    assert rd.read()["status"] == "finished" and _steps(rd) == list(range(8))
    assert rd.read()["attempts"] == 2 and not rd.previous_checkpoint("align").exists()


def test_a_damaged_final_checkpoint_is_named_and_restart_stage_trains_it_again(tmp_path: Path, capsys) -> None:
    args = ["train", *TOY, f"run_dir={tmp_path}", "stages.align.max_steps=2"]
    assert main(args) == 0
    rd = RunDir(tmp_path)
    final = rd.final_checkpoint("align")
    final.write_bytes(final.read_bytes()[:100])
    with pytest.raises(CorruptRunFile, match=f"{final} is damaged and cannot be loaded"):
        load_run(tmp_path)
    capsys.readouterr()
    assert main([*args, "eval.limit=3"]) != 0  # a re-evaluation needs the weights
    assert f"{final} is damaged" in capsys.readouterr().err
    assert main([*args, "eval.limit=3", "resume_from_corrupt=restart_stage"]) == 0
    assert rd.read()["status"] == "finished" and rd.read_scores()["colour"]["n"] == 3
    assert final.with_name("final.ckpt.corrupt").exists() and load_run(tmp_path).checkpoint == final


def test_a_damaged_run_json_is_named(tmp_path: Path, capsys) -> None:
    assert main(["train", *TOY, f"run_dir={tmp_path}", "stages.align.max_steps=2"]) == 0
    run_file = RunDir(tmp_path).run_file
    run_file.write_text(run_file.read_text()[:40])
    capsys.readouterr()
    assert main(["train", *TOY, f"run_dir={tmp_path}", "stages.align.max_steps=2"]) != 0
    err = capsys.readouterr().err
    assert f"{run_file} is damaged and cannot be read" in err and "Restore it from a copy, or delete" in err
    with pytest.raises(Exception, match=f"{run_file} is damaged"):
        load_run(tmp_path)


def test_resume_from_corrupt_rejects_an_unknown_policy(tmp_path: Path, capsys) -> None:
    assert main(["train", *TOY, f"run_dir={tmp_path}", "resume_from_corrupt=newest"]) != 0
    err = capsys.readouterr().err
    assert "resume_from_corrupt='newest' is not one of fail, previous, restart_stage" in err


# 5. a full disk --------------------------------------------------------------------------------------------------
def test_a_full_disk_at_start_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    full = tmp_path / "full"

    def on_full_disk(fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(str(full))
        except OSError:
            return False

    real_write, real_fdopen = os.write, os.fdopen

    def write(fd: int, data: bytes) -> int:
        if on_full_disk(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    class FullFile:
        def __init__(self, handle) -> None:  # type: ignore[no-untyped-def]
            self.handle = handle

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc) -> None:  # type: ignore[no-untyped-def]
            self.handle.close()

        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(fd: int, *args, **kw):  # type: ignore[no-untyped-def]
        handle = real_fdopen(fd, *args, **kw)
        return FullFile(handle) if on_full_disk(fd) else handle

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fdopen", fdopen)
    assert main(["train", *TOY, f"run_dir={full}"]) != 0
    err = capsys.readouterr().err
    assert f"Could not write the lock file {full / runlock.LOCK_FILE}: No space left on device" in err
    assert "the disk is full" in err and "run_dir=PATH" in err
    monkeypatch.setattr(os, "write", real_write)  # the lock fits; run.json does not
    assert main(["train", *TOY, f"run_dir={full}"]) != 0
    err = capsys.readouterr().err
    assert f"Could not write {full / 'run.json'}: No space left on device (the disk is full" in err


# 6. evaluation settings apart from the training identity ---------------------------------------------------------
def test_a_rerun_with_other_eval_settings_evaluates_again_without_training(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["train", *TOY, f"run_dir={tmp_path}", "train.checkpoint_every_n_steps=0"]
    assert main(args) == 0
    rd = RunDir(tmp_path)
    first = rd.read()
    trained = {p: rd.path.joinpath(p).read_bytes() for p in ("metrics.jsonl", "checkpoints/align/final.ckpt")}
    assert rd.read_scores()["colour"]["n"] == 2

    def no_training(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        raise AssertionError("a re-evaluation trained")

    monkeypatch.setattr(module_lib.BridgeLitModule, "training_step", no_training)
    assert main([*args, "eval.limit=5", "eval.max_new_tokens=2"]) == 0
    record = rd.read()
    assert record["status"] == "finished" and record["config_hash"] == first["config_hash"]
    assert record["eval_hash"] != first["eval_hash"] and record["config"]["eval"]["limit"] == 5
    assert {p: rd.path.joinpath(p).read_bytes() for p in trained} == trained  # no step trained, weights untouched
    assert {t: s["n"] for t, s in rd.read_scores().items()} == {"colour": 5, "pair": 5}
    assert len(rd.read_predictions("colour")) == 5
    updated = record["updated"]
    assert main([*args, "eval.limit=5", "eval.max_new_tokens=2"]) == 0  # same settings again: skipped
    assert rd.read()["updated"] == updated


# 7. evaluation that can be seen to work ---------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluation_scores_a_learnable_task_well_above_chance(tmp_path: Path) -> None:
    """The fast path that shows evaluation works. ``experiment=smoke`` checks plumbing only: its seconds-long world
    trains the LM for 6 steps, so every prediction is empty and exact match is 0. Here the toy colour question
    (4 colours, chance 0.25), with the bridge and the LM trained 40 steps, is answered through generation, and
    the scores come out far above chance."""
    assert main(["train", SEARCH, "experiment=toy", f"run_dir={tmp_path}", "data.pair_task=false", "data.n_eval=16",
                 "eval.limit=null", "stages.align.max_steps=40", "stages.align.lr=3e-3",
                 "stages.align.trainable=[bridge*,lm]"]) == 0
    rd = RunDir(tmp_path)
    scores, predictions = rd.read_scores()["colour"], rd.read_predictions("colour")
    assert scores["n"] == 16 and scores["chance"] == 0.25
    answered = [p["prediction"] for p in predictions if p["prediction"] in harness_toy.COLOURS]
    assert len(answered) >= 12 and len(set(answered)) > 1  # colour words, not one answer for every image
    assert scores["exact_match"] >= 0.75  # 0.8125 measured (13 of 16)
