"""The README's "bridgelab's own study" commands, exactly as printed: each sweep composes to the experiment it names
(with its run directory), and each report command, run in a folder whose ``runs/`` holds a tiny finished sweep of
that experiment, writes the table, the scores and the plots where the README says."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pandas as pd
import pytest

from experiments.cli import main
from experiments.harness.config import compose

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = ["world=tiny", "data.train_size=16", "data.eval_size=6", "data.tasks=[attribute]",
        "train.effective_batch_size=4", "eval.batch_size=6", "trainer.progress_bar=false", "seed=0"]


def study_section() -> str:
    """The README's "bridgelab's own study" section, up to the next second-level heading."""
    return README.read_text().split("## bridgelab's own study", 1)[1].split("\n## ", 1)[0]


def study_commands() -> list[list[str]]:
    section = study_section()
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert blocks, "the study section lost its command blocks"
    return [shlex.split(line) for block in blocks for line in block.strip().splitlines()]


def test_each_sweep_is_followed_by_a_report_on_its_run_directory() -> None:
    commands = study_commands()
    assert [c[:2] for c in commands] == [["bridgelab", "sweep"], ["bridgelab", "report"]] * (len(commands) // 2)
    for sweep, report in zip(commands[::2], commands[1::2]):
        run_dir = compose(sweep[2:]).run_dir
        assert report[2] == str(run_dir) and report[3] == "--out" and report[4].startswith("results/study/")


@pytest.mark.slow
def test_the_report_commands_write_the_files_the_readme_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    commands = study_commands()
    for sweep, report in zip(commands[::2], commands[1::2]):
        short = [f"stages.{stage}.max_steps=2" for stage in compose(sweep[2:]).stages]  # align (and finetune)
        # the printed command's own overrides (a run_dir, a budget) first, then a tiny world, two bridges, 2 steps
        assert main(["sweep", *sweep[2:], "bridge=mlp,hyper_attention", *TINY, *short]) == 0
        assert main(report[1:]) == 0
        out = tmp_path / report[4]
        scores = pd.read_csv(out / "scores.csv")
        assert set(scores["bridge"]) == {"mlp", "hyper_attention"} and "trainable_params" in scores
        assert "| task | best | worst |" in (out / "table.md").read_text()
        assert (out / "plots" / "exact_match_vs_flops_per_sample.png").exists()


def test_the_token_count_table_is_the_committed_scores() -> None:
    """Every cell of the README's token-count table is mean ± std over the seeds in results/study/token_sweep."""
    section = README.read_text().split("**The token count:", 1)[1].split("What it shows", 1)[0]
    rows = re.findall(r"^\| (\w+) \| (\w+) \| (.+) \| (.+) \| (.+) \|$", section, re.M)[1:]  # the header row dropped
    scores = pd.read_csv(README.parent / "results/study/token_sweep/scores.csv")
    stats = scores.groupby(["bridge", "task", "visual_tokens_per_media"])["exact_match"].agg(["mean", "std", "count"])
    assert {(b, t) for b, t, *_ in rows} == {(b, t) for b, t, _ in stats.index}  # every bridge and task, no others
    for bridge, task, *cells in rows:
        for tokens, cell in zip((16, 4, 1), cells, strict=True):
            mean, std, count = stats.loc[(bridge, task, tokens)]
            assert cell == f"{mean:.3f} ± {std:.3f}" and count == 3, (bridge, task, tokens, cell)


def study_table(marker: str) -> tuple[list[str], list[list[str]]]:
    """The first markdown table after ``marker`` in the study section: its header cells and its bridge rows
    (the *chance* / *random image* / *text ceiling* rows dropped, bold marks removed)."""
    after = study_section().split(marker, 1)[1]
    lines = [line for line in after.splitlines() if line.startswith("|")]
    lines = lines[: next((i for i, line in enumerate(lines) if "*text ceiling*" in line), len(lines))]
    header, *rows = ([cell.strip().replace("**", "").strip("`") for cell in line.strip("|").split("|")]
                     for line in lines)
    return header, [row for row in rows if not set(row[0]) <= {"-"} and not row[0].startswith("*")]


@pytest.mark.parametrize("marker, results", [
    ("**All ten bridges", "results/study/full_ablation"),
    ("**The same study at 1500 + 1000 steps**", "results/study/full_ablation_long"),
])
def test_the_study_tables_are_the_committed_scores(marker: str, results: str) -> None:
    """Every task cell of the README's study tables is mean ± std over the seeds committed in ``results`` (the mean
    alone for one seed), with every bridge of the scores and no other; an ``n`` column is the number of seeds."""
    header, rows = study_table(marker)
    scores = pd.read_csv(README.parent / results / "scores.csv")
    stats = scores.groupby(["bridge", "task"])["exact_match"].agg(["mean", "std", "count"])
    tasks = [cell for cell in header if cell in set(scores["task"])]
    assert tasks == sorted(set(scores["task"]), key=tasks.index) and len(tasks) == scores["task"].nunique()
    assert {row[0] for row in rows} == set(scores["bridge"])
    for row in rows:
        cells = dict(zip(header, row, strict=True))
        for task in tasks:
            mean, std, count = stats.loc[(row[0], task)]
            expected = f"{mean:.3f}" if count == 1 else f"{mean:.3f} ± {std:.3f}"  # one seed has no std
            assert cells[task] == expected, (row[0], task, cells[task])
            if "n" in cells:
                assert int(cells["n"]) == count, (row[0], task)
