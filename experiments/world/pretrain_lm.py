"""Pretraining the world's tiny Llama-style LM on text-only world documents, and its text-QA evaluation.

A document is a task sample with the true captions in the media slots, its answer and ``<eos>``::

    <bos> <img> a red circle at the top left </img> question : what colour is it ? answer : red <eos>

The recipe is the one WORLD_PROTOTYPE.md measured to work with a 2-layer, 128-wide Llama, tuned here:

* loss = LM cross-entropy over all tokens + ``answer_weight`` x cross-entropy over the answer tokens and ``<eos>``
  (without it, copying arrives late and run-dependently: pitfall 1). The prototype used 1.0; with eight task
  formats 3.0 learned them roughly twice as fast (every format at 1.00 by step 2000, vs colour/shape still at
  chance after 1500 steps with 1.0);
* per-task batch weights (``task_weights``): colour/shape lookup (attribute) and the comparison are the slow ones;
* curriculum: ``single_steps`` steps of single-image documents only, then a mix with ``multi_share`` of
  multi-image documents (without the warm-up nothing multi-image was learned);
* homogeneous batches: every batch holds one format (task, and N for the distractor), which keeps padding low;
* slot-length jitter (``slot_jitter``): in a share of the documents each caption is spread, in order, over a
  random slot length up to ``slot_jitter`` words with the filler ``.`` between its words. A prefix bridge fills a
  slot with 16 visual tokens where the caption had 3-9 words; an LM that only ever saw caption-length slots may
  locate "the last image" or "the tagged image" by a distance that no longer holds (WORLD_PROTOTYPE.md's
  hypothesis for the weak distractor transfer). Jitter makes the slot length something the LM ignores;
* AdamW with a one-cycle schedule; fp32 (bf16 gives nothing at this size on a CPU).

After training, :func:`text_qa` measures greedy exact match per (task, question type) on held-out documents; the
builder gates on it (>= ``gate_threshold`` for every gated question type) and trains ``extra_steps`` more if a gate
fails.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from experiments.harness.threads import follow_load
from experiments.world.scenes import SceneSampler, WorldConfig
from experiments.world.tasks import (
    GENERATORS,
    Sample,
    TaskOptions,
    fill_captions,
    generate_samples,
    seed_sequence,
    text_only_prompt,
)
from experiments.world.vocab import BOS, EOS, PAD, VOCAB, VOCAB_SIZE, encode_words

FILLER = "."  # the word that pads a jittered slot

SINGLE_TASKS = ("attribute", "count", "spatial", "fine_detail", "video_motion")
MULTI_TASKS = ("compare", "distractor", "interleaved")
# The quick default: the single-image formats, the two-image comparison and the distractor the demo uses. All eight
# formats need about twice the steps (experiments/configs/world/full.yaml).
DEFAULT_TASKS = ("attribute", "count", "spatial", "fine_detail", "compare", "distractor")


@dataclass
class LMPretrainConfig:
    """The tiny LM and its pretraining. Sizes and recipe from WORLD_PROTOTYPE.md sections 3 and 5.

    Attributes:
        hidden_size, intermediate_size, num_layers, num_heads: the ``LlamaConfig`` (tied embeddings, MHA).
        max_position_embeddings: RoPE has no hard limit; kept honest for N-image prompts.
        steps: optimiser steps of the main run; single_steps: the single-image warm-up inside them.
        batch_size, lr, weight_decay: AdamW with a one-cycle schedule peaking at ``lr``.
        answer_weight: weight of the extra answer-token cross-entropy.
        multi_share: share of multi-image batches after the warm-up.
        tasks: task formats in the documents (single- and multi-image ones from ``tasks.TASKS``).
        task_weights: sampling weight of a task's batches within its pool (single / multi); default 1.
        distractor_ns: image counts of the distractor documents (one N per batch).
        spatial_objects: 1- and/or 2-object spatial documents.
        task_options: ``TaskOptions`` fields set for every document and held-out group (e.g.
            ``{"spatial_question_first": true}``); the data of bridge runs should use the same.
        slot_jitter: maximum slot length (words) of a jittered caption; 0 turns jitter off.
        slot_jitter_share: share of the training documents whose captions are jittered.
        compare_qtypes: question types of the compare documents.
        gate_tasks: tasks whose every question type must reach ``gate_threshold`` text-QA accuracy.
        gate_threshold: the gate (the prototype's 0.95).
        eval_per_qtype: held-out documents per (task, question type) for the text-QA evaluation.
        extra_steps, max_extra_rounds: more training when a gate fails, at most this many times.
        seed: initialisation and data stream.
    """

    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    max_position_embeddings: int = 512
    steps: int = 1200
    single_steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    answer_weight: float = 3.0
    multi_share: float = 0.6
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    task_weights: dict[str, float] = field(default_factory=lambda: {"attribute": 3.0, "spatial": 2.0, "compare": 2.0})
    distractor_ns: list[int] = field(default_factory=lambda: [2, 4])
    spatial_objects: list[int] = field(default_factory=lambda: [1])
    compare_qtypes: list[str] = field(default_factory=lambda: ["same_colour"])
    task_options: dict[str, Any] = field(default_factory=dict)
    slot_jitter: int = 0
    slot_jitter_share: float = 0.5
    gate_tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    gate_threshold: float = 0.95
    eval_per_qtype: int = 200
    extra_steps: int = 400
    max_extra_rounds: int = 2
    seed: int = 0


def build_lm(cfg: LMPretrainConfig) -> LlamaForCausalLM:
    """A randomly initialised ``LlamaForCausalLM`` over the world vocabulary."""
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=VOCAB[BOS],
        eos_token_id=VOCAB[EOS],
        pad_token_id=VOCAB[PAD],
    )
    return LlamaForCausalLM(config)


# ---- documents ---------------------------------------------------------------------------------------------------
def formats(
    cfg: LMPretrainConfig, tasks: Sequence[str] | None = None
) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """(single-image, multi-image) batch formats of ``tasks`` (default ``cfg.tasks``): a task and the
    ``TaskOptions`` overrides of that batch."""
    tasks = cfg.tasks if tasks is None else tasks
    unknown = [t for t in tasks if t not in GENERATORS]
    if unknown:
        raise ValueError(f"LMPretrainConfig.tasks: unknown {unknown}; choose from {list(GENERATORS)}")
    single, multi = [], []
    for task in tasks:
        if task == "spatial":
            single += [(task, {"spatial_objects": k}) for k in cfg.spatial_objects]
        elif task == "distractor":
            multi += [(task, {"distractor_n": n}) for n in cfg.distractor_ns]
        elif task in MULTI_TASKS:
            multi.append((task, {"compare_qtypes": list(cfg.compare_qtypes)} if task == "compare" else {}))
        else:
            single.append((task, {}))
    return single, multi


def spread_caption(caption: str, length: int, rng: np.random.Generator) -> str:
    """``caption``'s words, in order, at random positions of a slot of ``length`` words (``FILLER`` elsewhere)."""
    words = caption.split()
    if length <= len(words):
        return caption
    slot = [FILLER] * length
    for word, pos in zip(words, np.sort(rng.choice(length, size=len(words), replace=False))):
        slot[pos] = word
    return " ".join(slot)


def jittered_prompt(sample: Sample, max_length: int, rng: np.random.Generator) -> str:
    """The text-only prompt with each caption spread over a random slot length in ``[len(caption), max_length]``."""
    captions = []
    for caption in sample.meta["captions"]:
        n = len(caption.split())
        captions.append(spread_caption(caption, int(rng.integers(n, max(n, max_length) + 1)), rng))
    return fill_captions(sample.text, captions)


def encode_documents(
    samples: Sequence[Sample], prompts: Sequence[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask, answer_mask)``, each ``(B, L)``; ``answer_mask`` marks the
    answer tokens and ``<eos>``. ``prompts`` replaces the text-only prompts (e.g. :func:`jittered_prompt`)."""
    docs, n_prompt = [], []
    for i, s in enumerate(samples):
        prompt = [VOCAB[BOS], *encode_words(text_only_prompt(s) if prompts is None else prompts[i])]
        docs.append(prompt + encode_words(s.answer) + [VOCAB[EOS]])
        n_prompt.append(len(prompt))
    length = max(map(len, docs))
    ids = torch.full((len(docs), length), VOCAB[PAD], dtype=torch.long)
    mask = torch.zeros(len(docs), length, dtype=torch.long)
    answer = torch.zeros(len(docs), length, dtype=torch.bool)
    for i, (doc, p) in enumerate(zip(docs, n_prompt)):
        ids[i, : len(doc)] = torch.tensor(doc)
        mask[i, : len(doc)] = 1
        answer[i, p : len(doc)] = True
    return ids, mask, answer


def document_loss(
    model: LlamaForCausalLM, ids: torch.Tensor, mask: torch.Tensor, answer: torch.Tensor, answer_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(training loss, plain per-token LM cross-entropy) of a right-padded batch."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    target, valid, ans = ids[:, 1:], mask[:, 1:].bool(), answer[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none").view_as(target)
    lm = ce[valid].mean()
    return lm + answer_weight * ce[ans].mean(), lm.detach()


class DocumentStream:
    """Batches of pretraining documents, one format per batch, from the ``pretrain`` split's stream."""

    def __init__(self, cfg: LMPretrainConfig, world: WorldConfig, stream: int = 0) -> None:
        self.cfg = cfg
        self.single, self.multi = formats(cfg)
        if not self.single:
            raise ValueError("LMPretrainConfig.tasks needs a single-image task for the curriculum warm-up")
        self.rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 7919, stream]))
        self.world = world
        self.samplers = {
            task: SceneSampler(np.random.default_rng(seed_sequence(cfg.seed, task, "pretrain", stream)), world)
            for task in cfg.tasks
        }

    def batch(self, warm_up: bool) -> tuple[str, list[Sample]]:
        pool = self.multi if (not warm_up and self.multi and self.rng.random() < self.cfg.multi_share) else self.single
        variants = Counter(task for task, _ in pool)  # a task's weight is shared by its variants (e.g. N)
        weights = np.array([self.cfg.task_weights.get(t, 1.0) / variants[t] for t, _ in pool], dtype=float)
        task, overrides = pool[int(self.rng.choice(len(pool), p=weights / weights.sum()))]
        options = TaskOptions(**{**self.cfg.task_options, **overrides})
        return task, GENERATORS[task](self.samplers[task], options, self.cfg.batch_size)

    def prompts(self, samples: Sequence[Sample]) -> list[str]:
        """Text-only prompts of ``samples``, a ``slot_jitter_share`` of them jittered (see the module docstring)."""
        cfg = self.cfg
        return [
            jittered_prompt(s, cfg.slot_jitter, self.rng)
            if cfg.slot_jitter > 0 and self.rng.random() < cfg.slot_jitter_share
            else text_only_prompt(s)
            for s in samples
        ]


def train_lm(
    model: LlamaForCausalLM,
    cfg: LMPretrainConfig,
    world: WorldConfig,
    steps: int,
    *,
    warm_up_steps: int = 0,
    max_lr: float | None = None,
    stream: int = 0,
    progress: bool = True,
) -> dict:
    """Train ``model`` for ``steps`` steps (the first ``warm_up_steps`` on single-image documents only).

    Returns ``{"seconds", "final_lm_loss", "loss_curve"}`` (mean LM loss per tenth of the run).
    """
    model.train()
    documents = DocumentStream(cfg, world, stream)
    opt = torch.optim.AdamW(model.parameters(), lr=max_lr or cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr or cfg.lr, total_steps=max(steps, 1))
    curve, window, start = [], [], time.perf_counter()
    bar = tqdm(range(steps), desc="world LM", disable=not progress, leave=False)
    for step in bar:
        follow_load()
        _, samples = documents.batch(warm_up=step < warm_up_steps)
        loss, lm = document_loss(model, *encode_documents(samples, documents.prompts(samples)), cfg.answer_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        window.append(lm.item())
        if len(window) >= max(steps // 10, 1):
            curve.append(round(float(np.mean(window)), 4))
            window = []
        if step % 20 == 0:
            bar.set_postfix(lm=f"{lm.item():.3f}")
    model.eval()
    return {"seconds": time.perf_counter() - start, "final_lm_loss": curve[-1] if curve else None, "loss_curve": curve}


# ---- evaluation --------------------------------------------------------------------------------------------------
def left_pad(prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(input_ids, attention_mask)`` of token lists."""
    length = max(map(len, prompts))
    ids = torch.full((len(prompts), length), VOCAB[PAD], dtype=torch.long)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, length - len(p) :] = torch.tensor(p)
        mask[i, length - len(p) :] = 1
    return ids, mask


@torch.no_grad()
def greedy_answers(
    model: LlamaForCausalLM, prompts: Sequence[str], max_new_tokens: int = 3, batch: int = 128
) -> list[str]:
    """Greedy continuation of each text prompt (``<bos>`` added) up to ``<eos>``, decoded to words."""
    inverse = {i: w for w, i in VOCAB.items()}
    model.eval()
    out = []
    for start in range(0, len(prompts), batch):
        ids, mask = left_pad([[VOCAB[BOS], *encode_words(p)] for p in prompts[start : start + batch]])
        done = torch.zeros(len(ids), dtype=torch.bool)
        words: list[list[str]] = [[] for _ in range(len(ids))]
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            nxt = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].argmax(-1)
            done |= nxt == VOCAB[EOS]
            for i in (~done).nonzero().flatten().tolist():
                words[i].append(inverse[int(nxt[i])])
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            if done.all():
                break
        out += [" ".join(w) for w in words]
    return out


def eval_groups(tasks: Iterable[str], n: int, seed: int, cfg: LMPretrainConfig, world: WorldConfig) -> dict:
    """Held-out samples grouped by ``"task/qtype"`` (``n`` per task and variant), from the ``val`` split."""
    groups: dict[str, list[Sample]] = {}
    single, multi = formats(cfg, list(tasks))
    for task, overrides in single + multi:
        options = TaskOptions(**{**cfg.task_options, **overrides})
        for s in generate_samples(task, "val", n, seed, options, world):
            key = f"{task}/{s.meta['qtype']}"
            if task == "distractor":
                key += f"/n{options.distractor_n}"
            groups.setdefault(key, []).append(s)
    return groups


def text_qa(model: LlamaForCausalLM, groups: dict[str, list[Sample]]) -> dict[str, float]:
    """Greedy exact-match accuracy per group, with true captions in the media slots."""
    result = {}
    for key, samples in groups.items():
        predictions = greedy_answers(model, [text_only_prompt(s) for s in samples])
        result[key] = float(np.mean([p == s.answer for p, s in zip(predictions, samples)]))
    return result


@torch.no_grad()
def perplexity(model: LlamaForCausalLM, samples: Sequence[Sample], batch: int = 128) -> float:
    """Held-out per-token perplexity over whole documents (captions are random, so it cannot approach 1)."""
    total, count = 0.0, 0
    for start in range(0, len(samples), batch):
        ids, mask, _ = encode_documents(samples[start : start + batch])
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        valid = mask[:, 1:].bool()
        ce = F.cross_entropy(logits[valid], ids[:, 1:][valid], reduction="sum")
        total, count = total + ce.item(), count + int(valid.sum())
    return math.exp(total / max(count, 1))


def gate_failures(scores: dict[str, float], cfg: LMPretrainConfig) -> dict[str, float]:
    """The gated groups below ``gate_threshold``."""
    gated = {k: v for k, v in scores.items() if k.split("/")[0] in cfg.gate_tasks}
    return {k: v for k, v in gated.items() if v < cfg.gate_threshold}


def pretrain_lm(
    cfg: LMPretrainConfig, world: WorldConfig | None = None, progress: bool = True
) -> tuple[LlamaForCausalLM, dict]:
    """Build, train and gate the LM. Returns the model (eval mode) and its quality report."""
    world = world or WorldConfig()
    torch.manual_seed(cfg.seed)
    model = build_lm(cfg)
    rounds = [train_lm(model, cfg, world, cfg.steps, warm_up_steps=cfg.single_steps, progress=progress)]
    groups = eval_groups(cfg.tasks, cfg.eval_per_qtype, cfg.seed, cfg, world)
    scores = text_qa(model, groups)
    while gate_failures(scores, cfg) and len(rounds) <= cfg.max_extra_rounds:
        rounds.append(
            train_lm(model, cfg, world, cfg.extra_steps, max_lr=cfg.lr / 2, stream=len(rounds), progress=progress)
        )
        scores = text_qa(model, groups)
    held_out = [s for samples in groups.values() for s in samples]
    failures = gate_failures(scores, cfg)
    report = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(sum(r["seconds"] for r in rounds), 1),
        "steps": cfg.steps + cfg.extra_steps * (len(rounds) - 1),
        "rounds": [{k: v for k, v in r.items()} for r in rounds],
        "perplexity": round(perplexity(model, held_out), 4),
        "text_qa": {k: round(v, 4) for k, v in sorted(scores.items())},
        "gate_threshold": cfg.gate_threshold,
        "gate_tasks": list(cfg.gate_tasks),
        "gate_passed": not failures,
        "gate_failures": failures,
    }
    return model, report
