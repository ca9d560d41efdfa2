"""Multiple choice (letter or option text) and MMBench-style circular evaluation.

A record's ``meta["options"]`` lists the option texts in the order shown, lettered A, B, C, ...; its ``answer`` is
the correct letter or the correct text. A prediction is read as a letter (``"B"``, ``"(B)"``, ``"B."``,
``"B) red"``, ``"Answer: B"``; upper case only) or as an option's text (equal after normalisation, checked first,
or the only option whose text it contains). Circular evaluation (MMBench, Liu et al. 2023) asks each question
once per rotation of its options; the question counts as right only if every rotation is. Rotations share
``meta["circular_id"]``.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from experiments.evaluation.metrics.exact import normalize_answer

LETTERS = string.ascii_uppercase
DEFAULT_SUFFIX = "Answer with the option's letter from the given choices directly."
# an upper-case letter alone or opening the reply: "B", "(B)", "B.", "B) red", "Answer: B" (lower case "a" is a word)
_LETTER = re.compile(r"^\s*(?:[Aa]nswer\s*(?:is)?\s*[:\-]?\s*)?\(?([A-Z])(?:[\s\).:,]|$)")


def options_of(record: Mapping[str, Any]) -> list[str]:
    options = (record.get("meta") or {}).get("options")
    if not isinstance(options, (list, tuple)) or len(options) < 2:
        raise ValueError(
            f"A multiple-choice sample needs meta['options'] with at least two option texts; got {options!r} "
            f"(sample answer {record.get('answer')!r})."
        )
    if len(options) > len(LETTERS):
        raise ValueError(f"At most {len(LETTERS)} options are lettered; got {len(options)}.")
    return [str(o) for o in options]


def answer_letter(record: Mapping[str, Any]) -> str:
    """The correct option's letter: ``answer`` is a letter, or the text of one option."""
    options = options_of(record)
    answer = str(record["answer"]).strip()
    if len(answer) == 1 and answer.upper() in LETTERS[: len(options)]:
        return answer.upper()
    norm = [normalize_answer(o) for o in options]
    if normalize_answer(answer) in norm:
        return LETTERS[norm.index(normalize_answer(answer))]
    raise ValueError(f"The answer {answer!r} is neither a letter A-{LETTERS[len(options) - 1]} nor one of {options}.")


def parse_choice(prediction: str, options: Sequence[str]) -> str | None:
    """The letter a prediction picks among ``options``, or ``None`` when it names none (or several)."""
    letters = LETTERS[: len(options)]
    pred = normalize_answer(prediction)
    norm = [normalize_answer(o) for o in options]
    if pred in norm:
        return letters[norm.index(pred)]
    found = _LETTER.match(prediction)
    if found and found.group(1) in letters:
        return found.group(1)
    contained = [i for i, o in enumerate(norm) if o and re.search(rf"\b{re.escape(o)}\b", pred)]
    return letters[contained[0]] if len(contained) == 1 else None


def sample(record: Mapping[str, Any]) -> float:
    return float(parse_choice(str(record["prediction"]), options_of(record)) == answer_letter(record))


def score(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    if not records:
        return {"accuracy": float("nan"), "unparsed": 0}
    unparsed = sum(parse_choice(str(r["prediction"]), options_of(r)) is None for r in records)
    return {"accuracy": sum(sample(r) for r in records) / len(records), "unparsed": unparsed}


def circular_score(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Circular accuracy (a question right only if all its rotations are) beside the plain per-rotation accuracy."""
    groups: dict[str, list[float]] = defaultdict(list)
    for i, r in enumerate(records):
        cid = (r.get("meta") or {}).get("circular_id")
        if cid is None:
            raise ValueError(
                f"circular_mc: record {r.get('index', i)} has no meta['circular_id']; give every rotation of a "
                "question the same circular_id (or meta['question'] so the evaluator writes the rotations)."
            )
        groups[str(cid)].append(sample(r))
    plain = score(records)
    circular = sum(all(v) for v in groups.values()) / len(groups) if groups else float("nan")
    return {"circular_accuracy": circular, "accuracy": plain["accuracy"], "unparsed": plain["unparsed"],
            "questions": len(groups)}


def format_options(question: str, options: Sequence[str], suffix: str = DEFAULT_SUFFIX) -> str:
    """The LLaVA/MMBench prompt layout: the question, one ``X. option`` line per option, then ``suffix``."""
    lines = [question, *(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))]
    return "\n".join([*lines, suffix] if suffix else lines)


def circular_rotations(sample_: Mapping[str, Any], circular_id: Any) -> list[dict[str, Any]]:
    """Every rotation of a multiple-choice sample (the original first), each with its prompt rewritten by
    :func:`format_options` from ``meta["question"]`` and ``meta.get("option_suffix")``, the answer re-lettered,
    and ``meta["circular_id"] = circular_id``."""
    meta = dict(sample_.get("meta") or {})
    if "question" not in meta:
        raise ValueError(
            "circular_mc: to write the rotations of a sample the evaluator needs meta['question'] (the prompt up to "
            "the options); or give each rotation as its own sample with a shared meta['circular_id']."
        )
    options = options_of(sample_)
    correct = options[LETTERS.index(answer_letter(sample_))]
    suffix = meta.get("option_suffix", DEFAULT_SUFFIX)
    out = []
    for shift in range(len(options)):
        rotated = options[shift:] + options[:shift]
        out.append({
            **sample_,
            "text": format_options(str(meta["question"]), rotated, suffix),
            "answer": LETTERS[rotated.index(correct)],
            "meta": {**meta, "options": rotated, "circular_id": circular_id, "rotation": shift},
        })
    return out


def _metrics() -> list[Any]:
    from experiments.evaluation.metrics import Metric

    return [
        Metric("multiple_choice", "accuracy", score, sample),
        Metric("circular_mc", "circular_accuracy", circular_score, sample),
    ]


METRICS = _metrics()
