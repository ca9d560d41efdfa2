"""Execute ``notebooks/04_reproductions.ipynb`` against the results and save it with its outputs (tables, plots).

    python -m experiments.analysis.repro notebook [--results results/repro] [--notebook PATH] [--out PATH]

The notebook is generated without outputs (``notebooks/build_notebooks.py``); this runs it headless (nbclient, the
``python3`` kernel of this interpreter, in the notebook's folder) with ``RESULTS`` set to ``--results`` (written
relative to the notebook's folder) and saves the executed copy to ``--out`` (default: in place), so that a reader
sees the results without running anything. Needs the ``dev`` extra (nbclient, ipykernel).
"""

from __future__ import annotations

import os
from pathlib import Path

NOTEBOOK = Path("notebooks/04_reproductions.ipynb")
TIMEOUT_S = 600


def execute_notebook(results: str | Path = "results/repro", notebook: str | Path = NOTEBOOK,
                     out: str | Path | None = None, out_dir: str | Path | None = None) -> Path:
    """Run ``notebook`` with ``RESULTS = <results>`` (and ``OUT_DIR`` for its figures, default a temporary folder);
    write the executed notebook to ``out`` (default: ``notebook`` itself). Returns the path written."""
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError as err:  # pragma: no cover - the dev extra is installed wherever tests run
        raise RuntimeError(f"repro notebook needs nbclient and nbformat ({err}); pip install -e '.[dev]'") from err
    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"No notebook at {notebook}; generate it with python notebooks/build_notebooks.py")
    nb = nbformat.read(notebook, as_version=4)
    tagged = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{notebook} needs exactly one cell tagged 'parameters', found {len(tagged)}")
    folder = notebook.resolve().parent
    relative = Path(os.path.relpath(Path(results).resolve(), folder)).as_posix()
    figures = "None" if out_dir is None else repr(str(Path(out_dir).resolve()))
    tagged[0].source = (f'RESULTS = "{relative}"  # the committed results (relative to notebooks/)\n'
                        f"OUT_DIR = {figures}  # the figures are written here as well (None: a temporary folder)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    client = NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    client.execute(env=env)
    target = Path(out) if out is not None else notebook
    nbformat.write(nb, target)
    return target
