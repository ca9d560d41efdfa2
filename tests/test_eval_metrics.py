"""Metrics beside exact match on hand-made cases with values worked out by hand from the official definitions."""

from __future__ import annotations

import pytest

from experiments.evaluation import METRICS, circular_rotations, format_options, score_records, task_metric
from experiments.evaluation.metrics.choice import parse_choice
from experiments.evaluation.metrics.vqa import CONTRACTIONS, normalize_vqa_answer, vqa_accuracy
from experiments.harness.evaluation import prediction_records, score

HUMANS = ["yes", "yes", "yes", "no", "no", "no", "no", "no", "no", "no"]


def test_vqa_accuracy_averages_min_matches_over_three_across_leave_one_out_subsets() -> None:
    # 3 of 10: leaving out one of the 3 leaves 2/3 (3 subsets), any other leaves 3/3 (7 subsets) -> 0.9
    assert vqa_accuracy("yes", HUMANS) == pytest.approx((3 * 2 / 3 + 7) / 10) == pytest.approx(0.9)
    assert vqa_accuracy("no", HUMANS) == 1.0  # 7 humans: every subset keeps >= 3
    assert vqa_accuracy("yes", ["yes"] + ["no"] * 9) == pytest.approx(9 * (1 / 3) / 10)  # 0.3
    assert vqa_accuracy("yes", ["yes"] * 2 + ["no"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)  # 0.6
    assert vqa_accuracy("maybe", HUMANS) == 0.0
    with pytest.raises(ValueError, match="at least one human answer"):
        vqa_accuracy("yes", [])


def test_vqa_normalisation_follows_the_official_rules() -> None:
    assert normalize_vqa_answer("Two dogs!") == "2 dogs"  # number words, '!' next to nothing -> space, stripped
    assert normalize_vqa_answer("The cat.") == "cat"  # article and final period dropped
    assert normalize_vqa_answer("dont know") == "don't know"  # contraction restored
    assert normalize_vqa_answer("3.5") == "3.5"  # a period between digits stays
    assert normalize_vqa_answer("1,000") == "1000"  # digit-comma-digit: commas removed
    assert normalize_vqa_answer("black/white") == "black white"  # a mark with no space beside it -> space
    assert normalize_vqa_answer("black / white") == "black white"  # beside a space it is deleted
    assert CONTRACTIONS["couldnt've"] == CONTRACTIONS["couldn'tve"] == "couldn't've" and "lets" not in CONTRACTIONS
    assert vqa_accuracy("Two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)


def test_multiple_choice_reads_letters_or_option_text() -> None:
    options = ["red ball", "blue box", "green cone"]
    assert parse_choice("B", options) == "B"
    assert parse_choice("(C)", options) == "C"
    assert parse_choice("B. blue box", options) == "B"
    assert parse_choice("Answer: A", options) == "A"
    assert parse_choice("Green cone.", options) == "C"
    assert parse_choice("it is the blue box", options) == "B"
    assert parse_choice("a red ball", options) == "A"  # lower-case "a" is an article here, the text decides
    assert parse_choice("D", options) is None and parse_choice("red ball or blue box", options) is None
    records = [
        {"prediction": "B", "answer": "B", "meta": {"options": options}},
        {"prediction": "green cone", "answer": "green cone", "meta": {"options": options}},
        {"prediction": "A", "answer": "C", "meta": {"options": options}},
        {"prediction": "no idea", "answer": "A", "meta": {"options": options}},
    ]
    out = score_records(records, "multiple_choice")
    assert out["score"] == out["accuracy"] == 0.5 and out["unparsed"] == 1
    with pytest.raises(ValueError, match="neither a letter"):
        score_records([{"prediction": "A", "answer": "purple", "meta": {"options": options}}], "multiple_choice")


def test_circular_evaluation_counts_a_question_only_if_every_rotation_is_right() -> None:
    meta = {"question": "<image> Which colour?", "options": ["red", "blue", "green"]}
    sample = {"text": "x", "answer": "B", "meta": meta}
    rotations = circular_rotations(sample, circular_id=7)
    assert [r["meta"]["options"] for r in rotations] == [
        ["red", "blue", "green"], ["blue", "green", "red"], ["green", "red", "blue"]
    ]
    assert [r["answer"] for r in rotations] == ["B", "A", "C"]  # "blue" follows its option around
    assert rotations[1]["text"] == format_options("<image> Which colour?", ["blue", "green", "red"])
    assert rotations[1]["text"].splitlines()[1:3] == ["A. blue", "B. green"]
    # question 7: always says "blue" (right every time); question 8: always "A" (right once of three)
    records = [{**r, "prediction": "blue"} for r in rotations]
    records += [{**r, "prediction": "A", "meta": {**r["meta"], "circular_id": 8}} for r in rotations]
    out = score_records(records, "circular_mc")
    assert out["circular_accuracy"] == 0.5 and out["accuracy"] == pytest.approx(4 / 6) and out["questions"] == 2
    with pytest.raises(ValueError, match="circular_id"):
        score_records([{"prediction": "A", "answer": "A", "meta": {"options": ["x", "y"]}}], "circular_mc")


def test_the_task_metric_comes_from_info_then_sample_meta_and_lands_in_scores_json() -> None:
    samples = [{"text": "q", "answer": "yes", "meta": {"metric": "vqa_accuracy", "answers": HUMANS}}]
    assert task_metric("t", None, samples) == "vqa_accuracy"
    assert task_metric("t", {"metric": "exact_match"}, samples) == "exact_match"
    assert task_metric("t", None, [{"text": "q", "answer": "a"}]) == "exact_match"
    with pytest.raises(Exception, match="Unknown metric 'bleu'"):
        task_metric("t", {"metric": "bleu"}, samples)
    records = prediction_records(samples, [{"index": 0, "prediction": "Yes"}], "t")
    assert records[0]["correct"] == pytest.approx(0.9) and records[0]["meta"]["answers"] == HUMANS
    scores = score(records, "t")
    assert scores["metric"] == "vqa_accuracy" and scores["score"] == pytest.approx(0.9)
    assert scores["exact_match"] == 1.0  # beside the metric, always
    assert set(METRICS) >= {"exact_match", "vqa_accuracy", "multiple_choice", "circular_mc", "caption"}


@pytest.mark.eval_extra
def test_caption_scores_match_hand_computed_bleu_rouge_and_cider() -> None:
    from experiments.evaluation.metrics.caption import caption_scores

    out = caption_scores(["the cat sat on the mat"], [["the cat sat on a mat"]], meteor=False)
    # modified n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty
    assert out["BLEU-1"] == pytest.approx(5 / 6, abs=1e-6)
    assert out["BLEU-4"] == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-6)
    # LCS "the cat sat on mat" = 5 of 6 words both ways -> F = 5/6 whatever beta
    assert out["ROUGE-L"] == pytest.approx(5 / 6)
    assert out["CIDEr"] == 0.0  # one image: every n-gram has idf log(1/1) = 0
    assert any("METEOR" in n for n in out["notes"]) and any("SPICE" in n for n in out["notes"])
    # two images with disjoint words, each caption equal to its reference: cosine 1 for n = 1..4, times 10
    same = caption_scores(["a red bus drives", "two small dogs play"], [["a red bus drives"], ["two small dogs play"]],
                          meteor=False)
    assert same["CIDEr"] == pytest.approx(10.0) and same["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
    # three-word captions have no 4-gram: n = 4 contributes 0, so (1 + 1 + 1 + 0) / 4 * 10
    short = caption_scores(["a red bus", "two small dogs"], [["a red bus"], ["two small dogs"]], meteor=False)
    assert short["CIDEr"] == pytest.approx(7.5)


@pytest.mark.eval_extra
def test_the_python_tokenizer_equals_coco_ptb_output() -> None:
    from experiments.evaluation.metrics.caption import _tokenize, java_available, simple_tokenize

    cases = ["A man's dog -- running, (fast)!", "Two dogs don't play... 'here' \"now\"", "a bus at 3.5 km/h; ok?"]
    assert simple_tokenize(cases[0]) == "a man 's dog running -lrb- fast -rrb-"
    if java_available():  # the official Java tokenizer, when this machine has Java
        ptb = _tokenize({i: [c] for i, c in enumerate(cases)}, use_java=True)
        assert [ptb[i][0] for i in range(len(cases))] == [simple_tokenize(c) for c in cases]


@pytest.mark.eval_extra
@pytest.mark.slow
@pytest.mark.skipif(__import__("shutil").which("java") is None, reason="METEOR needs Java")
def test_meteor_runs_when_java_is_present() -> None:
    from experiments.evaluation.metrics.caption import caption_scores

    captions = ["a cat sat on the mat", "a red bus drives"]
    good = caption_scores(captions, [[c] for c in captions])
    bad = caption_scores(captions, [["green trees grow"], ["an old piano"]])
    assert 0.9 < good["METEOR"] <= 1.0 and bad["METEOR"] == pytest.approx(0.0, abs=1e-6)
    assert all("METEOR" not in n for n in good["notes"])
