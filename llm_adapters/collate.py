"""Collate samples into a :class:`MultimodalBatch`: chat template, tokens, labels, per-encoder pixel transforms.

A sample is a dict:

* ``text`` with one ``<image>`` marker per media item, and optionally ``answer``: rendered as one user turn and one
  assistant turn with the LM's chat template; loss on the answer (and the end-of-turn marker) only. Without
  ``answer`` the text is a plain document (captioning, interleaved pretraining): loss on every text token + EOS.
* or ``messages``: ``[{"role": "system"|"user"|"assistant", "content": ...}, ...]``, loss on assistant turns.
* ``images``: a list of images ``(C, H, W)`` or frame stacks ``(F, C, H, W)``, float in ``[0, 1]``, in order of
  appearance (may be empty or missing). All media of one batch share ``F``.
* optional ``instruction`` (text for instruction-aware bridges; default: the user text without markers) and ``meta``.

In generation mode (``train=False``) the prompt ends on an open assistant turn (a plain document is the prompt
itself), padding goes left, labels are ``None`` and the held-back answer is kept in ``meta["answer"]``.
Samples are looped over here (data side, in DataLoader workers); the model's forward never loops.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch

from llm_adapters.adapter import IMAGE_TOKEN
from llm_adapters.batch import MultimodalBatch
from llm_adapters.splice import IGNORE_INDEX
from llm_adapters.templates import ChatTemplate, get_template

Transform = Callable[[torch.Tensor], torch.Tensor]


class MultimodalCollator:
    """Samples -> :class:`MultimodalBatch` (picklable, for DataLoader workers).

    Args:
        tokenizer: the LM's tokenizer (``<image>`` must already be a special token of it).
        template: a :class:`ChatTemplate` or its name.
        transforms: one image transform, or ``{encoder name: transform}``; with several encoders ``pixel_values`` is a
            dict by encoder name. ``None`` stacks the images as given.
        train: training batches (labels, right padding) or generation batches (prompt only, left padding).
        padding_side: override the padding side.
        add_bos: prepend the tokenizer's BOS (if it has one).
        instruction_tokenizer: tokenizer for ``instruction_ids`` (instruction-aware bridges), or ``None`` for none.
        image_token: the media placeholder.
    """

    def __init__(
        self,
        tokenizer: Any,
        template: ChatTemplate | str = "plain",
        transforms: Transform | Mapping[str, Transform] | None = None,
        train: bool = True,
        padding_side: Literal["left", "right"] | None = None,
        add_bos: bool = True,
        instruction_tokenizer: Any | None = None,
        image_token: str = IMAGE_TOKEN,
    ) -> None:
        self.tokenizer = tokenizer
        self.template = get_template(template) if isinstance(template, str) else template
        self.transforms = transforms
        self.train = train
        self.padding_side = padding_side or ("right" if train else "left")
        self.add_bos = add_bos and tokenizer.bos_token_id is not None
        self.instruction_tokenizer = instruction_tokenizer
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"'{image_token}' is not a token of this tokenizer; add it with LMAdapter.add_special_tokens"
            )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("The tokenizer has neither a pad nor an EOS token to pad with")
        self.pad_id = int(pad)

    @classmethod
    def for_model(cls, model: Any, train: bool = True, **kwargs: Any) -> MultimodalCollator:
        """The collator matching a :class:`~llm_adapters.multimodal_lm.MultimodalLM` (its tokenizer, template and
        transforms)."""
        transforms = model.encoders.transforms()
        if getattr(model.bridge, "uses_instruction", False):
            kwargs.setdefault(
                "instruction_tokenizer", getattr(model.bridge, "instruction_tokenizer", None) or model.lm.tokenizer
            )
        return cls(model.lm.tokenizer, model.lm.template, transforms, train=train, **kwargs)

    # ---------------------------------------------------------------- text
    def segments(self, sample: Mapping[str, Any]) -> tuple[list[tuple[str, bool]], str | None]:
        """``(text, is_target)`` segments of one sample and the held-back answer (generation mode)."""
        eos = self.tokenizer.eos_token or ""
        if "messages" in sample:
            messages = list(sample["messages"])
            answer = None
            if not self.train and messages and messages[-1]["role"] == "assistant":
                answer = messages.pop()["content"]
            return self.template.render(messages, eos, add_generation_prompt=not self.train), answer
        if "text" not in sample:
            raise KeyError(f"A sample needs 'text' or 'messages'; got keys {sorted(sample)}")
        text, answer = sample["text"], sample.get("answer")
        if answer is None:  # a plain document
            return ([(text, True), (eos, True)] if self.train else [(text, False)]), None
        if self.train:
            return self.template.render(
                [{"role": "user", "content": text}, {"role": "assistant", "content": answer}], eos
            ), None
        return self.template.render([{"role": "user", "content": text}], eos, add_generation_prompt=True), answer

    def _tokenize(self, samples: Sequence[Mapping[str, Any]]) -> tuple[list[list[int]], list[list[int]], list[Any]]:
        per_sample = [self.segments(s) for s in samples]
        texts = [text for segs, _ in per_sample for text, _ in segs]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        rows, labels, answers, k = [], [], [], 0
        for segs, answer in per_sample:
            row = [self.tokenizer.bos_token_id] if self.add_bos else []
            lab = [IGNORE_INDEX] * len(row)
            for _, target in segs:
                row += ids[k]
                lab += [t if target and t != self.image_token_id else IGNORE_INDEX for t in ids[k]]
                k += 1
            rows.append(row)
            labels.append(lab)
            answers.append(answer)
        return rows, labels, answers

    # --------------------------------------------------------------- media
    def _media(self, samples: Sequence[Mapping[str, Any]], rows: list[list[int]]) -> list[torch.Tensor]:
        media = []
        for b, (sample, row) in enumerate(zip(samples, rows, strict=True)):
            images = list(sample.get("images") or [])
            found = row.count(self.image_token_id)
            if found != len(images):
                raise ValueError(
                    f"Sample {b} has {found} {self.image_token} marker(s) in its text but {len(images)} image(s); "
                    "write one marker per image, where the image belongs."
                )
            for i, img in enumerate(images):
                check_image(img, f"Sample {b}{_sample_id(sample)} image {i}")
            media += [img if img.dim() == 4 else img[None] for img in images]
        frames = {m.shape[0] for m in media}
        if len(frames) > 1:
            raise ValueError(
                f"Media in one batch must share the frame count; got {sorted(frames)}. Batch videos of different "
                "lengths separately, or resample them to a common F."
            )
        return media

    def _pixels(self, media: list[torch.Tensor]) -> torch.Tensor | dict[str, torch.Tensor]:
        if isinstance(self.transforms, Mapping):
            by_name = {name: _stack(media, t) for name, t in self.transforms.items()}
            return by_name if len(by_name) > 1 else next(iter(by_name.values()))
        return _stack(media, self.transforms)

    def _instructions(self, samples: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.instruction_tokenizer is None:
            return None
        texts = []
        for sample in samples:
            text = sample.get("instruction")
            if text is None:
                users = [m["content"] for m in sample.get("messages", []) if m["role"] == "user"]
                text = sample.get("text", users[-1] if users else "")
            texts.append(" ".join(text.replace(self.image_token, " ").split()))
        enc = self.instruction_tokenizer(texts, return_tensors="pt", padding=True)
        return enc["input_ids"], enc["attention_mask"]

    # ---------------------------------------------------------------- call
    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> MultimodalBatch:
        rows, labels, answers = self._tokenize(samples)
        media = self._media(samples, rows)
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        label_t = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, (row, lab) in enumerate(zip(rows, labels, strict=True)):
            sl = slice(width - len(row), width) if self.padding_side == "left" else slice(0, len(row))
            input_ids[b, sl] = torch.tensor(row)
            label_t[b, sl] = torch.tensor(lab)
            mask[b, sl] = 1
        counts = torch.tensor([len(s.get("images") or []) for s in samples])
        meta = []
        for sample, answer in zip(samples, answers, strict=True):
            record = dict(sample.get("meta") or {})
            if answer is not None or "answer" in sample:
                record.setdefault("answer", answer if answer is not None else sample["answer"])
            meta.append(record)
        instruction = self._instructions(samples)
        return MultimodalBatch(
            input_ids=input_ids,
            attention_mask=mask,
            pixel_values=self._pixels(media),
            media_to_sample=torch.repeat_interleave(torch.arange(len(samples)), counts),
            labels=label_t if self.train else None,
            instruction_ids=instruction[0] if instruction else None,
            instruction_mask=instruction[1] if instruction else None,
            meta=meta,
        )


def _sample_id(sample: Mapping[str, Any]) -> str:
    meta = sample.get("meta") or {}
    return f" (id {meta['id']})" if isinstance(meta, Mapping) and "id" in meta else ""


def check_image(image: Any, where: str) -> None:
    """Raise when ``image`` is not a float tensor ``(C, H, W)`` / ``(F, C, H, W)`` of finite values in ``[0, 1]``.

    A 0-255 float image or a NaN would otherwise train silently on saturated or poisoned inputs.
    """
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{where}: expected a tensor (C, H, W) or (F, C, H, W), got {shape}. Fix: decode the image "
                         "to a float tensor, e.g. torchvision.transforms.functional.to_tensor(pil_image).")
    if not image.is_floating_point():
        raise TypeError(f"{where}: dtype {image.dtype}, but images are float in [0, 1]. Fix: image.float() / 255.")
    finite = torch.isfinite(image)
    if not bool(finite.all()):
        raise ValueError(f"{where}: {int((~finite).sum())} of {image.numel()} values are NaN or infinite. "
                         "Fix: check the image decoding and any augmentation that produced it.")
    low, high = (float(image.min()), float(image.max())) if image.numel() else (0.0, 0.0)
    if low < -1e-3 or high > 1 + 1e-3:
        hint = " (it looks like 0-255: divide by 255)" if high > 2 else ""
        raise ValueError(f"{where}: values in [{low:.3g}, {high:.3g}], outside [0, 1]{hint}. Fix: give float "
                         "images in [0, 1]; the encoder's own normalisation is applied by its transform.")


def _stack(media: list[torch.Tensor], transform: Transform | None) -> torch.Tensor:
    """``(N, F, C, H, W)``; one transform call when all media share a size."""
    if not media:
        size = tuple(getattr(transform, "size", (1, 1)))
        return torch.zeros(0, 1, len(getattr(transform, "mean", (0, 0, 0))), *size)
    if len({tuple(m.shape) for m in media}) == 1:
        stacked = torch.stack(media)
        return transform(stacked) if transform is not None else stacked
    if transform is None:
        raise ValueError(
            f"Images of different sizes {sorted({tuple(m.shape) for m in media})} need a resizing transform"
        )
    return torch.stack([transform(m) for m in media])
