"""The README's Evaluation commands, exactly as printed, through ``experiments.cli.main``."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from experiments.cli import main
from experiments.evaluation.command import split_overrides

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[list[str]]:
    section = README.read_text().split("## Evaluation", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the Evaluation section lost its command block"
    return [shlex.split(line) for line in block.group(1).strip().splitlines()]


def test_readme_eval_commands_take_only_data_and_eval_overrides() -> None:
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["bridgelab", "export-world"], ["bridgelab", "train"]] + [
        ["bridgelab", "eval"]] * 2
    for command in commands[2:]:
        overrides = [a for a in command[3:] if "=" in a]
        group, data, evaluation, _ = split_overrides(overrides)
        assert len(group) + len(data) + len(evaluation) == len(overrides)


@pytest.mark.slow
def test_readme_eval_commands_run_as_printed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for command in readme_commands():
        assert main(command[1:]) == 0, command
    ll = json.loads((tmp_path / "runs/llava_mlp_ll/eval/attribute/scores.json").read_text())
    assert ll["mode"] == "loglikelihood" and ll["n"] == 16 and ll["metric"] == "exact_match"
    preds = (tmp_path / "runs/llava_mlp_ll/eval/attribute/predictions.jsonl").read_text().splitlines()
    first = json.loads(preds[0])
    assert first["prediction"] in first["meta"]["choices"] and len(first["option_logprobs"]) == len(
        first["meta"]["choices"])
    world = tmp_path / "runs/llava_mlp_world"
    assert sorted(p.name for p in (world / "eval").iterdir()) == ["attribute"]
    assert json.loads((world / "run.json").read_text())["evaluated_from"] == "runs/llava_mlp"
    from experiments.analysis import load_runs

    df = load_runs(tmp_path / "runs")
    rescored = df[df["evaluated_from"].notna()]
    assert set(rescored["run"]) == {"llava_mlp_ll", "llava_mlp_world"}
