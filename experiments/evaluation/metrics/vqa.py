"""VQAv2 accuracy: the official answer normalisation and the leave-one-human-out average of ``min(#matches / 3, 1)``.

Follows the VQA challenge evaluation (GT-Vision-Lab/VQA ``vqaEval.py``, as EvalAI and lmms-eval run it): a
prediction is normalised (lower case, ``,``/``?`` dropped, punctuation handled as the official script does, number
words to digits, articles dropped, contractions restored), and so is every human answer. For each of the 10 ways to
leave one human out, the prediction scores ``min(#remaining humans who gave it / 3, 1)``; the accuracy is the mean.
So 3 of 10 humans agreeing gives ``(3 * 2/3 + 7 * 1) / 10 = 0.9``, 1 of 10 gives ``0.3``.
The official script normalises the human answers only when they disagree; VQAv2's released answers are normalised
already, so normalising them always (as lmms-eval does) changes nothing there and keeps hand-made data fair.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

# The contracted forms the official table restores; it maps each form with one apostrophe left out back to it.
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd "
    "he'd've he's how'd how'll how's I'd've I'm I've isn't it'd it'd've it'll let's ma'am mightn't mightn't've "
    "might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've she's should've shouldn't "
    "shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd "
    "something'd've something'll that's there'd there'd've there're there's they'd they'd've they'll they're "
    "they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd "
    "who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've "
    "you'd you'd've you'll you're you've"
).split()


def _contractions() -> dict[str, str]:
    table = {}
    for form in _CONTRACTED:
        for i, ch in enumerate(form):
            if ch == "'":
                table[form[:i] + form[i + 1 :]] = form
    # quirks of the official table, kept for identical scores: "lets"/"shes" are not restored, and "somebody'd"
    # is (mistakenly) mapped the other way round
    del table["lets"], table["shes"]
    table["somebody'd"] = "somebodyd"
    return table


CONTRACTIONS = _contractions()
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # a period not followed by a digit (the official look-behind is a no-op)
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
    """The official rule: a mark next to a space (or any mark in text with a digit-comma-digit) is deleted, other
    marks become spaces; periods not followed by a digit are deleted (at most 32, as the official call does)."""
    out = text
    for mark in PUNCTUATION:
        if mark + " " in text or " " + mark in text or _DIGIT_COMMA.search(text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=32)


def process_digit_article(text: str) -> str:
    words = [NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_vqa_answer(text: str) -> str:
    """An answer as the VQA evaluation compares it (``"Two dogs!"`` -> ``"2 dogs"``)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one prediction against the human ``answers`` (any number >= 1, VQAv2 has 10)."""
    if not answers:
        raise ValueError("vqa_accuracy needs at least one human answer; got none (set meta['answers']).")
    pred = normalize_vqa_answer(prediction)
    humans = [normalize_vqa_answer(a) for a in answers]
    matches = sum(h == pred for h in humans)
    # leaving out a matching human leaves matches - 1, any other leaves matches
    per_subset = [min(1.0, (matches - (h == pred)) / 3) for h in humans]
    return sum(per_subset) / len(per_subset)


def references(record: Mapping[str, Any]) -> list[str]:
    """``meta["answers"]`` of a record, else its one ``answer``."""
    answers = (record.get("meta") or {}).get("answers")
    if isinstance(answers, (list, tuple)) and answers:
        return [str(a) for a in answers]
    return [str(record["answer"])]


def sample(record: Mapping[str, Any]) -> float:
    return vqa_accuracy(str(record["prediction"]), references(record))


def score(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"vqa_accuracy": sum(sample(r) for r in records) / len(records) if records else float("nan")}


def _metrics() -> list[Any]:
    from experiments.evaluation.metrics import Metric

    return [Metric("vqa_accuracy", "vqa_accuracy", score, sample)]


METRICS = _metrics()
