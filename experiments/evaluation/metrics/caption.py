"""Captioning scores from ``pycocoevalcap`` (the COCO caption evaluation): CIDEr (CIDEr-D), BLEU-1..4, ROUGE-L,
and METEOR when ``java`` is on the PATH.

Captions are tokenised as the COCO evaluation does: with its Stanford PTB tokenizer when Java is present, else by
the same rule in Python (lower case, the tokenizer's punctuation tokens dropped, split on spaces), which the
``tokenizer`` key of the scores names. SPICE is never run: it fetches Stanford CoreNLP from the network on first
use; the ``notes`` key says what was left out and why. CIDEr's document frequencies come from the references of the
scored set itself (as in COCO), so it is a corpus score: the records get no per-sample value.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from experiments.evaluation.metrics.vqa import references

# what pycocoevalcap's PTBTokenizer removes after tokenising
_PTB_PUNCT = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_CLITIC = re.compile(r"(\w)('s|'re|'ve|'ll|'d|'m|n't)\b")
_MARKS = re.compile(r"\.\.\.|--|[,!?;:`\"]|\.(?!\d)|(?<!\d)\.")  # a period between digits stays (3.5)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_DROPPED = {t.lower() for t in _PTB_PUNCT} - set(_BRACKETS.values()) | {'"'}


def java_available() -> bool:
    return shutil.which("java") is not None


def _require() -> Any:
    try:
        import pycocoevalcap
    except ImportError as err:
        raise ImportError(
            "The 'caption' metric needs pycocoevalcap: pip install -e '.[eval]' (or pip install pycocoevalcap)."
        ) from err
    return pycocoevalcap


def simple_tokenize(text: str) -> str:
    """The COCO PTB tokenizer's output without Java: lower case, clitics (``'s``, ``n't``) split off, brackets named
    (``-lrb-``, which COCO keeps), other punctuation dropped."""
    text = text.lower().replace("\n", " ")
    for bracket, name in _BRACKETS.items():
        text = text.replace(bracket, f" {name} ")
    text = _MARKS.sub(lambda m: f" {m.group(0)} ", _CLITIC.sub(r"\1 \2", text))
    tokens = [t if _CLITIC.match("x" + t) else t.strip("'") for t in text.split()]
    return " ".join(t for t in tokens if t and t not in _DROPPED)


def _tokenize(captions: dict[int, list[str]], use_java: bool) -> dict[int, list[str]]:
    if use_java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}


def caption_scores(
    predictions: Sequence[str], refs: Sequence[Sequence[str]], meteor: bool | None = None
) -> dict[str, Any]:
    """Corpus scores of ``predictions[i]`` against ``refs[i]``; ``meteor=None``: run METEOR when Java is present."""
    _require()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(predictions) != len(refs) or not predictions:
        raise ValueError(
            f"caption_scores needs one reference list per prediction; got {len(predictions)} and {len(refs)}."
        )
    if any(not r for r in refs):
        raise ValueError("Every caption needs at least one reference (meta['answers'] or answer).")
    java = java_available()
    use_meteor = java if meteor is None else meteor
    if use_meteor and not java:
        raise RuntimeError("METEOR needs Java ('java' on the PATH); install a JRE or leave METEOR out (meteor=False).")
    res = _tokenize({i: [p] for i, p in enumerate(predictions)}, java)
    gts = _tokenize({i: list(r) for i, r in enumerate(refs)}, java)
    out: dict[str, Any] = {"tokenizer": "ptb" if java else "simple"}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
    out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    notes = ["SPICE left out: it downloads Stanford CoreNLP on first use (no network at evaluation)."]
    if use_meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()  # a Java subprocess, stopped when the scorer is collected
        out["METEOR"] = float(scorer.compute_score(gts, res)[0])
        del scorer
    else:
        notes.insert(0, "METEOR left out: it needs Java and 'java' is not on the PATH." if not java
                     else "METEOR left out on request.")
    out["notes"] = notes
    return out


def score(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    if not records:
        return {"CIDEr": float("nan")}
    return caption_scores([str(r["prediction"]) for r in records], [references(r) for r in records])


def _metrics() -> list[Any]:
    from experiments.evaluation.metrics import Metric

    return [Metric("caption", "CIDEr", score, None)]


METRICS = _metrics()
