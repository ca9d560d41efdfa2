"""Execute the example notebooks headless on tiny settings (nbclient) and check what they produce.

Each notebook's ``parameters`` cell is replaced by tiny settings; the kernel runs this interpreter (the project's
venv: jupyter_client maps the ``python3`` kernelspec's ``python`` to ``sys.executable``, checked below) in a
temporary directory, offline, with the Agg backend and one thread.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT_S = 180


def execute(name: str, parameters: str, workdir: Path) -> nbformat.NotebookNode:
    """Run ``notebooks/<name>`` with its parameters cell replaced by ``parameters``; returns the executed notebook."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name} needs exactly one cell tagged 'parameters', found {len(tagged)}"
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        f"{name} is saved with outputs"
    )
    tagged[0].source = parameters
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print('KERNEL', sys.executable)"))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute(env=env)
    assert f"KERNEL {sys.executable}" in stdout(nb), "the notebook kernel is not this interpreter"
    return nb


def stdout(nb: nbformat.NotebookNode) -> str:
    return "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.output_type == "stream"
    )


def test_quickstart(tmp_path: Path) -> None:
    nb = execute(
        "01_quickstart.ipynb",
        'BRIDGE = "qformer"\nBRIDGE_SIZE = "tiny"\nENCODER = "tiny_clip"\nSECOND_EXPERT = "tiny_convnet"\n'
        'LLM = "tiny_llama"\nMAX_NEW_TOKENS = 3\nOUT_DIR = "out"\nSEED = 0\n',
        tmp_path,
    )
    text = stdout(nb)
    assert "visual tokens (N_media, T, D_lm): (3, 8, 64)" in text  # 3 media items, 8 tiny Q-Former queries
    assert "generated ids (2, " in text

    table = pd.read_csv(tmp_path / "out" / "bridges.csv").set_index("bridge")
    core = {"mlp", "qformer", "perceiver", "eagle", "mmfuser", "flamingo", "hyper_attention"}
    assert set(table.index) == core | {"avgpool", "pixel_shuffle", "c_abstractor"}  # with the token-matched baselines
    assert (table["bridge_params"] > 0).all()
    assert table.loc["eagle", "encoders"] == "clip+convnext"
    inject = table[table["kind"] == "inject"]
    assert set(inject.index) == {"flamingo", "hyper_attention"} and (inject["lm_tokens_per_media"] == 1).all()
    # Same batch for all: inject bridges keep the text length; a prefix bridge replaces each <image> by T tokens,
    # and the padded length is set by sample 1 (the longer text, with two images).
    lengths = table["logits"].map(lambda s: json.loads(s.replace("(", "[").replace(")", "]"))[1])
    text_len = lengths["hyper_attention"]
    assert lengths["flamingo"] == text_len
    for name, row in table[table["kind"] == "prefix"].iterrows():
        assert lengths[name] == text_len + 2 * (row["visual_tokens_per_media"] - 1), name

    for figure in ("perceiver_attention.png", "flamingo_media_mask.png"):
        assert (tmp_path / "out" / figure).stat().st_size > 1000, figure


SWEEP_PARAMETERS = """
SWEEP_DIR = None
DATA = {data!r}
WORLD = "tiny"
WORLD_CACHE = "world_cache"
RUN_DIR = "runs"
PLOTS_DIR = "plots"
BRIDGE_NAMES = {bridges!r}
SEEDS = {seeds!r}
STEPS = 4
BATCH_SIZE = 8
N_TRAIN, N_EVAL = 16, 4
"""


@pytest.mark.parametrize(
    "data, bridges, seeds, tasks",
    [
        ("colours", ["mlp", "perceiver"], [0, 1], ["colour", "same_colour"]),
        ("world", ["eagle", "flamingo"], [0], ["attribute", "compare"]),  # the tiny world, built in tmp_path
    ],
)
def test_analyse_sweep(tmp_path: Path, data: str, bridges: list[str], seeds: list[int], tasks: list[str]) -> None:
    nb = execute("02_analyse_sweep.ipynb", SWEEP_PARAMETERS.format(data=data, bridges=bridges, seeds=seeds), tmp_path)
    expected = sorted(f"{b}-seed{s}" for b in bridges for s in seeds)
    assert sorted(p.parent.name for p in (tmp_path / "runs").glob("*/run.json")) == expected
    for run in expected:
        record = json.loads((tmp_path / "runs" / run / "run.json").read_text())
        assert record["status"] == "finished", (run, record.get("error"))
        assert record["seed"] == int(run[-1])
    if data == "world":
        config = json.loads((tmp_path / "runs" / "eagle-seed0" / "run.json").read_text())["config"]
        assert config["encoder"] == {"vit": {"world": "vit"}, "expert": {"world": "expert"}}
        assert (tmp_path / "world_cache").is_dir()

    summary = (tmp_path / "plots" / "summary.md").read_text().splitlines()
    assert summary[0].startswith("| bridge | task | exact_match | seeds |")
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in summary[2:]]
    assert sorted((c[0], c[1]) for c in cells) == sorted((b, t) for b in bridges for t in tasks)
    assert all(" ± " in c[2] and c[3] == str(len(seeds)) for c in cells)
    for plot in (
        "exact_match_vs_visual_tokens_per_media.png",
        "exact_match_vs_train_samples_per_s.png",
        "learning_curves.png",
    ):
        assert (tmp_path / "plots" / plot).stat().st_size > 1000, plot

    text = stdout(nb)
    assert "weights from runs/" in text and "final.ckpt" in text  # load_run rebuilt a trained model
    assert ("fresh pictures: [(" in text) == (data == "colours")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
