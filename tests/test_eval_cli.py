"""``bridgelab eval`` through the CLI entry point, and likelihood scoring on a model whose preference is known."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import harness_toy  # noqa: F401  (registers the toy data source)
from experiments.cli import main
from experiments.harness.data import DATA_SOURCES, DataSource, TaskData

SEARCH = f"hydra.searchpath=[file://{Path(__file__).parent / 'harness_configs'}]"
OPTIONS = ["red", "green", "blue", "white"]


@dataclass
class ToyChoiceConfig:
    n_eval: int = 3


if "_toy_choice" not in DATA_SOURCES:

    @DATA_SOURCES.register("_toy_choice", ToyChoiceConfig)
    class ToyChoice(DataSource):
        """Colour questions as circular multiple choice: the evaluator writes the rotations from meta['question']."""

        def build(self, seed: int) -> TaskData:
            gen = torch.Generator().manual_seed(3)
            samples = []
            for i in range(self.config.n_eval):
                colour = OPTIONS[i % len(OPTIONS)]
                img = harness_toy._image(colour, 16, gen)
                samples.append({"text": "unused", "images": [img], "answer": colour,
                                "meta": {"question": "<image> colour ?", "options": OPTIONS}})
            return TaskData(train={}, eval={"choice": samples}, info={"choice": {"metric": "circular_mc"}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy run trained through the CLI whose own evaluation ranks candidates (eval.mode=loglikelihood)."""
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    assert main(["train", SEARCH, "experiment=toy", f"run_dir={run_dir}", "eval.mode=loglikelihood"]) == 0
    return run_dir


def _scores(path: Path, task: str) -> dict[str, Any]:
    return json.loads((path / "eval" / task / "scores.json").read_text())


def _predictions(path: Path, task: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "eval" / task / "predictions.jsonl").read_text().splitlines()]


def test_training_run_evaluates_by_likelihood_when_asked(trained: Path) -> None:
    scores, preds = _scores(trained, "colour"), _predictions(trained, "colour")
    assert scores["mode"] == "loglikelihood" and scores["n"] == 4 == len(preds)
    for p in preds:  # every prediction is the candidate with the highest summed log-prob
        logps = p["option_logprobs"]
        assert len(logps) == 4 and all(v < 0 for v in logps)
        assert p["prediction"] == p["meta"]["choices"][max(range(4), key=logps.__getitem__)]
    assert scores["exact_match"] == sum(p["prediction"] == p["answer"] for p in preds) / 4


def test_eval_cli_writes_out_dir_that_load_runs_reads(trained: Path, tmp_path: Path, capsys) -> None:
    from experiments.analysis import load_runs

    out = tmp_path / "scored"
    argv = ["eval", str(trained), "eval.tasks=[pair]", "eval.mode=generate", "eval.max_new_tokens=2", "--out", str(out)]
    assert main(argv) == 0  # the run was trained with eval.mode=loglikelihood; eval.* overrides win
    assert "pair: exact_match" in capsys.readouterr().out
    scores = _scores(out, "pair")
    assert scores["mode"] == "generate" and scores["checkpoint"] == "checkpoints/align/final.ckpt"
    assert not (out / "eval" / "colour").exists()  # eval.tasks honoured
    record = json.loads((out / "run.json").read_text())
    assert record["evaluated_from"] == str(trained) and record["evaluations"][0]["tasks"]["pair"] == scores["score"]
    df = load_runs(out)
    assert list(df["task"]) == ["pair"] and df["exact_match"].iloc[0] == scores["exact_match"]
    assert df["metric"].iloc[0] == "exact_match" and df["score"].iloc[0] == scores["score"]
    assert df["bridge"].iloc[0] == "mlp" and df["status"].iloc[0] == "finished"


def test_eval_cli_scores_another_data_source_with_circular_choice(trained: Path, tmp_path: Path) -> None:
    configs = tmp_path / "configs" / "data"
    configs.mkdir(parents=True)
    (configs / "toy_choice.yaml").write_text("name: _toy_choice\nn_eval: 3\n")
    search = f"hydra.searchpath=[file://{tmp_path / 'configs'}]"
    assert main(["eval", str(trained), search, "data=toy_choice", "eval.mode=loglikelihood"]) == 0
    scores, preds = _scores(trained, "choice"), _predictions(trained, "choice")
    assert scores["metric"] == "circular_mc" and scores["n"] == 12 and scores["questions"] == 3
    by_question: dict[int, list[bool]] = {}
    for p in preds:  # rotations written by the evaluator, letters re-assigned, predictions are letters
        assert p["prompt"].splitlines()[1:5] == [f"{L}. {o}" for L, o in zip("ABCD", p["meta"]["options"])]
        assert p["prediction"] in "ABCD" and p["meta"]["options"][ord(p["answer"]) - 65] in OPTIONS
        by_question.setdefault(p["meta"]["circular_id"], []).append(p["prediction"] == p["answer"])
    assert scores["circular_accuracy"] == sum(all(v) for v in by_question.values()) / 3
    assert _scores(trained, "colour")["mode"] == "loglikelihood"  # the run's own scores are still there


def test_eval_cli_scores_a_llava_json_with_vqa_accuracy(trained: Path, tmp_path: Path, capsys) -> None:
    from torchvision.transforms.functional import to_pil_image

    from experiments.evaluation.metrics.vqa import vqa_accuracy

    (tmp_path / "img").mkdir()
    records = []
    for i, s in enumerate(harness_toy._samples(3, 5, 16, False)):
        to_pil_image(s["images"][0]).save(tmp_path / "img" / f"{i}.png")
        records.append({"id": f"q{i}", "image": f"{i}.png", "answers": [s["answer"]] * 3 + ["blue"] * 7,
                        "conversations": [{"from": "human", "value": "<image> colour ? answer :"},
                                          {"from": "gpt", "value": s["answer"]}]})
    path = tmp_path / "vqa.json"
    path.write_text(json.dumps(records))
    data = ["data=llava", f"data.path={path}", f"data.eval_path={path}", f"data.image_folder={tmp_path / 'img'}",
            "data.metric=vqa_accuracy", "data.task=colour_vqa"]
    # the run was trained with eval.mode=loglikelihood, which needs candidates: a clear refusal on open answers
    assert main(["eval", str(trained), *data, "--out", str(tmp_path / "out")]) == 2
    assert "Use eval.mode=generate for open-ended tasks" in capsys.readouterr().err
    assert main(["eval", str(trained), *data, "eval.mode=generate", "--out", str(tmp_path / "out")]) == 0
    scores, preds = _scores(tmp_path / "out", "colour_vqa"), _predictions(tmp_path / "out", "colour_vqa")
    assert scores["metric"] == "vqa_accuracy" and scores["n"] == 3 and scores["source"] == "llava"
    assert all(len(p["meta"]["answers"]) == 10 for p in preds)
    expected = sum(vqa_accuracy(p["prediction"], p["meta"]["answers"]) for p in preds) / 3
    assert scores["score"] == pytest.approx(expected) and [p["correct"] for p in preds] == pytest.approx(
        [vqa_accuracy(p["prediction"], p["meta"]["answers"]) for p in preds])
    from experiments.analysis import load_runs

    row = load_runs(tmp_path / "out").set_index("task").loc["colour_vqa"]
    assert row["metric"] == "vqa_accuracy" and row["score"] == pytest.approx(expected)


def test_eval_cli_refuses_model_overrides_and_missing_runs(trained: Path, tmp_path: Path, capsys) -> None:
    assert main(["eval", str(trained), "bridge=qformer"]) == 2
    assert "takes only data=OPTION" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "holds no run.json" in capsys.readouterr().err
    assert main(["eval", str(trained), "eval.mode=guess"]) == 2
    assert "eval.mode='guess'" in capsys.readouterr().err


def test_likelihood_follows_a_known_preference(trained: Path) -> None:
    """Bias the LM head towards the first token of ' blue': likelihood ranking must pick blue everywhere, greedy,
    and each summed log-prob must equal a token-by-token sum computed from the logits of the full sequence."""
    from experiments.evaluation.likelihood import choose, continuation_ids, continuation_logprobs
    from experiments.harness.loading import load_run

    loaded = load_run(trained)
    sample = harness_toy._samples(1, 99, 16, False)[0]
    plain = continuation_logprobs(loaded.model, loaded.collate, sample, ["red", "blue"])
    # independent check: one forward over prompt + " blue" through the training path, sum the label log-probs
    ids = continuation_ids(loaded.collate, "blue")
    batch = loaded.collate([sample])
    full = torch.cat([batch.input_ids, torch.tensor([ids])], 1)
    batch.input_ids, batch.attention_mask = full, torch.ones_like(full)
    batch.labels = torch.cat([torch.full_like(batch.input_ids[:, : -len(ids)], -100), torch.tensor([ids])], 1)
    with torch.no_grad():
        out = loaded.model(batch)
    logp = torch.log_softmax(out.logits[0, :-1].float(), -1)
    target = out.labels[0, 1:]
    manual = sum(float(logp[t, target[t]]) for t in range(len(target)) if target[t] != -100)
    assert plain[1][0] == pytest.approx(manual, abs=1e-4)

    head = loaded.model.lm.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, i, o: o.index_add(-1, torch.tensor([ids[0]]),
                                                                     torch.full_like(o[..., :1], 50.0)))
    try:
        picked = choose(loaded.model, loaded.collate, sample)
        assert picked["prediction"] == "blue" and picked["greedy"]
        assert picked["option_logprobs"][2] > -1e-3  # log p(blue) ~ 0 once its token dominates
        assert loaded.answer([sample], max_new_tokens=1) == ["blue"]  # generation agrees
    finally:
        handle.remove()
