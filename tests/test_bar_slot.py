"""Sweep workers draw their progress bars on lines of their own (experiments/harness/bar_slot.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from experiments.harness import bar_slot

CLAIM = (
    "import sys; from pathlib import Path; from experiments.harness import bar_slot; "
    "print(bar_slot.claim(2, Path(sys.argv[1])), flush=True); sys.stdin.read()"
)


def _worker(root: Path) -> tuple[subprocess.Popen, int]:
    """A process that claims a slot among 2 and holds it until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", CLAIM, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    return proc, int(proc.stdout.readline())


def _stop(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=30)


def test_concurrent_workers_get_distinct_lines_and_a_replacement_takes_the_freed_one(tmp_path: Path) -> None:
    first, a = _worker(tmp_path)
    second, b = _worker(tmp_path)
    assert {a, b} == {0, 1}
    extra, c = _worker(tmp_path)  # more workers than n_jobs: shares line 0 rather than failing
    assert c == 0
    _stop(extra)
    _stop(first)  # its lock goes with it
    replacement, d = _worker(tmp_path)
    assert d == a
    _stop(second)
    _stop(replacement)


def test_the_trainers_bar_is_drawn_on_the_workers_line(monkeypatch) -> None:
    from lightning.pytorch.callbacks import TQDMProgressBar

    from experiments.harness.config import compose, validate_config
    from experiments.harness.trainer import batch_plan, build_trainer

    run = validate_config(compose(["experiment=smoke", "trainer.progress_bar=true"]))
    plan = batch_plan(run, run.stages["align"], world_size=1)
    monkeypatch.setattr(bar_slot, "_slot", 1)
    bars = [c for c in build_trainer(run, max_steps=2, plan=plan).callbacks if isinstance(c, TQDMProgressBar)]
    assert [bar.process_position for bar in bars] == [1]
    monkeypatch.setattr(bar_slot, "_slot", 0)
    bars = [c for c in build_trainer(run, max_steps=2, plan=plan).callbacks if isinstance(c, TQDMProgressBar)]
    assert [bar.process_position for bar in bars] == [0]
