"""lmms-eval scores a bridgelab run: in-process (simple_evaluate with a model object) and through its own command
line (``python -m lmms_eval --model bridgelab``), offline, on local task YAMLs over a dataset saved to disk."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import harness_toy  # noqa: F401  (registers the toy data source)
from experiments.cli import main

pytestmark = [pytest.mark.eval_extra, pytest.mark.slow]

SEARCH = f"hydra.searchpath=[file://{Path(__file__).parent / 'harness_configs'}]"
OPTIONS = ["red", "green", "blue", "white"]

UTILS = '''
import ast

import numpy as np

def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]

def doc_to_text(doc):
    return "<image> colour ? answer :"

def doc_to_choice(doc):
    return list(doc["options"])

def exact(doc, results):
    return {"acc": float(results[0].strip() == doc["answer"])}

def argmax_choice(doc, results):  # results: one (log-prob, is_greedy) per option; the highest wins
    # lmms-eval 0.7.3 hands loglikelihood results over as str((lp, greedy)) (api/instance.py
    # unwrap_generation_output), so they are parsed back here
    lls = [float(ast.literal_eval(r)[0] if isinstance(r, str) else r[0]) for r in results]
    return {"acc": float(int(np.argmax(lls)) == doc["options"].index(doc["answer"]))}
'''

GEN = """task: bridgelab_toy_gen
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 3
  until: ["\\n"]
process_results: !function utils.exact
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

MC = """task: bridgelab_toy_mc
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_choice: !function utils.doc_to_choice
doc_to_target: answer
process_results: !function utils.argmax_choice
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value
    from torchvision.transforms.functional import to_pil_image

    root = tmp_path_factory.mktemp("lmms")
    run_dir = root / "run"
    assert main(["train", SEARCH, "experiment=toy", f"run_dir={run_dir}"]) == 0
    samples = harness_toy._samples(6, 77, 16, False)
    rows = {"image": [to_pil_image(s["images"][0]) for s in samples], "answer": [s["answer"] for s in samples],
            "options": [OPTIONS] * len(samples)}
    features = Features({"image": Image(), "answer": Value("string"), "options": Sequence(Value("string"))})
    DatasetDict({"test": Dataset.from_dict(rows, features=features)}).save_to_disk(str(root / "data"))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(UTILS)
    (tasks / "gen.yaml").write_text(GEN.format(data=root / "data"))
    (tasks / "mc.yaml").write_text(MC.format(data=root / "data"))
    return {"run": run_dir, "tasks": tasks, "data": root / "data", "root": root}


def _our_samples(data: Path) -> list[dict]:
    """The same docs as bridgelab samples (PNG-decoded pixels, as lmms-eval sees them)."""
    from datasets import load_from_disk
    from torchvision.transforms.functional import pil_to_tensor

    docs = load_from_disk(str(data))["test"]
    return [{"text": "<image> colour ? answer :", "images": [pil_to_tensor(d["image"].convert("RGB")).float() / 255],
             "answer": d["answer"], "meta": {"options": list(d["options"])}} for d in docs]


def _logprob(resp: object) -> float:
    """The log-prob of one logged loglikelihood response (lmms-eval logs ``[(lp, greedy)]`` as strings)."""
    while isinstance(resp, list) and len(resp) == 1:
        resp = resp[0]
    if isinstance(resp, str):
        resp = ast.literal_eval(resp)
    return float(resp[0])


def test_simple_evaluate_with_a_model_in_memory_matches_bridgelab_scoring(setup: dict[str, Path]) -> None:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from experiments.evaluation.likelihood import continuation_logprobs
    from experiments.evaluation.lmms import BridgelabLMM
    from experiments.harness.loading import load_run

    loaded = load_run(setup["run"])
    model = BridgelabLMM(model=loaded, max_new_tokens=3)  # the object itself: no second copy of the model
    out = simple_evaluate(model=model, tasks=["bridgelab_toy_gen", "bridgelab_toy_mc"], log_samples=True,
                          task_manager=TaskManager(include_path=str(setup["tasks"])), limit=4)
    ours = _our_samples(setup["data"])[:4]
    answers = [loaded.answer([s], max_new_tokens=3)[0] for s in ours]  # one by one, as lmms-eval asks (batch 1)
    gen = sorted(out["samples"]["bridgelab_toy_gen"], key=lambda s: s["doc_id"])
    assert [s["filtered_resps"][0] for s in gen] == answers
    expected = sum(a == s["answer"] for a, s in zip(answers, ours)) / 4
    assert out["results"]["bridgelab_toy_gen"]["acc,none"] == pytest.approx(expected)

    mc = sorted(out["samples"]["bridgelab_toy_mc"], key=lambda s: s["doc_id"])
    picks = []
    for sample, record in zip(ours, mc):
        lls = [_logprob(r) for r in record["resps"]]
        mine = [lp for lp, _ in continuation_logprobs(loaded.model, loaded.collate, sample, OPTIONS)]
        assert lls == pytest.approx(mine, abs=1e-4) and all(v < 0 for v in lls)  # log-probs, not losses
        picks.append(OPTIONS[int(torch.tensor(mine).argmax())] == sample["answer"])
    assert out["results"]["bridgelab_toy_mc"]["acc,none"] == pytest.approx(sum(picks) / 4)


def test_lmms_eval_command_line_scores_a_run_dir(setup: dict[str, Path]) -> None:
    out = setup["root"] / "cli_out"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "bridgelab", "--model_args", f"run_dir={setup['run']}",
           "--tasks", "bridgelab_toy_gen", "--include_path", str(setup["tasks"]), "--limit", "4",
           "--output_path", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}  # toy plug-in
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    # lmms-eval 0.7.3 exits 0 even when the evaluation raised, so the results file is what proves it ran
    assert done.returncode == 0 and "Error during evaluation" not in done.stderr, done.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in out.rglob("*results*.json")]
    assert results and "bridgelab_toy_gen" in results[0]["results"]
    assert 0.0 <= results[0]["results"]["bridgelab_toy_gen"]["acc,none"] <= 1.0


def test_multi_round_generation_is_refused_clearly(setup: dict[str, Path]) -> None:
    from experiments.evaluation.lmms import BridgelabLMM

    model = BridgelabLMM(run_dir=str(setup["run"]))
    with pytest.raises(NotImplementedError, match="multi-round generation is not supported"):
        model.generate_until_multi_round([])
    with pytest.raises(ValueError, match="exactly one of run_dir"):
        BridgelabLMM()


def test_vqa_normalisation_equals_lmms_evals_evalai_processor() -> None:
    from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor

    from experiments.evaluation.metrics.vqa import CONTRACTIONS, normalize_vqa_answer

    theirs = EvalAIAnswerProcessor()
    assert {k: v for k, v in theirs.CONTRACTIONS.items() if k != v} == CONTRACTIONS  # identity entries are no-ops
    cases = ["Two dogs!", "The cat.", "dont know", "3.5", "1,000", "black/white", "black / white", "Yes",
             "a man's hat", "isnt it?", "ten", "None", "up-down", "(left)", "it is 5:30pm", "couldnt've", "A.M."]
    assert [normalize_vqa_answer(c) for c in cases] == [theirs(c) for c in cases]
