"""Cells of ``04_reproductions.ipynb`` (assembled by ``build_notebooks.py``, which passes its cell helpers in).

The notebook reads only the committed results (``results/repro/<experiment>/*.csv``): a section per paper with its
table, a plot and the verdicts, the distractor-resistance curve and Flamingo's gate figure. An item without
results prints "not run yet", so the notebook executes before, during and after the sweeps. It is committed
executed: ``python -m experiments.analysis.repro notebook`` runs it in place (after ``build_notebooks.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Cell = Any


def cells(md: Callable[[str], Cell], code: Callable[[str], Cell], params: Callable[[str], Cell]) -> list[Cell]:
    from experiments.analysis.claims import PAPERS

    out = [
        md(
            r"""
            # The papers' ablations, reproduced small

            Each item of `REPRODUCTIONS.md` is a sweep (`bridgelab sweep experiment=repro/<name>`) on one shared
            budget (the embedded world's frozen ViT and LM, 200 bridge steps, 3 seeds), collected into small files
            (`python -m experiments.analysis.repro collect runs/repro/<name>`). This notebook reads only those
            files under `results/repro/`, so it renders without training. Verdicts follow the rule printed below;
            an item without results says **not run yet**.
            """
        ),
        params(
            r"""
            RESULTS = "../results/repro"  # the committed results (relative to notebooks/)
            OUT_DIR = None  # the figures are written here as well (None: a temporary folder)
            """
        ),
        code(
            r"""
            import tempfile
            from pathlib import Path

            import pandas as pd
            from IPython.display import Image, Markdown, display

            from experiments.analysis.claims import claims_by_paper
            from experiments.analysis.distractor_curve import plot_curve
            from experiments.analysis.figure_verdicts import curve_points, gate_summary, paper_gates, stop_reasons
            from experiments.analysis.repro_plots import plot_gate_series, plot_variants
            from experiments.analysis.repro_report import machine_line, overview_table, read_experiment, variants_table
            from experiments.analysis.verdict import RULE

            results, out = Path(RESULTS), Path(OUT_DIR or tempfile.mkdtemp(prefix="reproductions_"))
            out.mkdir(parents=True, exist_ok=True)
            pd.set_option("display.max_colwidth", 200)
            print("verdict rule:", RULE)
            overview = overview_table(results)
            display(overview[["item", "task", "verdict", "status"]])
            """
        ),
        code(
            r'''
            def show_paper(paper: str) -> None:
                """Each sweep of the paper: its table and bar plot, then the verdicts of its claims."""
                claims = claims_by_paper()[paper]
                for experiment in dict.fromkeys(c.experiment for c in claims if c.kind == "compare"):
                    summary, scores = read_experiment(results, experiment)
                    if summary is None or summary.empty:
                        print(f"{experiment}: not run yet (no finished run in {results / experiment / 'summary.csv'})")
                        continue
                    display(Markdown(f"**experiment=repro/{experiment}**: {machine_line(scores)}"))
                    display(Markdown(variants_table(summary)))
                    figure = plot_variants(summary, out / f"{experiment}.png", title=experiment)
                    display(Image(filename=str(figure)))
                verdicts = overview[overview["paper"] == paper][["item", "task", "verdict", "status", "detail"]]
                display(verdicts)
            '''
        ),
    ]
    for paper in PAPERS:
        out += [md(f"## {paper}"), code(f"show_paper({paper!r})")]
    out += [
        md(
            r"""
            ## The distractor-resistance curve (mPLUG-Owl3)

            Accuracy against the number of images N for every bridge, from
            `python -m experiments.analysis.distractor_curve runs/repro/<experiment> --out
            results/repro/<experiment>/curve.csv`: `mplug_distractor` at the shared 200 steps, `mplug_distractor_long`
            at 1000. Each curve stops at the first N that does not fit the LM's context (prefix bridges put 16 tokens
            per image into the sequence, cross-attention bridges one) or the stated memory budget; the reason is
            printed.
            """
        ),
        code(
            r"""
            for experiment in ("mplug_distractor", "mplug_distractor_long"):
                curve_path = results / experiment / "curve.csv"
                if not curve_path.exists():
                    print(f"distractor curve: not run yet ({curve_path} missing)")
                    continue
                curve = pd.read_csv(curve_path)
                display(Markdown(f"**experiment=repro/{experiment}**"))
                display(curve_points(curve).pivot(index="n_images", columns="bridge", values="mean").round(3))
                for bridge, reason in stop_reasons(curve).items():
                    print(f"{bridge}: {reason}")
                display(Image(filename=str(plot_curve(curve, out / f"{experiment}_curve.png"))))
            """
        ),
        md(
            r"""
            ## Flamingo's gates over training

            `|tanh alpha|` of each gated cross-attention and dense block, logged as `gate/<attn|ff>/layer<i>` scalars
            during the runs (`experiments.harness.gate_log`) and copied into `results/repro/<experiment>/gates.csv` by
            the collector: `experiment=repro/flamingo_gate` on the world's 2-layer LM, and the every-layer runs of
            `experiment=repro/flamingo_layers_deep` on the 4-layer LM of `world=deep`. The paper's figure: the gates
            start at 0 and open during training, more in deeper layers.
            """
        ),
        code(
            r"""
            for experiment, figure in (("flamingo_gate", "flamingo_gates.png"),
                                       ("flamingo_layers_deep", "flamingo_layers_deep_gates.png")):
                gates_path = results / experiment / "gates.csv"
                if gates_path.exists():
                    gates = paper_gates(pd.read_csv(gates_path))  # the paper's design when others ran too
                    display(Markdown(f"**experiment=repro/{experiment}**"))
                    display(gate_summary(gates).round(3))
                    display(Image(filename=str(plot_gate_series(gates, out / figure))))
                else:
                    print(f"gates of {experiment}: not run yet ({gates_path} missing)")
            """
        ),
    ]
    return out
