"""Issue 12, sections 1 and 3: overrides that take effect, tables that keep configs apart, refusals that touch
nothing, and the README's plug-in commands as printed. Every test goes through ``experiments.cli.main`` (or a
subprocess of ``bridgelab``) where the issue found the CLI path broken."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import harness_toy  # noqa: F401  (registers the toy data source)
from experiments.cli import main
from experiments.harness.build import build_model, build_world
from experiments.harness.config import compose, validate_config
from experiments.harness.rundir import RunDir

TESTS = Path(__file__).parent
ROOT = TESTS.parent
SEARCH = f"hydra.searchpath=[file://{TESTS / 'harness_configs'}]"
TOY = [SEARCH, "experiment=toy", "eval.limit=2"]
FAST_SMOKE = ["stages.align.max_steps=2", "eval.limit=2", "efficiency.flops=false", "trainer.progress_bar=false"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (a refusal must leave all of them as they were)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text())


# 1. the command line wins over a preset's by_bridge -----------------------------------------------------------
@pytest.mark.parametrize("experiment", ["smoke", "quick_ablation", "full_ablation"])
def test_command_line_bridge_values_win_over_every_preset(experiment: str) -> None:
    overrides = [f"experiment={experiment}", "bridge=perceiver", "bridge.num_latents=12", "world=tiny"]
    run = validate_config(compose(overrides))
    assert run.bridge["num_latents"] == 12
    assert run.by_bridge["perceiver"]["bridge"]["num_latents"] == 12  # the preset's value does not come back
    model = build_model(run, build_world(run))
    assert tuple(model.bridge.resampler.latents.shape)[0] == 12 and model.bridge.num_visual_tokens() == 12
    flamingo = validate_config(compose([f"experiment={experiment}", "bridge=flamingo",
                                        "bridge.cross_attn_every_n_layers=2"]))
    assert flamingo.bridge["cross_attn_every_n_layers"] == 2


def test_a_run_under_smoke_records_and_builds_the_command_line_value(tmp_path: Path) -> None:
    run_dir = tmp_path / "p12"
    assert main(["train", "experiment=smoke", "bridge=perceiver", "bridge.num_latents=12", *FAST_SMOKE,
                 f"run_dir={run_dir}"]) == 0
    config = record(run_dir)["config"]
    assert config["bridge"]["num_latents"] == 12 and config["by_bridge"]["perceiver"]["bridge"]["num_latents"] == 12
    assert json.loads((run_dir / "efficiency.json").read_text())["visual_tokens_per_media"] == 12
    from experiments.harness.loading import load_run

    assert tuple(load_run(run_dir).model.bridge.resampler.latents.shape)[0] == 12


@pytest.mark.slow
def test_a_sweep_over_a_bridge_setting_under_a_preset_trains_different_models(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    assert main(["sweep", "experiment=smoke", "bridge=perceiver", "bridge.num_latents=4,12", *FAST_SMOKE,
                 f"run_dir={sweep}"]) == 0
    tokens = {p.name: json.loads((p / "efficiency.json").read_text())["visual_tokens_per_media"]
              for p in sweep.iterdir() if (p / "efficiency.json").exists()}
    assert tokens == {"bridge.num_latents=4": 4, "bridge.num_latents=12": 12}
    capsys.readouterr()
    assert main(["table", str(sweep)]) == 0
    table = capsys.readouterr().out
    assert "| bridge | task | bridge.num_latents |" in table and "| perceiver | attribute | 4 |" in table


def test_wrong_values_of_a_preset_bridge_fail_before_any_run(tmp_path: Path, capsys) -> None:
    assert main(["train", "experiment=smoke", "bridge=perceiver", "bridge.num_latents=abc",
                 f"run_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "Wrong type for config key 'bridge.num_latents'" in err and "'abc'" in err
    assert main(["train", "experiment=smoke", "bridge=perceiver", "bridge.num_latents=0", f"run_dir={tmp_path}"]) == 2
    assert "'bridge.num_latents' = 0 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "run.json").exists()


def test_a_flamingo_interval_above_the_lm_depth_fails_instead_of_being_ignored(tmp_path: Path) -> None:
    assert main(["train", "experiment=smoke", "bridge=flamingo", "bridge.cross_attn_every_n_layers=100",
                 *FAST_SMOKE, f"run_dir={tmp_path}"]) == 1
    rec = record(tmp_path)
    assert rec["status"] == "failed" and "'bridge.cross_attn_every_n_layers' = 100 is out of range" in rec["error"]
    assert rec["config"]["bridge"]["cross_attn_every_n_layers"] == 100  # the command line's value, not the preset's


def test_by_bridge_keys_are_checked_against_the_bridge_schema() -> None:
    from encoders.registry import ConfigError

    with pytest.raises(ConfigError, match=r"'by_bridge.perceiver.bridge.max_num_frames' is valid but not set.*"
                                          r"'\+by_bridge.perceiver.bridge.max_num_frames=...'"):
        compose(["experiment=smoke", "by_bridge.perceiver.bridge.max_num_frames=2"])
    with pytest.raises(ConfigError, match=r"Did you mean 'max_num_frames'\?.*Valid keys at "
                                          r"'by_bridge.perceiver.bridge': depth, .*max_num_frames"):
        compose(["experiment=smoke", "by_bridge.perceiver.bridge.max_num_framez=2"])
    run = validate_config(compose(["experiment=smoke", "bridge=perceiver",
                                   "+by_bridge.perceiver.bridge.max_num_frames=2"]))
    assert run.bridge["max_num_frames"] == 2


# 2. tables keep configs apart -----------------------------------------------------------------------------------
def test_table_keeps_a_swept_setting_apart_and_shows_it(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    assert main(["sweep", *TOY, f"run_dir={sweep}", "bridge.projector=linear,mlp2x_gelu", "seed=0,1"]) == 0
    capsys.readouterr()
    assert main(["table", str(sweep)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| mlp |")]
    assert len(lines) == 4  # (linear, mlp2x_gelu) x (colour, pair), each over 2 seeds
    assert {line.split(" | ")[2] for line in lines} == {"linear", "mlp2x_gelu"}
    assert all(line.split(" | ")[4] == "2" for line in lines)  # the seeds column


def test_table_on_a_folder_without_finished_runs_lists_the_failures(tmp_path: Path, capsys) -> None:
    assert main(["sweep", *TOY, f"run_dir={tmp_path}", "bridge.projector=mlp0x_gelu,mlp9y"]) == 1
    capsys.readouterr()
    assert main(["table", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no finished run under" in err and "2 run(s) not finished" in err and "mlp0x_gelu" in err
    assert main(["table", str(tmp_path / "nothing")]) == 1
    assert "No such runs directory" in capsys.readouterr().err


# 3. a refusal touches nothing -----------------------------------------------------------------------------------
def test_a_refused_rerun_leaves_the_run_directory_byte_for_byte(tmp_path: Path, capsys) -> None:
    assert main(["train", *TOY, f"run_dir={tmp_path}"]) == 0
    before = snapshot(tmp_path)
    assert main(["train", *TOY, f"run_dir={tmp_path}", "stages.align.lr=0.5"]) != 0
    assert main(["train", *TOY, f"run_dir={tmp_path}", "resume=false"]) != 0
    assert snapshot(tmp_path) == before
    assert record(tmp_path)["status"] == "finished"
    capsys.readouterr()
    assert main(["table", str(tmp_path)]) == 0 and "| mlp | colour |" in capsys.readouterr().out


@pytest.mark.parametrize("launcher", ["local", pytest.param("joblib", marks=pytest.mark.slow)])
def test_a_sweep_rerun_with_a_changed_override_is_refused_untouched_and_exits_non_zero(
    tmp_path: Path, launcher: str
) -> None:
    assert main(["sweep", *TOY, f"run_dir={tmp_path}", "seed=0,1", f"launcher={launcher}"]) == 0
    before = snapshot(tmp_path)
    assert main(["sweep", *TOY, f"run_dir={tmp_path}", "seed=0,1", "stages.align.lr=0.5", f"launcher={launcher}"]) != 0
    assert snapshot(tmp_path) == before
    assert {record(p)["status"] for p in tmp_path.iterdir() if p.is_dir()} == {"finished"}


def test_a_joblib_worker_keeps_its_caches_instead_of_being_recycled_as_leaking(monkeypatch) -> None:
    from joblib.externals.loky import process_executor

    from experiments.harness.app import keep_worker_caches

    monkeypatch.setattr(process_executor, "_MAX_MEMORY_LEAK_SIZE", int(3e8))  # loky's own default
    keep_worker_caches()
    assert process_executor._MAX_MEMORY_LEAK_SIZE >= 2**62  # the pools and features kept for later members


@pytest.mark.slow
def test_a_joblib_sweeps_members_share_their_worker(tmp_path: Path) -> None:
    """Two workers run the four members, each several in turn (its world, pools and features built once)."""
    assert main(["sweep", *TOY, f"run_dir={tmp_path}", "seed=0,1,2,3", "launcher=joblib"]) == 0
    pids = [record(p)["pid"] for p in tmp_path.iterdir() if p.is_dir()]
    assert len(pids) == 4 and len(set(pids)) <= 2 and os.getpid() not in pids


@pytest.mark.slow
def test_a_relative_run_dir_lands_in_the_callers_directory_with_reused_joblib_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """loky keeps its workers between sweeps of one process; a later sweep from another directory still writes there."""
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        assert main(["sweep", *TOY, "run_dir=runs/sweep", "seed=0,1", "launcher=joblib"]) == 0
        assert sorted(p.name for p in (tmp_path / name / "runs" / "sweep").iterdir() if p.is_dir()) == [
            "seed=0", "seed=1"
        ]


def test_load_run_refuses_a_failed_run(tmp_path: Path) -> None:
    from experiments.harness.loading import load_run

    assert main(["train", *TOY, f"run_dir={tmp_path}", "stages.align.max_steps=2"]) == 0
    RunDir(tmp_path).update(status="failed", error="RuntimeError: boom")
    with pytest.raises(RuntimeError, match=r"status 'failed': RuntimeError: boom.*allow_unfinished=True"):
        load_run(tmp_path)
    with pytest.warns(UserWarning, match="status 'failed'"):
        assert load_run(tmp_path, allow_unfinished=True).checkpoint is not None


# 4. the README's plug-in commands, as printed ----------------------------------------------------------------------
def readme_block(start: str) -> list[str]:
    """The README's command lines that start with ``start`` (comments and continuation text dropped)."""
    text = (ROOT / "README.md").read_text()
    return [line.split("  #")[0].strip() for line in text.splitlines() if line.startswith(start)]


@pytest.mark.slow
def test_readme_plugin_commands_work_as_printed(tmp_path: Path) -> None:
    commands = readme_block("PYTHONPATH=tests/plugins bridgelab train")
    assert len(commands) == 2 and "'~bridge'" in commands[0] and "mean_pool:mean_pool" in commands[1]
    (tmp_path / "tests").mkdir()
    shutil.copytree(TESTS / "plugins", tmp_path / "tests" / "plugins")
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    hashes = []
    for command in commands:
        done = subprocess.run(["bash", "-c", f"{command} {' '.join(FAST_SMOKE)}"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        name = re.search(r"bridge\.name=(\S+)", command).group(1)
        rec = record(tmp_path / "runs" / "smoke" / name)
        assert rec["status"] == "finished" and rec["config"]["bridge"]["name"] == "mean_pool"
        assert json.loads((tmp_path / "runs" / "smoke" / name / "efficiency.json").read_text())[
            "visual_tokens_per_media"] == 2  # MeanPoolConfig.tokens
        hashes.append(rec["config_hash"])
    assert hashes[0] == hashes[1]  # the same plug-in named two ways is the same config


def test_plugin_example_documents_its_contract() -> None:
    """The example names everything a plug-in author needs (it is built and trained by the test above, in a
    subprocess: importing it here would add a public bridge to this process's registry)."""
    import ast

    doc = ast.get_docstring(ast.parse((TESTS / "plugins" / "mean_pool.py").read_text()))
    for word in ("__init__(self, config, io)", "io.encoders", "io.lm", "BridgeNeeds", "num_visual_tokens",
                 "flops_per_media", "(N_media * F, P, Dv)", "(N_media, T, D_lm)"):
        assert word in doc, word
    assert [line.strip() for line in doc.splitlines() if line.strip().startswith("PYTHONPATH")] == \
        readme_block("PYTHONPATH=tests/plugins bridgelab train")


# 5. Jupyter and lint entry points resolve -------------------------------------------------------------------------
def test_make_notebooks_and_lint_targets_resolve() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("jupyterlab") for dep in extras["notebooks"])
    assert any(dep.startswith("ruff") for dep in extras["dev"])
    make = shutil.which("make")
    assert make is not None
    dry = subprocess.run([make, "-n", "-B", "notebooks"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and ".[notebooks]" in dry.stdout and "jupyter lab" in dry.stdout
    lint = subprocess.run([make, "-n", "lint"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0 and "ruff check" in lint.stdout
    assert "make notebooks" in (ROOT / "README.md").read_text()
