"""Likelihood scoring: the summed log-probability of each candidate answer given a sample's prompt.

The prompt is rendered as generation renders it (the chat template's user turn, then the opening of the assistant
turn); each candidate is appended as the assistant's answer text (the template's ``assistant_format``, without the
end-of-turn marker) and scored token by token: ``log p(candidate | prompt, media) = sum_t log p(c_t | c_<t, ...)``.
``is_greedy`` says whether greedy decoding would produce the candidate's tokens. The candidates of one sample go
through the model as one batch (the prompt repeated, the candidates right-padded).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from encoders.registry import ConfigError
from llm_adapters.batch import MultimodalBatch
from llm_adapters.splice import IGNORE_INDEX


def _repeat_prompt(collate: Any, sample: Mapping[str, Any], k: int) -> MultimodalBatch:
    """The generation prompt ``k`` times. The generation collator holds a sample's answer (or closing assistant
    message) back itself; a ``text`` sample without one would be a plain document, so it gets an empty answer
    and is rendered as a user turn like every evaluation prompt."""
    if "messages" not in sample and sample.get("answer") is None:
        sample = {**sample, "answer": ""}
    return collate([sample] * k)


def continuation_ids(collate: Any, continuation: str) -> list[int]:
    """Token ids of ``continuation`` written as the assistant's answer (no end-of-turn marker)."""
    text = collate.template.assistant_format.format(content=continuation.strip())
    ids = collate.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"The candidate answer {continuation!r} has no tokens; give a non-empty answer.")
    return list(ids)


@torch.no_grad()
def continuation_logprobs(
    model: nn.Module, collate: Any, sample: Mapping[str, Any], continuations: Sequence[str]
) -> list[tuple[float, bool]]:
    """``(summed log-prob, is_greedy)`` of each continuation given ``sample``'s prompt and media.

    Args:
        model: a ``MultimodalLM`` (its ``forward(batch)`` returns logits aligned with ``labels``).
        collate: the model's generation collator (``train=False``: the prompt ends on an open assistant turn).
        sample: ``{"text" | "messages", "images", ...}``; an ``answer`` (or closing assistant message) is ignored.
        continuations: the candidate answers.
    """
    if not continuations:
        raise ValueError("continuation_logprobs needs at least one candidate answer.")
    if getattr(collate, "train", False):
        raise ValueError("continuation_logprobs needs the generation collator (train=False), not the training one.")
    prompt = _repeat_prompt(collate, sample, len(continuations))
    conts = [continuation_ids(collate, c) for c in continuations]
    k, length = prompt.input_ids.shape
    width = length + max(len(c) for c in conts)
    pad = collate.pad_id
    input_ids = torch.full((k, width), pad, dtype=torch.long)
    labels = torch.full((k, width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((k, width), dtype=torch.long)
    input_ids[:, :length], mask[:, :length] = prompt.input_ids, prompt.attention_mask
    for row, cont in enumerate(conts):
        input_ids[row, length : length + len(cont)] = torch.tensor(cont)
        labels[row, length : length + len(cont)] = torch.tensor(cont)
        mask[row, length : length + len(cont)] = 1
    batch = MultimodalBatch(
        input_ids=input_ids,
        attention_mask=mask,
        pixel_values=prompt.pixel_values,
        media_to_sample=prompt.media_to_sample,
        labels=labels,
        instruction_ids=prompt.instruction_ids,
        instruction_mask=prompt.instruction_mask,
    )
    device = next(model.parameters()).device
    out = model(batch.to(device))
    logits = out.logits[:, :-1].float()  # position t predicts token t + 1
    target = out.labels[:, 1:]
    scored = target != IGNORE_INDEX
    logp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
    greedy = (logits.argmax(-1) == target) | ~scored
    totals = (logp * scored).sum(1)
    return [(float(totals[i]), bool(greedy[i].all())) for i in range(k)]


def candidates_of(sample: Mapping[str, Any]) -> tuple[list[str], bool]:
    """A sample's candidate answers and whether they are lettered options (``meta["options"]``) rather than the
    closed answer set ``meta["choices"]``."""
    meta = sample.get("meta") or {}
    if isinstance(meta.get("options"), (list, tuple)) and meta["options"]:
        return [str(o) for o in meta["options"]], True
    if isinstance(meta.get("choices"), (list, tuple)) and meta["choices"]:
        return [str(c) for c in meta["choices"]], False
    raise ConfigError(
        "eval.mode=loglikelihood scores candidate answers, but this sample has neither meta['options'] nor "
        f"meta['choices'] (answer {sample.get('answer')!r}). Use eval.mode=generate for open-ended tasks."
    )


def choose(model: nn.Module, collate: Any, sample: Mapping[str, Any]) -> dict[str, Any]:
    """The most likely candidate of a sample: ``prediction`` (an option's letter, or the chosen text),
    ``option_logprobs`` (one per candidate) and ``greedy`` (whether greedy decoding gives the winner)."""
    from experiments.evaluation.metrics.choice import LETTERS

    candidates, lettered = candidates_of(sample)
    scores = continuation_logprobs(model, collate, sample, candidates)
    best = max(range(len(candidates)), key=lambda i: scores[i][0])
    return {
        "prediction": LETTERS[best] if lettered else candidates[best],
        "option_logprobs": [s for s, _ in scores],
        "greedy": scores[best][1],
    }
