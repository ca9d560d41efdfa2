"""``notebooks/03_your_data.ipynb`` executed headless on tiny settings: LLaVA JSON written, two bridges trained,
``bridgelab eval`` by generation and likelihood, one comparison table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from test_notebooks import execute, stdout

PARAMETERS = """
EXPORT_DIR = "your_data"
TASKS = ["attribute", "compare"]
N_TRAIN, N_EVAL = 16, 8
BRIDGES = ["mlp", "perceiver"]
STEPS = 3
WORLD = "tiny"
WORLD_CACHE = "world_cache"
RUN_DIR = "runs"
EVAL_DIR = "evals"
"""


def test_your_data_notebook(tmp_path: Path) -> None:
    nb = execute("03_your_data.ipynb", PARAMETERS, tmp_path)
    text = stdout(nb)
    assert '"image": [' in text and "<image>" in text  # a two-image LLaVA record was shown
    assert "32 training records" in text
    records = json.loads((tmp_path / "your_data" / "train.json").read_text())
    assert len(records) == 32 and all((tmp_path / "your_data" / (r["image"] if isinstance(r["image"], str) else
                                                                   r["image"][0])).exists() for r in records)
    for bridge in ("mlp", "perceiver"):
        run = json.loads((tmp_path / "runs" / bridge / "run.json").read_text())
        assert run["status"] == "finished" and run["config"]["data"]["name"].endswith("llava")
        for mode in ("generate", "loglikelihood"):
            path = tmp_path / "evals" / f"{bridge}-{mode}" / "eval" / "compare" / "scores.json"
            scores = json.loads(path.read_text())
            assert scores["n"] == 8 and scores["mode"] == mode
    table = pd.read_csv(tmp_path / "evals" / "comparison.csv")
    assert sorted(zip(table["bridge"], table["task"])) == [(b, t) for b in ("mlp", "perceiver")
                                                           for t in ("attribute", "compare")]
    assert {"generate", "loglikelihood", "chance"} <= set(table.columns)
    assert table[["generate", "loglikelihood"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (table.loc[table["task"] == "compare", "chance"] == 0.5).all()
