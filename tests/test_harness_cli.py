"""The ``bridgelab`` command line: train, sweep (skip finished, record failures), table, params, config errors."""

from __future__ import annotations

import json
from pathlib import Path


import harness_toy  # noqa: F401  (registers the toy data source)
from experiments.cli import main

SEARCH = f"hydra.searchpath=[file://{Path(__file__).parent / 'harness_configs'}]"


def test_train_then_sweep_skips_finished_members_and_records_a_failure(tmp_path: Path, capsys) -> None:
    assert main(["train", SEARCH, "experiment=toy", f"run_dir={tmp_path / 'single'}"]) == 0
    record = json.loads((tmp_path / "single" / "run.json").read_text())
    assert record["status"] == "finished" and record["name"] == "toy"

    sweep = tmp_path / "sweep"
    assert main(["sweep", SEARCH, "experiment=toy", f"run_dir={sweep}", "seed=0,1"]) == 0
    first = {p.name: json.loads((p / "run.json").read_text())["updated"] for p in sweep.iterdir() if p.is_dir()}
    assert sorted(first) == ["seed=0", "seed=1"]
    assert main(["sweep", SEARCH, "experiment=toy", f"run_dir={sweep}", "seed=0,1"]) == 0
    again = {p.name: json.loads((p / "run.json").read_text())["updated"] for p in sweep.iterdir() if p.is_dir()}
    assert again == first  # finished members were skipped, their run.json untouched

    failing = tmp_path / "failing"
    # the failing member does not stop the other, and the sweep exits non-zero
    assert main(["sweep", SEARCH, "experiment=toy", f"run_dir={failing}", "bridge.projector=linear,mlp0x_gelu"]) == 1
    records = {p.name: json.loads((p / "run.json").read_text()) for p in failing.iterdir() if p.is_dir()}
    statuses = {name: r["status"] for name, r in records.items()}
    assert sorted(statuses.values()) == ["failed", "finished"], statuses
    broken = next(r for r in records.values() if r["status"] == "failed")
    assert "mlp0x_gelu" in broken["error"] and "Traceback" in broken["traceback"]

    capsys.readouterr()
    assert main(["table", str(sweep)]) == 0
    table = capsys.readouterr().out
    assert "| mlp | colour |" in table and "| mlp | pair |" in table and "± " in table
    assert main(["table", str(failing)]) == 0
    assert "1 run(s) not finished" in capsys.readouterr().out


def test_a_fixed_value_of_a_key_the_config_sweeps_lands_where_the_full_sweep_puts_it(tmp_path: Path) -> None:
    # experiment=toy_seeds sweeps seed 0,1 in its config; seed=1 on the command line runs one member of it
    sweep = tmp_path / "sweep"
    assert main(["sweep", SEARCH, "experiment=toy_seeds", f"run_dir={sweep}", "seed=1", "bridge.projector=linear"]) == 0
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["seed=1"]  # the fixed projector stays out
    assert main(["sweep", SEARCH, "experiment=toy_seeds", f"run_dir={sweep}", "bridge.projector=linear"]) == 0
    records = {p.name: json.loads((p / "run.json").read_text()) for p in sweep.iterdir() if p.is_dir()}
    assert sorted(records) == ["seed=0", "seed=1"] and {r["seed"] for r in records.values()} == {0, 1}


def test_config_errors_exit_with_a_message(capsys) -> None:
    assert main(["train", SEARCH, "experiment=toy", "trainer.max_stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "Unknown config key 'trainer.max_stepz'" in err and "Valid keys at 'trainer'" in err
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0 and "bridgelab sweep" in capsys.readouterr().out


def test_params_lists_every_paper_preset(capsys) -> None:
    from bridges.presets import paper_presets

    assert main(["params"]) == 0
    out = capsys.readouterr().out
    assert f"{len(paper_presets())} paper presets" in out and "all within" in out
    assert "llava15_7b" in out and "20,979,712" in out
