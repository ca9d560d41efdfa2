"""The embedded world: determinism, answers consistent with the pixels, tokenizer, caching, tiny pretraining steps."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.registry import ConfigError
from experiments.world import TASKS, TaskOptions, build_tokenizer, generate_samples, make_task_dataset
from experiments.world import backbones
from experiments.world.backbones import (
    WorldBackbones,
    build_world_backbones,
    cache_root,
    cached_build,
    config_hash,
    tiny_config,
)
from experiments.world.ceilings import baselines, task_report
from experiments.world.pretrain_lm import (
    FILLER,
    DocumentStream,
    LMPretrainConfig,
    build_lm,
    document_loss,
    encode_documents,
    eval_groups,
    jittered_prompt,
    spread_caption,
)
from experiments.world.pretrain_vision import ClipModel, PictureStream, VitPretrainConfig, caption_ids, create_vit
from experiments.world.render import PALETTE
from experiments.world.scenes import WorldConfig, quadrant_words
from experiments.world.tasks import fill_captions, text_only_prompt
from experiments.world.vocab import (
    COLOURS,
    DIRECTIONS,
    IMAGE_TOKEN,
    MEDIA_CLOSE,
    MEDIA_OPEN,
    NUMBER_WORDS,
    SHAPES,
    VOCAB,
    encode_words,
)

TINY_OPTIONS = TaskOptions(distractor_n=3, interleaved_turns=2, video_frames=3)


def object_mask(image: torch.Tensor, background: tuple[float, float, float]) -> torch.Tensor:
    """Pixels clearly off the background, ``(H, W)`` bool (noise sigma is 0.03)."""
    return (image - torch.tensor(background).view(3, 1, 1)).abs().amax(0) > 0.25


# ---- data -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_samples_are_deterministic_and_well_formed(task: str) -> None:
    a = make_task_dataset(task, "train", 6, seed=3, options=TINY_OPTIONS)
    b = make_task_dataset(task, "train", 6, seed=3, options=TINY_OPTIONS)
    c = make_task_dataset(task, "train", 6, seed=4, options=TINY_OPTIONS)
    for i in range(len(a)):
        sa, sb = a[i], b[i]
        assert sa["text"] == sb["text"] and sa["answer"] == sb["answer"]
        assert all(torch.equal(x, y) for x, y in zip(sa["images"], sb["images"], strict=True))
        assert sa["text"].count(IMAGE_TOKEN) == len(sa["images"]) == sa["meta"]["n_images"]
        assert sa["answer"] in sa["meta"]["choices"] and sa["meta"]["task"] == task
        for img in sa["images"]:
            assert img.dtype == torch.float32 and 0.0 <= img.min() and img.max() <= 1.0
            assert img.shape[-3:] == (3, 32, 32) and img.dim() == (4 if task == "video_motion" else 3)
        encode_words(text_only_prompt(sa) + " " + sa["answer"])  # every word is in the closed vocabulary
    assert any(not torch.equal(a[i]["images"][0], c[i]["images"][0]) for i in range(len(a)))
    val = make_task_dataset(task, "val", 6, seed=3, options=TINY_OPTIONS)
    assert [s.text + s.answer for s in val.samples] != [s.text + s.answer for s in a.samples] or not torch.equal(
        val.pixels(32), a.pixels(32)
    )


def test_count_answer_equals_objects_drawn() -> None:
    ds = make_task_dataset("count", "test", 24, seed=0)
    for i, s in enumerate(ds):
        media = ds.samples[i].media[0]
        mask = object_mask(s["images"][0], media.frames[0].background)
        quadrants = [mask[:16, :16], mask[:16, 16:], mask[16:, :16], mask[16:, 16:]]
        drawn = sum(int(q.sum() > 10) for q in quadrants)
        assert NUMBER_WORDS[drawn] == s["answer"] == NUMBER_WORDS[len(media.frames[0].objects)]


def test_colour_and_position_answers_match_the_pixels() -> None:
    options = TaskOptions(attribute_qtypes=["colour"], attribute_kinds=["object"])
    ds = make_task_dataset("attribute", "test", 16, seed=1, options=options)
    where = make_task_dataset("spatial", "test", 16, seed=1)
    for s, raw in zip(ds, ds.samples):
        mask = object_mask(s["images"][0], raw.media[0].frames[0].background)
        mean_rgb = s["images"][0][:, mask].mean(1).numpy()
        assert COLOURS[int(np.abs(PALETTE - mean_rgb).sum(1).argmin())] == s["answer"]
    for s, raw in zip(where, where.samples):
        ys, xs = object_mask(s["images"][0], raw.media[0].frames[0].background).nonzero(as_tuple=True)
        vertical = "top" if ys.float().mean() < 16 else "bottom"
        horizontal = "left" if xs.float().mean() < 16 else "right"
        assert s["answer"] == f"{vertical} {horizontal}"


def test_compare_is_balanced_and_correct() -> None:
    options = TaskOptions(compare_qtypes=["same_colour", "same_shape"])
    samples = generate_samples("compare", "train", 50, seed=0, options=options)
    answers = [s.answer for s in samples]
    assert answers.count("yes") == 25 and answers.count("no") == 25
    for s in samples:
        key = "colour" if s.meta["qtype"] == "same_colour" else "shape"
        first, second = (m.facts[key] for m in s.media)
        assert (first == second) == (s.answer == "yes")


def test_video_direction_follows_the_frames() -> None:
    ds = make_task_dataset("video_motion", "test", 12, seed=2, options=TaskOptions(video_frames=4))
    for s, raw in zip(ds, ds.samples):
        frames = s["images"][0]
        centres = []
        for frame, pic in zip(frames, raw.media[0].frames, strict=True):
            ys, xs = object_mask(frame, pic.background).nonzero(as_tuple=True)
            centres.append((xs.float().mean().item(), ys.float().mean().item()))
        dx, dy = centres[-1][0] - centres[0][0], centres[-1][1] - centres[0][1]
        expected = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert s["answer"] == expected and s["answer"] in DIRECTIONS
        assert all(b != a for a, b in itertools.pairwise(centres))  # it moves every frame


def test_distractor_tags_one_target_and_scales_to_400_images() -> None:
    for s in generate_samples("distractor", "test", 3, seed=0, options=TaskOptions(distractor_n=400)):
        assert s.text.count(IMAGE_TOKEN) == len(s.media) == 400 and s.text.count("target") == 2  # tag + question
        assert s.answer == COLOURS[s.media[s.meta["target"]].facts["colour"]]
        assert s.meta["image_answers"][s.meta["target"]] == s.answer
    ds = make_task_dataset("distractor", "test", 2, seed=0, options=TaskOptions(distractor_n=64))
    assert ds.pixels(32).shape == (128, 1, 3, 32, 32) and len(ds[1]["images"]) == 64


def test_interleaved_asks_about_the_last_image() -> None:
    for s in generate_samples("interleaved", "test", 20, seed=0, options=TaskOptions(interleaved_turns=3)):
        assert s.text.count(IMAGE_TOKEN) == 3 and s.text.endswith("answer :")
        assert s.meta["image_answers"][-1] == s.answer
        assert s.text.count("answer :") == 3  # two answered turns, one open


def test_two_object_spatial_can_ask_before_the_image() -> None:
    for first in (False, True):
        options = TaskOptions(spatial_objects=2, spatial_question_first=first)
        for s in generate_samples("spatial", "test", 12, seed=0, options=options):
            colour, shape = s.text.split("where is the ")[1].split(" ?")[0].split()
            named = [o for o in s.media[0].frames[0].objects if (COLOURS[o.colour], SHAPES[o.shape]) == (colour, shape)]
            assert len(named) == 1 and s.answer == quadrant_words(_quadrant_of(named[0]))
            assert s.text.startswith("question : where is the") == first and s.text.endswith("</img> answer :") == first
            assert s.text.index("question") < s.text.index(IMAGE_TOKEN) if first else s.text.startswith(MEDIA_OPEN)


def test_two_object_spatial_can_name_the_object_by_its_shape_alone() -> None:
    options = TaskOptions(spatial_objects=2, spatial_ask_by="shape")
    samples = generate_samples("spatial", "test", 40, seed=0, options=options)
    for s in samples:
        shape = s.text.split("where is the ")[1].split(" ?")[0]
        objects = s.media[0].frames[0].objects
        assert len({o.shape for o in objects}) == 2 and s.meta["qtype"] == "where_shape"
        named = [o for o in objects if SHAPES[o.shape] == shape]
        assert len(named) == 1 and s.answer == quadrant_words(_quadrant_of(named[0]))
    assert len({o.colour for s in samples for o in s.media[0].frames[0].objects}) > 1
    with pytest.raises(ValueError, match="spatial_ask_by"):
        generate_samples("spatial", "test", 2, options=TaskOptions(spatial_objects=2, spatial_ask_by="size"))


def _quadrant_of(obj) -> int:
    return int(obj.x >= 0.5) + 2 * int(obj.y >= 0.5)


def test_fine_detail_uses_disjoint_digit_instances_for_train_and_test() -> None:
    rows = {
        split: {s.media[0].frames[0].objects[0].digit_row for s in generate_samples("fine_detail", split, 60)}
        for split in ("train", "test")
    }
    assert rows["train"] and rows["test"] and not rows["train"] & rows["test"]
    s = generate_samples("fine_detail", "test", 1)[0]
    assert s.answer == NUMBER_WORDS[s.media[0].frames[0].objects[0].digit]


def test_several_resolutions_draw_the_same_scene() -> None:
    ds = make_task_dataset("fine_detail", "test", 4, seed=0, image_sizes=(32, 64))
    s = ds[0]
    small, large = s["images_by_size"][32][0], s["images_by_size"][64][0]
    assert small.shape == (3, 32, 32) and large.shape == (3, 64, 64) and s["images"][0] is not large
    pooled = torch.nn.functional.avg_pool2d(large[None], 2)[0]
    assert (pooled - small).abs().mean() < 0.05  # same scene: only noise and anti-aliasing differ


def test_text_only_prompt_and_baselines() -> None:
    assert fill_captions(f"x {IMAGE_TOKEN} y {IMAGE_TOKEN}", ["a", "b"]) == "x a y b"
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 captions"):
        fill_captions(f"{IMAGE_TOKEN} {IMAGE_TOKEN}", ["a"])
    compare = generate_samples("compare", "test", 40)
    assert baselines(compare) == {"chance": 0.5, "majority": 0.5, "random_image": None}
    distract = generate_samples("distractor", "test", 40, options=TaskOptions(distractor_n=4))
    expected = np.mean([np.mean([a == s.answer for a in s.meta["image_answers"]]) for s in distract])
    level = baselines(distract)
    assert level["random_image"] == pytest.approx(expected) and level["random_image"] >= 0.25
    assert level["chance"] == pytest.approx(1 / 6)
    report = task_report(None, generate_samples("attribute", "test", 30))
    assert set(report["per_qtype"]) == {"colour", "shape"} and "text_ceiling" not in report


def test_unknown_names_fail_clearly() -> None:
    with pytest.raises(ValueError, match="Unknown task 'colours'.*attribute"):
        generate_samples("colours", "train", 1)
    with pytest.raises(ValueError, match="Unknown split 'dev'"):
        generate_samples("count", "dev", 1)
    with pytest.raises(KeyError, match="'zebra' is not in the world vocabulary"):
        encode_words("a zebra")


# ---- tokenizer --------------------------------------------------------------------------------------------------
def test_tokenizer_round_trip(tmp_path) -> None:
    from transformers import AutoTokenizer

    tok = build_tokenizer()
    sample = generate_samples("compare", "train", 1)[0]
    text = f"{sample.text} {sample.answer}"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.convert_tokens_to_ids(IMAGE_TOKEN)) == 2
    assert ids[1:] == encode_words(text) and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=False) == f"<bos> {text}"
    assert tok.decode(tok(f"red{tok.eos_token}", add_special_tokens=False)["input_ids"]) == "red <eos>"
    assert IMAGE_TOKEN in tok.all_special_tokens
    assert tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}) == 0  # adapters add nothing
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text)["input_ids"] == ids and len(again) == len(VOCAB) and again.padding_side == "left"
    batch = again(["red", "a red circle"], padding=True)
    assert batch["input_ids"][0][:2] == [tok.pad_token_id] * 2  # left padding


# ---- pretraining steps ------------------------------------------------------------------------------------------
def test_a_few_contrastive_steps_lower_the_loss() -> None:
    from open_clip.loss import ClipLoss

    cfg = VitPretrainConfig(model_kwargs={**VitPretrainConfig().model_kwargs, "depth": 1}, text_layers=1)
    model = ClipModel(create_vit(cfg), cfg)
    images, media = PictureStream({"object": 1.0}, 0, WorldConfig(), 32, "pretrain", 0).batch(24)
    ids = caption_ids([m.caption for m in media])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        loss = ClipLoss()(model.encode_image(images), model.encode_text(ids), model.logit_scale.exp())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


def test_a_few_lm_steps_lower_the_answer_loss() -> None:
    cfg = LMPretrainConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
    model = build_lm(cfg)
    batch = encode_documents(generate_samples("attribute", "train", 16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss, _ = document_loss(model, *batch, answer_weight=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_jittered_slots_keep_caption_order_and_bounds() -> None:
    rng = np.random.default_rng(0)
    sample = generate_samples("interleaved", "train", 1, options=TaskOptions(interleaved_turns=3))[0]
    plain = text_only_prompt(sample)
    lengths = set()
    for _ in range(20):
        prompt = jittered_prompt(sample, 16, rng)
        slots = [part.split(MEDIA_CLOSE)[0].split() for part in prompt.split(MEDIA_OPEN)[1:]]
        for slot, caption in zip(slots, sample.meta["captions"], strict=True):
            assert [w for w in slot if w != FILLER] == caption.split() and len(caption.split()) <= len(slot) <= 16
            lengths.add(len(slot))
        assert prompt.replace(f" {FILLER}", "").replace(f"{FILLER} ", "") == plain  # only fillers were added
        encode_words(prompt)  # the filler is a vocabulary word
    assert len(lengths) > 3  # the slot length varies
    assert spread_caption("a red circle", 2, rng) == "a red circle"  # never truncates


def test_lm_documents_follow_task_options_and_jitter_share() -> None:
    cfg = LMPretrainConfig(
        tasks=["spatial"], spatial_objects=[2], task_options={"spatial_question_first": True},
        slot_jitter=40, slot_jitter_share=1.0, batch_size=6,
    )
    stream = DocumentStream(cfg, WorldConfig())
    _, samples = stream.batch(warm_up=True)
    assert all(s.text.startswith("question : where is the") for s in samples)
    assert sum(FILLER in p for p in stream.prompts(samples)) >= 5  # 15-word captions in slots of 15-40 words
    off = DocumentStream(LMPretrainConfig(tasks=["attribute"], batch_size=6), WorldConfig())
    _, samples = off.batch(warm_up=True)
    assert off.prompts(samples) == [text_only_prompt(s) for s in samples]
    groups = eval_groups(["spatial"], 3, 0, cfg, WorldConfig())
    assert list(groups) == ["spatial/where_named"] and groups["spatial/where_named"][0].text.startswith("question")


# ---- caching ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> WorldBackbones:
    torch.manual_seed(0)
    return build_world_backbones(tiny_config(), cache_dir=tmp_path_factory.mktemp("world"))


def test_tiny_build_writes_loadable_backbones(tiny_world: WorldBackbones) -> None:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    from encoders import build_encoder

    assert all(tiny_world.built.values()) and set(tiny_world.quality) == {"vit", "expert", "lm"}
    for name in ("vit", "expert"):
        spec = tiny_world.encoder_spec(name)
        encoder = build_encoder(spec)
        saved = load_file(spec["pretrained"])
        own = encoder.model.state_dict()
        assert all(torch.equal(own[k], v) for k, v in saved.items() if k in own)
        x = torch.rand(2, 3, spec["image_size"], spec["image_size"])
        assert encoder(x, [-1]).last.shape[0] == 2
    quality = json.loads((Path(tiny_world.dirs["vit"]) / "quality.json").read_text())
    assert "object_96way" in quality["zero_shot_retrieval"]
    lm = LlamaForCausalLM.from_pretrained(tiny_world.lm_dir)
    tok = AutoTokenizer.from_pretrained(tiny_world.lm_dir)
    assert lm.config.vocab_size == len(tok) == len(VOCAB) and lm.config.tie_word_embeddings
    assert {"perplexity", "text_qa", "gate_passed"} <= set(tiny_world.quality["lm"])


def test_second_build_loads_from_the_cache_and_hash_follows_config(tiny_world: WorldBackbones) -> None:
    root = os.path.dirname(tiny_world.dirs["vit"])
    again = build_world_backbones(tiny_config(), cache_dir=root)
    assert not any(again.built.values()) and again.dirs == tiny_world.dirs and again.quality == tiny_world.quality
    changed = tiny_config(
        lm=LMPretrainConfig(
            steps=5, single_steps=2, batch_size=8, eval_per_qtype=2, max_extra_rounds=0, tasks=["attribute"]
        )
    )
    assert config_hash("lm", changed) != config_hash("lm", tiny_config())
    assert config_hash("vit", changed) == config_hash("vit", tiny_config())
    assert config_hash("vit", tiny_config(world=WorldConfig(noise_std=0.05))) != config_hash("vit", tiny_config())
    third = build_world_backbones(changed, cache_dir=root)
    assert third.built == {"vit": False, "expert": False, "lm": True} and third.dirs["lm"] != tiny_world.dirs["lm"]


def test_lazy_components_are_built_on_first_use(tiny_world: WorldBackbones, tmp_path) -> None:
    root = os.path.dirname(tiny_world.dirs["vit"])
    cached = build_world_backbones(tiny_config(lazy=["expert"]), cache_dir=root)  # in the cache: loaded at once
    assert cached.expert_spec == tiny_world.expert_spec and not cached.built["expert"]
    fresh = build_world_backbones(tiny_config(components=["vit", "expert"], lazy=["expert"]), cache_dir=tmp_path)
    assert fresh.expert_spec is None and "expert" not in fresh.built and fresh.built == {"vit": True}
    encoders, _ = fresh.resolve_specs({"vit": {"world": "vit"}, "expert": {"world": "expert"}}, None)
    assert fresh.built["expert"] and encoders["expert"] == fresh.expert_spec and "expert" in fresh.quality
    with pytest.raises(ValueError, match="world.lazy: unknown \\['clip'\\]"):
        build_world_backbones(tiny_config(lazy=["clip"]), cache_dir=tmp_path)


def test_cache_writes_are_atomic(tmp_path) -> None:
    def crash(tmp, final) -> None:
        (tmp / "vit.safetensors").write_text("half written")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError, match="killed mid-build"):
        cached_build(tmp_path, "vit-abc", crash)
    assert not (tmp_path / "vit-abc").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    (tmp_path / "vit-abc").mkdir()  # a leftover without quality.json counts as incomplete and is replaced
    (tmp_path / ".tmp-vit-abc-killed").mkdir()  # so is the temporary directory of a killed build

    def good(tmp, final) -> None:
        (tmp / "quality.json").write_text("{}")

    path, built = cached_build(tmp_path, "vit-abc", good)
    assert built and (path / "quality.json").is_file() and not (tmp_path / ".tmp-vit-abc-killed").exists()
    assert cached_build(tmp_path, "vit-abc", crash) == (path, False)  # complete: never rebuilt


def test_a_component_another_process_builds_is_busy_not_waited_for(tmp_path) -> None:
    def good(tmp, final) -> None:
        (tmp / "quality.json").write_text("{}")

    with backbones._locked(tmp_path / ".lm-abc.lock"):  # held as another process's build would hold it
        with pytest.raises(backbones.Busy):
            cached_build(tmp_path, "lm-abc", good, wait=False)
    assert cached_build(tmp_path, "lm-abc", good, wait=False)[1]  # free again: built here


def test_workers_on_an_empty_cache_build_different_components_at_once() -> None:
    """While another worker builds the LM, this one builds the ViT, then the lazy expert, then waits for the LM."""
    busy_until_waited = {"lm"}
    calls: list[tuple[str, bool]] = []

    def load(component: str, wait: bool = True) -> None:
        calls.append((component, wait))
        if component in busy_until_waited and not wait:
            raise backbones.Busy(component)

    backbones._load_all(["vit", "lm"], ["expert"], load)
    assert calls == [("vit", False), ("lm", False), ("expert", False), ("lm", False), ("lm", True)]
    calls.clear()
    backbones._load_all(["vit", "lm"], [], load)  # nothing lazy to build meanwhile: wait for the LM
    assert calls == [("vit", False), ("lm", False), ("lm", True)]


def test_cache_root_precedence(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("BRIDGELAB_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env" / "world"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("BRIDGELAB_CACHE")
    assert cache_root().parts[-3:] == (".cache", "bridgelab", "world")


def test_resolve_specs_fills_in_world_backbones(tiny_world: WorldBackbones) -> None:
    encoder, llm = tiny_world.resolve_specs(
        {"world": "vit", "unfreeze_last_k": 1}, {"world": "lm", "freeze": True, "pretrained": "world"}
    )
    assert encoder == {**tiny_world.vit_spec, "unfreeze_last_k": 1}
    assert llm == {"name": "hf", "pretrained": tiny_world.lm_dir, "chat_template": "none", "freeze": True}
    pair, same = tiny_world.resolve_specs({"vit": {"world": "vit"}, "expert": "world:expert"}, {"name": "tiny_llama"})
    assert pair == {"vit": tiny_world.vit_spec, "expert": tiny_world.expert_spec} and same == {"name": "tiny_llama"}
    with pytest.raises(ConfigError, match="choose 'vit' or 'expert'"):
        tiny_world.resolve_specs({"world": "clip"}, None)
    preset = {
        "name": "timm_vit",
        "architecture": tiny_world.vit_spec["architecture"],
        "image_size": 32,
        "model_kwargs": tiny_world.vit_spec["model_kwargs"],
        "pretrained": "world",
        "mean": None,
        "frozen": True,
    }
    encoder, llm = tiny_world.resolve_specs(preset, {"name": "tiny_llama", "pretrained": "world", "freeze": False})
    assert encoder == {**tiny_world.vit_spec, "frozen": True}
    assert llm == {**tiny_world.llm_spec(), "freeze": False}
    with pytest.raises(ConfigError, match="model_kwargs .* differs from the world vit's"):
        tiny_world.resolve_specs({**preset, "model_kwargs": {"depth": 2}}, None)


def test_world_lm_loads_through_the_llm_adapter(tiny_world: WorldBackbones) -> None:
    from llm_adapters import build_lm as build_adapter

    adapter = build_adapter(tiny_world.llm_spec())
    assert adapter.template.name == "none"
    assert adapter.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == VOCAB[IMAGE_TOKEN]
    assert adapter.model.get_input_embeddings().weight.shape[0] == len(VOCAB)


def test_world_data_source_builds_task_data(tiny_world: WorldBackbones) -> None:
    from experiments.harness.data import DATA_SOURCES

    entry, config = DATA_SOURCES.make_config(
        {
            "name": "experiments.world.datasource:world",
            "tasks": ["attribute", "distractor"],
            "train_size": 6,
            "eval_size": 5,
            "options": {"distractor_n": 2},
            "eval_options": {"distractor_n": 3},
        }
    )
    assert DATA_SOURCES.get("world") is entry  # the import path registered the short name
    data = entry.cls(config, tiny_world).build(seed=1)
    assert set(data.train) == set(data.eval) == {"attribute", "distractor"}
    assert len(data.train["distractor"][0]["images"]) == 2 and len(data.eval["distractor"][0]["images"]) == 3
    assert all(s["meta"]["text_ceiling"] in (0.0, 1.0) for s in data.eval["attribute"])
    info = data.info["distractor"]
    assert info["chance"] == pytest.approx(1 / 6) and 0 <= info["text_ceiling"] <= 1 and info["random_image"] > 0
    other_seed = entry.cls(config, tiny_world).build(seed=2)
    assert other_seed.eval["attribute"][0]["text"] == data.eval["attribute"][0]["text"]  # fixed evaluation pool
    assert not torch.equal(other_seed.train["attribute"][0]["images"][0], data.train["attribute"][0]["images"][0])
