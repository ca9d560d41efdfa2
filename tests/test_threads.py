"""The thread governor: torch's intra-op threads follow the cores other processes leave free (issue 11, section 4).

The machine is faked (busy seconds, own CPU seconds, clock), so every case is exact; one case reads the real
``/proc/stat`` where it exists."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experiments.harness import threads
from experiments.harness.threads import ThreadGovernor, governor_from_env, machine_busy_seconds


class FakeMachine:
    """Advances the clock by ``dt`` per sample; ``others`` cores busy elsewhere, ``mine`` cores used by us."""

    def __init__(self) -> None:
        self.t, self.busy_s, self.own_s, self.applied = 0.0, 0.0, 0.0, []

    def run(self, seconds: float, others: float, mine: float) -> None:
        self.t += seconds
        self.busy_s += seconds * (others + mine)
        self.own_s += seconds * mine

    def governor(self, max_threads: int = 2, cores: int = 2) -> ThreadGovernor:
        return ThreadGovernor(max_threads=max_threads, cores=cores, interval_s=5.0, busy=lambda: self.busy_s,
                              own=lambda: self.own_s, clock=lambda: self.t, set_threads=self.applied.append)


def test_threads_drop_when_another_process_takes_a_core_and_come_back_when_it_stops() -> None:
    m = FakeMachine()
    g = m.governor()
    assert g.tick() == 2 and m.applied == []  # first sample: nothing to compare yet
    m.run(5.0, others=1.0, mine=1.0)  # one busy program elsewhere
    assert g.tick() == 1 and m.applied == [1] and g.others == pytest.approx(1.0)
    m.run(5.0, others=0.05, mine=1.0)  # it stopped; only background noise is left
    assert g.tick() == 2 and m.applied == [1, 2]
    m.run(5.0, others=0.0, mine=2.0)  # our own busy threads are never counted as load
    assert g.tick() == 2 and m.applied == [1, 2]


def test_a_partial_load_changes_nothing_until_it_is_clear() -> None:
    m = FakeMachine()
    g = m.governor()
    g.tick()
    m.run(5.0, others=0.6, mine=2.0)  # a burst: 1.4 free cores is not clearly fewer than 2
    assert g.tick() == 2 and m.applied == []
    m.run(5.0, others=0.8, mine=1.5)
    assert g.tick() == 1 and g.changes == 1
    m.run(5.0, others=0.4, mine=1.0)  # 1.6 free cores is not clearly 2 either
    assert g.tick() == 1 and m.applied == [1]


def test_ticks_inside_the_interval_only_read_the_clock() -> None:
    m = FakeMachine()
    g = m.governor()
    g.tick()
    m.run(4.0, others=1.0, mine=1.0)
    assert g.tick() == 2 and m.applied == []  # 4 s < 5 s: not sampled
    m.run(1.0, others=1.0, mine=1.0)
    assert g.tick() == 1


def test_the_count_stays_between_one_and_the_starting_count() -> None:
    m = FakeMachine()
    g = m.governor(max_threads=4, cores=4)
    g.tick()
    m.run(5.0, others=3.9, mine=0.1)  # everything taken: still one thread
    assert g.tick() == 1
    m.run(5.0, others=0.0, mine=1.0)
    assert g.tick() == 4
    g = m.governor(max_threads=2, cores=8)  # OMP_NUM_THREADS=2 on a big machine: never more than 2
    g.tick()
    m.run(5.0, others=0.0, mine=2.0)
    assert g.tick() == 2 and m.applied == [1, 4]


def test_without_proc_stat_nothing_changes(tmp_path: Path) -> None:
    assert machine_busy_seconds(tmp_path / "missing") is None
    applied: list[int] = []
    g = ThreadGovernor(max_threads=2, cores=2, busy=lambda: None, set_threads=applied.append)
    assert g.tick() == 2 and g.tick() == 2 and applied == []
    with pytest.raises(ValueError, match="max_threads >= 1"):
        ThreadGovernor(max_threads=0, cores=2)


def test_proc_stat_is_read_as_busy_seconds(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    import os

    hz = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal: busy = everything but idle and iowait
    stat.write_text(f"cpu  {hz} {hz} {hz} {50 * hz} {7 * hz} 0 {hz} 0 0 0\ncpu0 1 2 3\n")
    assert machine_busy_seconds(stat) == pytest.approx(4.0)
    if Path("/proc/stat").exists():
        assert machine_busy_seconds() > 0


def test_the_environment_chooses_auto_or_a_fixed_count() -> None:
    before = torch.get_num_threads()
    try:
        g = governor_from_env({"BRIDGELAB_THREADS": "auto"})
        assert isinstance(g, ThreadGovernor) and g.max_threads == before
        assert isinstance(governor_from_env({}), ThreadGovernor)  # auto is the default
        assert governor_from_env({"BRIDGELAB_THREADS": "1"}) is None and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="BRIDGELAB_THREADS='two' is not understood.*positive thread count"):
            governor_from_env({"BRIDGELAB_THREADS": "two"})
    finally:
        torch.set_num_threads(before)


def test_follow_load_uses_one_process_wide_governor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "_GOVERNOR", [])
    monkeypatch.setenv("BRIDGELAB_THREADS", str(torch.get_num_threads()))
    assert threads.follow_load() == torch.get_num_threads()
    assert threads._GOVERNOR == [None]  # a fixed count: no governor, the count applied once


def test_the_run_record_lists_the_changes_since_the_run_started(monkeypatch: pytest.MonkeyPatch) -> None:
    m = FakeMachine()
    g = m.governor()
    monkeypatch.setattr(threads, "_GOVERNOR", [g])
    monkeypatch.setenv("BRIDGELAB_THREADS", "auto")
    g.tick()
    m.run(5.0, others=1.0, mine=1.0)
    g.tick()  # a change at t=5, before the run
    started = m.t + 0.01  # the run starts just after that change
    m.run(7.0, others=0.0, mine=1.0)
    g.tick()  # and one 7 s into it
    record = threads.thread_record(started)
    assert record["policy"] == "auto" and record["changes"] == [[7.0, 2]]
    assert record["torch_threads"] == torch.get_num_threads()  # the fake never touched torch


def test_parallel_workers_start_from_their_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "_GOVERNOR", [])
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert threads.share_cores(2, {}) == 2  # auto (the default): half the cores each
        torch.set_num_threads(4)
        assert threads.share_cores(8, {"BRIDGELAB_THREADS": "auto"}) == 1  # never below one
        torch.set_num_threads(3)
        assert threads.share_cores(2, {"BRIDGELAB_THREADS": "3"}) == 3  # a fixed count is the user's choice
        assert threads.share_cores(1, {}) == 3  # one worker: the whole machine, as torch set it
        torch.set_num_threads(1)
        assert threads.share_cores(2, {}) == 1  # never above what torch started with (OMP_NUM_THREADS)
    finally:
        torch.set_num_threads(before)
