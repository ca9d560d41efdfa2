"""MultimodalCollator and chat templates: labels, padding, media stacking, transforms, errors."""

from __future__ import annotations

import pytest
import torch
from test_llm_fakes import TinyConvEncoder, fake_encoders

from encoders import EncoderSet
from llm_adapters import MultimodalCollator, build_lm, build_multimodal_lm, get_template

EOS = "</s>"


@pytest.fixture(scope="module")
def model():
    return build_multimodal_lm(fake_encoders(), "_test_linear", "tiny_llama").eval()


def decode(model, ids: torch.Tensor) -> str:
    return model.lm.tokenizer.decode(ids)


SAMPLES = [
    {"text": "what is <image> this?", "images": [torch.rand(3, 20, 20)], "answer": "a cat", "meta": {"id": 7}},
    {"text": "a plain document", "images": []},
    {
        "messages": [{"role": "user", "content": "<image><image> same?"}, {"role": "assistant", "content": "yes"}],
        "images": [torch.rand(3, 16, 16), torch.rand(3, 16, 16)],
    },
]


def test_training_batch_labels_and_pixels(model) -> None:
    batch = MultimodalCollator.for_model(model, train=True)(SAMPLES)
    mask, labels, ids = batch.attention_mask, batch.labels, batch.input_ids
    assert bool((mask[:, 0] == 1).all())  # right padding
    assert decode(model, ids[0][mask[0] == 1]) == "<s>user: what is <image> this?\nassistant: a cat </s>"
    assert decode(model, labels[0][labels[0] != -100]) == " a cat </s>"
    assert decode(model, labels[1][labels[1] != -100]) == "a plain document</s>"  # plain document: every token
    assert decode(model, labels[2][labels[2] != -100]) == " yes </s>"
    assert bool((labels[mask == 0] == -100).all()) and bool((labels[ids == model.image_token_id] == -100).all())
    assert batch.pixel_values.shape == (3, 1, 3, 16, 16)  # resized by the encoder's transform
    assert batch.pixel_values.min() < -0.5  # normalised with mean = std = 0.5
    assert batch.media_to_sample.tolist() == [0, 2, 2]
    assert batch.meta == [{"id": 7, "answer": "a cat"}, {}, {}]
    assert model(batch).loss.isfinite()


def test_generation_batch_holds_back_answers(model) -> None:
    batch = MultimodalCollator.for_model(model, train=False)(SAMPLES)
    assert batch.labels is None and bool((batch.attention_mask[:, -1] == 1).all())  # left padding
    row = batch.input_ids[0][batch.attention_mask[0] == 1]
    assert decode(model, row) == "<s>user: what is <image> this?\nassistant:"
    assert decode(model, batch.input_ids[2][batch.attention_mask[2] == 1]).endswith("same?\nassistant:")
    assert [m.get("answer") for m in batch.meta] == ["a cat", None, "yes"]
    assert model.generate(batch, max_new_tokens=3).shape[0] == 3


def test_video_frames_and_several_encoders() -> None:
    encoders = EncoderSet({"small": TinyConvEncoder(32, image=16), "big": TinyConvEncoder(16, image=32, patch=16)})
    lm = build_lm("tiny_llama")
    lm.add_special_tokens(["<image>"])
    collate = MultimodalCollator(lm.tokenizer, lm.template, encoders.transforms())
    video = torch.rand(4, 3, 24, 24)
    batch = collate([{"text": "<image> moves", "images": [video], "answer": "left"}, {"text": "none", "answer": "x"}])
    assert set(batch.pixel_values) == {"small", "big"}
    assert batch.pixel_values["small"].shape == (1, 4, 3, 16, 16)
    assert batch.pixel_values["big"].shape == (1, 4, 3, 32, 32)
    assert batch.num_frames == 4


def test_batch_without_any_image(model) -> None:
    batch = MultimodalCollator.for_model(model)([{"text": "no media here", "answer": "ok"}])
    assert batch.pixel_values.shape == (0, 1, 3, 16, 16) and batch.media_to_sample.numel() == 0
    assert model(batch).loss.isfinite()


def test_errors_name_the_sample(model) -> None:
    collate = MultimodalCollator.for_model(model)
    with pytest.raises(ValueError, match=r"Sample 1 has 2 <image> marker\(s\) in its text but 1 image"):
        collate([{"text": "ok", "answer": "a"}, {"text": "<image><image>", "images": [torch.rand(3, 16, 16)]}])
    with pytest.raises(ValueError, match=r"share the frame count; got \[1, 2\]"):
        collate([{"text": "<image> <image>", "images": [torch.rand(3, 16, 16), torch.rand(2, 3, 16, 16)]}])
    with pytest.raises(KeyError, match="'text' or 'messages'"):
        collate([{"answer": "a"}])
    with pytest.raises(ValueError, match="not a token of this tokenizer"):
        MultimodalCollator(build_lm("tiny_llama").tokenizer)


def test_instruction_ids_per_sample(model) -> None:
    collate = MultimodalCollator.for_model(model, instruction_tokenizer=model.lm.tokenizer)
    batch = collate(SAMPLES[:1] + [{"text": "a <image> b", "images": [torch.rand(3, 16, 16)], "instruction": "b"}])
    assert decode(model, batch.instruction_ids[0][batch.instruction_mask[0] == 1]) == "what is this?"
    assert decode(model, batch.instruction_ids[1][batch.instruction_mask[1] == 1]) == "b"
    model(batch)
    assert model.bridge.last_instruction[0].shape[0] == 2


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "vicuna",
            (
                "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
                "detailed, and polite answers to the user's questions. USER: <image> hi ASSISTANT:| yes</s>"
            ),
        ),
        (
            "chatml",
            (
                "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image> hi<|im_end|>\n"
                "<|im_start|>assistant\n|yes<|im_end|>\n"
            ),
        ),
        ("llama2", "[INST] <<SYS>>\nbe brief\n<</SYS>>\n\n<image> hi [/INST]|yes </s>"),
        ("none", "<image> hi|yes</s>"),
    ],
)
def test_family_templates(name: str, expected: str) -> None:
    messages = [{"role": "user", "content": "<image> hi"}, {"role": "assistant", "content": "yes"}]
    if name == "llama2":
        messages.insert(0, {"role": "system", "content": "be brief"})
    segments = get_template(name).render(messages, EOS)
    prompt = "".join(t for t, target in segments if not target)
    target = "".join(t for t, target in segments if target)
    assert f"{prompt}|{target}" == expected
    gen = get_template(name).render(messages[:-1], EOS, add_generation_prompt=True)
    assert "".join(t for t, _ in gen) == prompt and not any(target for _, target in gen)
