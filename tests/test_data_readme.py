"""The README's real-data commands, exactly as printed: the exports run, and each train command composes, reads its
data back, and (slow) trains end to end through ``experiments.cli.main``."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from experiments.cli import main
from experiments.harness.config import compose
from experiments.harness.data import DATA_SOURCES

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[list[str]]:
    section = README.read_text().split("## Real data", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the Real data section lost its command block"
    return [shlex.split(line) for line in block.group(1).strip().splitlines()]


def run_cli(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0, argv
    return out.getvalue()


def test_readme_exports_run_and_each_train_command_reads_its_data(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["bridgelab", "export-world"], ["bridgelab", "train"]] * 3
    for command in commands:
        if command[1] == "export-world":
            printed = run_cli(command[1:])
            assert "bridgelab train data=" in printed
            continue
        data = compose(command[2:]).data
        entry, config = DATA_SOURCES.make_config(data)
        built = entry.cls(config, None).build(0)
        assert built.train and built.eval, command
        first = next(iter(built.train.values()))[0]
        assert first["images"] and first["text"].count("<image>") == len(first["images"])


@pytest.mark.slow
def test_readme_train_commands_train_end_to_end(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for command in readme_commands():
        run_cli(command[1:])
        if command[1] == "train":
            record = json.loads((tmp_path / "runs" / "smoke" / "mlp" / "run.json").read_text())
            assert record["status"] == "finished", (command, record.get("error"))
            assert record["metrics"]["eval/mean_exact_match"] >= 0
            (tmp_path / "runs").rename(tmp_path / f"runs-{command[3]}")  # the next command starts afresh
