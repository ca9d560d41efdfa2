"""Tasks of the embedded world: deterministic generators of question-answer samples, each probing a paper's claim.

A sample is a dict::

    {"text": "<img> <image> </img> question : what colour is it ? answer :",
     "images": [tensor (C, H, W) in [0, 1]]            # or one (F, C, H, W) tensor per video
     "images_by_size": {32: [...], 64: [...]},         # the same media at every requested resolution
     "answer": "red",
     "meta": {"task", "qtype", "choices", "captions", "image_answers", "n_images", "index"}}

``<image>`` (see ``vocab.IMAGE_TOKEN``) is the placeholder of one media item, in order of appearance; the
``<img>`` ... ``</img>`` words around it frame a media slot in the text exactly as in the LM's pretraining, where
the slot holds the caption (``meta["captions"]``) instead of visual tokens. The tokenizer prepends ``<bos>``;
the training target is ``" " + answer`` followed by ``<eos>``. ``meta["choices"]`` lists every possible answer
(for constrained decoding); on multi-image tasks whose question could be asked of any item (distractor,
interleaved), ``meta["image_answers"]`` gives per media item the answer about that item, which yields the "answer
from a random image" baseline; elsewhere its entries are ``None`` (the baseline does not apply).

Tasks (``TASKS``) and what they probe:

=============== ======================================================================= ==================
task            question                                                                claim probed
=============== ======================================================================= ==================
attribute       "what colour is it ?" / "what shape is it ?" (shapes or a digit)        coarse semantics
count           "how many objects are there ?" (1-4 shapes)                             counting
spatial         "where is it ?" (a shape/digit) or, with 2 shapes, "where is the red    spatial layout,
                circle ?" / "where is the circle ?" (``spatial_ask_by``; optionally     binding
                asked before the image: ``spatial_question_first``)
fine_detail     "which digit is it ?" (a small tinted digit)                            MMFuser, Eagle
compare         "do both images show the same colour ?" yes/no, balanced (2 images)     multi-image (NLVR2)
distractor      "what colour is the target ?", one ``target``-tagged image among N      mPLUG-Owl3
video_motion    "which way does it move ?" over F frames of one video item              video
interleaved     K image-question-answer turns; the last answer is asked                 Flamingo
=============== ======================================================================= ==================

Transfer, not only learnability: a format the LM answers from captions may still not transfer to visual tokens
(``interleaved``: MLP 0.46 vs random-image 0.45 with a text ceiling of 1.0). Two-object ``spatial`` can be asked
before the image (``spatial_question_first``), and the LM's pretraining can jitter slot lengths
(``pretrain_lm.LMPretrainConfig.slot_jitter``) so that 16 visual tokens in a slot look like a caption to it.

Generation is deterministic: the same ``(task, split, n, seed, options, world)`` gives the same text and images.
Splits ``train`` / ``val`` / ``test`` draw from independent streams; val and test use held-out digit instances.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from experiments.world.render import render
from experiments.world.scenes import QUADRANT_WORDS, Media, SceneSampler, WorldConfig, object_table, quadrant_words
from experiments.world.vocab import COLOURS, DIRECTIONS, IMAGE_TOKEN, MEDIA_CLOSE, MEDIA_OPEN, NUMBER_WORDS, SHAPES

TASKS: tuple[str, ...] = (
    "attribute",
    "count",
    "spatial",
    "fine_detail",
    "compare",
    "distractor",
    "video_motion",
    "interleaved",
)  # append only: the index seeds the task's stream
SPLITS: dict[str, tuple[int, str]] = {  # split -> (stream id, digit pool)
    "train": (0, "train"),
    "val": (1, "eval"),
    "test": (2, "eval"),
    "pretrain": (3, "train"),  # backbone pretraining streams (vision and LM)
}
SLOT = f"{MEDIA_OPEN} {IMAGE_TOKEN} {MEDIA_CLOSE}"
DESCRIPTIONS: dict[str, str] = {
    "attribute": "colour or shape of one object (coarse semantics)",
    "count": "how many identical shapes, 1-4 (counting)",
    "spatial": "which quadrant an object is in (spatial layout)",
    "fine_detail": "which small tinted digit is shown (fine detail: MMFuser, Eagle)",
    "compare": "do two images show the same colour, yes/no balanced (multi-image, NLVR2-like)",
    "distractor": "colour of the target-tagged image among N (many images: mPLUG-Owl3)",
    "video_motion": "which way a shape moves over the frames (video)",
    "interleaved": "answer about the last of several image-question-answer turns (interleaved: Flamingo)",
}


@dataclass(frozen=True)
class QType:
    """A question type: its question text, every possible answer, and how to answer it from a media item."""

    question: str
    choices: tuple[str, ...]
    answer: Callable[[Media], str | None]


def _fact(key: str, words: Sequence[str]) -> Callable[[Media], str | None]:
    return lambda m: words[m.facts[key]] if key in m.facts else None


QTYPES: dict[str, QType] = {
    "colour": QType("what colour is it ?", COLOURS, _fact("colour", COLOURS)),
    "shape": QType("what shape is it ?", SHAPES, _fact("shape", SHAPES)),
    "count": QType("how many objects are there ?", NUMBER_WORDS[1:5], _fact("count", NUMBER_WORDS)),
    "digit": QType("which digit is it ?", NUMBER_WORDS, _fact("digit", NUMBER_WORDS)),
    "where": QType("where is it ?", QUADRANT_WORDS, _fact("where", QUADRANT_WORDS)),
    "where_named": QType("where is the {colour} {shape} ?", QUADRANT_WORDS, lambda m: None),
    "where_shape": QType("where is the {shape} ?", QUADRANT_WORDS, lambda m: None),
    "same_colour": QType("do both images show the same colour ?", ("yes", "no"), lambda m: None),
    "same_shape": QType("do both images show the same shape ?", ("yes", "no"), lambda m: None),
    "target_colour": QType("what colour is the target ?", COLOURS, _fact("colour", COLOURS)),
    "motion": QType("which way does it move ?", DIRECTIONS, _fact("direction", DIRECTIONS)),
}
# Question types that apply to each still-image kind (used by the interleaved task).
KIND_QTYPES: dict[str, tuple[str, ...]] = {
    "object": ("colour", "shape", "where"),
    "count": ("colour", "shape", "count"),
    "digit": ("colour", "digit", "where"),
}


@dataclass
class TaskOptions:
    """Per-task settings. Defaults follow WORLD_PROTOTYPE.md's measured, learnable formats.

    Attributes:
        attribute_qtypes: question types of ``attribute`` (from "colour", "shape").
        attribute_kinds: scene kinds of ``attribute`` (a question is only asked of kinds it applies to: no shape
            question about a digit). Asking colour of several kinds, where the colour word sits at different caption
            positions, makes the LM learn to find the colour word rather than a position.
        spatial_objects: 1 ("where is it ?" about a shape or a digit) or 2 ("where is the red circle ?" with two
            shapes: needs binding; with the question after the image the 2-layer LM did not learn it from text in
            1500 steps, 0.47).
        spatial_question_first: with 2 objects, ask before the image ("question : where is the red circle ?
            <img> ... </img> answer :"), so the LM reads the slot already knowing which object is asked about
            (and an instruction-aware bridge could too); the binding then happens inside the slot.
        spatial_ask_by: with 2 objects, name the one asked about by ``"colour_shape"`` ("where is the red circle
            ?"; the two may share a colour or a shape, so both words must match) or by ``"shape"`` ("where is the
            circle ?"; the two have different shapes). Either way the answer binds an object to its place.
        compare_qtypes: from "same_colour" (prototype: text ceiling 1.0) and "same_shape".
        distractor_n: images per ``distractor`` sample (1 target + N-1 distractors); up to 400 and beyond.
        video_frames: frames per ``video_motion`` item.
        interleaved_turns: image-question-answer turns per ``interleaved`` sample (the last one is asked).
        mixed_kinds: scene kinds filling multi-image slots (compare, distractor, interleaved).
    """

    attribute_qtypes: list[str] = field(default_factory=lambda: ["colour", "shape"])
    attribute_kinds: list[str] = field(default_factory=lambda: ["object", "count", "digit"])
    spatial_objects: int = 1
    spatial_question_first: bool = False
    spatial_ask_by: str = "colour_shape"
    compare_qtypes: list[str] = field(default_factory=lambda: ["same_colour"])
    distractor_n: int = 4
    video_frames: int = 4
    interleaved_turns: int = 3
    mixed_kinds: list[str] = field(default_factory=lambda: ["object", "count", "digit"])


@dataclass
class Sample:
    """A generated sample before rendering: text with placeholders, answer, media descriptions, meta."""

    text: str
    answer: str
    media: list[Media]
    meta: dict[str, Any]


def _meta(task: str, qtype: str, media: Sequence[Media], image_answers: Sequence[str | None] | None) -> dict:
    return {
        "task": task,
        "qtype": qtype,
        "choices": list(QTYPES[qtype].choices),
        "captions": [m.caption for m in media],
        "image_answers": list(image_answers) if image_answers is not None else [None] * len(media),
        "n_images": len(media),
    }


def _single(task: str, qtype: str, media: Media) -> Sample:
    answer = QTYPES[qtype].answer(media)
    assert answer is not None, (qtype, media.kind)
    text = f"{SLOT} question : {QTYPES[qtype].question} answer :"
    return Sample(text, answer, [media], _meta(task, qtype, [media], None))


def _kind_item(sampler: SceneSampler, kind: str, **fixed: int) -> Media:
    if kind == "digit":
        fixed.pop("shape", None)
    return getattr(sampler, kind)(**fixed)


# ---- task generators: (sampler, options, n) -> list[Sample] ------------------------------------------------------
def _attribute(sampler: SceneSampler, opt: TaskOptions, n: int) -> list[Sample]:
    for q in opt.attribute_qtypes:
        if q not in ("colour", "shape"):
            raise ValueError(f"attribute_qtypes: '{q}' is not one of 'colour', 'shape'")
    out = []
    for q in sampler.rng.choice(opt.attribute_qtypes, size=n):
        kinds = [k for k in opt.attribute_kinds if q in KIND_QTYPES.get(k, ())]
        if not kinds:
            raise ValueError(f"attribute_kinds {opt.attribute_kinds} has no scene kind a '{q}' question applies to")
        out.append(_single("attribute", str(q), sampler.still(str(sampler.rng.choice(kinds)))))
    return out


def _count(sampler: SceneSampler, opt: TaskOptions, n: int) -> list[Sample]:
    return [_single("count", "count", sampler.count()) for _ in range(n)]


def _fine_detail(sampler: SceneSampler, opt: TaskOptions, n: int) -> list[Sample]:
    return [_single("fine_detail", "digit", sampler.digit()) for _ in range(n)]


def _spatial(sampler: SceneSampler, opt: TaskOptions, n: int) -> list[Sample]:
    if opt.spatial_objects == 1:
        return [_single("spatial", "where", sampler.still(str(k))) for k in sampler.rng.choice(["object", "digit"], n)]
    if opt.spatial_objects != 2:
        raise ValueError(f"spatial_objects must be 1 or 2, got {opt.spatial_objects}")
    qtype = {"colour_shape": "where_named", "shape": "where_shape"}.get(opt.spatial_ask_by)
    if qtype is None:
        raise ValueError(f"spatial_ask_by must be 'colour_shape' or 'shape', got {opt.spatial_ask_by!r}")
    out = []
    for _ in range(n):
        media = sampler.pair(distinct_shapes=qtype == "where_shape")
        obj = media.frames[0].objects[int(sampler.rng.integers(2))]
        question = QTYPES[qtype].question.format(colour=COLOURS[obj.colour], shape=SHAPES[obj.shape])
        if opt.spatial_question_first:
            text = f"question : {question} {SLOT} answer :"
        else:
            text = f"{SLOT} question : {question} answer :"
        out.append(Sample(text, quadrant_words(obj.quadrant), [media], _meta("spatial", qtype, [media], None)))
    return out


def _compare(sampler: SceneSampler, opt: TaskOptions, n: int) -> list[Sample]:
    rng, out = sampler.rng, []
    same = rng.permutation(np.arange(n) < (n + 1) // 2)  # exactly balanced yes/no
    for i in range(n):
        qtype = str(rng.choice(opt.compare_qtypes))
        key = {"same_colour": "colour", "same_shape": "shape"}.get(qtype)
        if key is None:
            raise ValueError(f"compare_qtypes: '{qtype}' is not one of 'same_colour', 'same_shape'")
        kinds = [k for k in opt.mixed_kinds if key == "colour" or k != "digit"]
        first = _kind_item(sampler, str(rng.choice(kinds)))
        n_values = len(COLOURS if key == "colour" else SHAPES)
        value = first.facts[key] if same[i] else (first.facts[key] + int(rng.integers(1, n_values))) % n_values
        second = _kind_item(sampler, str(rng.choice(kinds)), **{key: value})
        media = [first, second]
        text = f"{SLOT} {SLOT} question : {QTYPES[qtype].question} answer :"
        out.append(Sample(text, "yes" if same[i] else "no", media, _meta("compare", qtype, media, None)))
    return out


def _distractor(sampler: SceneSampler, opt: TaskOptions, n: int) -> list[Sample]:
    if opt.distractor_n < 1:
        raise ValueError(f"distractor_n must be >= 1, got {opt.distractor_n}")
    rng, out = sampler.rng, []
    for _ in range(n):
        media = [sampler.still(str(k)) for k in rng.choice(opt.mixed_kinds, size=opt.distractor_n)]
        target = int(rng.integers(opt.distractor_n))
        slots = " ".join(f"target {SLOT}" if j == target else SLOT for j in range(opt.distractor_n))
        text = f"{slots} question : {QTYPES['target_colour'].question} answer :"
        answers = [QTYPES["target_colour"].answer(m) for m in media]
        meta = _meta("distractor", "target_colour", media, answers) | {"target": target}
        out.append(Sample(text, answers[target], media, meta))
    return out


def _video_motion(sampler: SceneSampler, opt: TaskOptions, n: int) -> list[Sample]:
    return [_single("video_motion", "motion", sampler.video(opt.video_frames)) for _ in range(n)]


def _interleaved(sampler: SceneSampler, opt: TaskOptions, n: int) -> list[Sample]:
    if opt.interleaved_turns < 1:
        raise ValueError(f"interleaved_turns must be >= 1, got {opt.interleaved_turns}")
    rng, out = sampler.rng, []
    kinds = [k for k in opt.mixed_kinds if k in KIND_QTYPES]
    for _ in range(n):
        media = [sampler.still(str(k)) for k in rng.choice(kinds, size=opt.interleaved_turns)]
        qtypes = [str(rng.choice(KIND_QTYPES[m.kind])) for m in media]
        turns = [f"{SLOT} question : {QTYPES[q].question} answer :" for q in qtypes]
        answers = [QTYPES[q].answer(m) for q, m in zip(qtypes, media)]
        text = " ".join(f"{t} {a}" for t, a in zip(turns[:-1], answers[:-1]))
        text = f"{text} {turns[-1]}".strip()
        last = qtypes[-1]
        meta = _meta("interleaved", last, media, [QTYPES[last].answer(m) for m in media]) | {"turn_qtypes": qtypes}
        out.append(Sample(text, answers[-1], media, meta))
    return out


GENERATORS: dict[str, Callable[[SceneSampler, TaskOptions, int], list[Sample]]] = {
    "attribute": _attribute,
    "count": _count,
    "spatial": _spatial,
    "fine_detail": _fine_detail,
    "compare": _compare,
    "distractor": _distractor,
    "video_motion": _video_motion,
    "interleaved": _interleaved,
}


def check_task(task: str) -> None:
    if task not in GENERATORS:
        raise ValueError(f"Unknown task '{task}'; choose from {', '.join(TASKS)}")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}'; choose from {', '.join(SPLITS)}")


def seed_sequence(seed: int, task: str, split: str, *extra: int) -> np.random.SeedSequence:
    """The random stream of ``(seed, task, split)``; tasks and splits never share a stream."""
    check_task(task)
    check_split(split)
    return np.random.SeedSequence([seed, TASKS.index(task), SPLITS[split][0], *extra])


def generate_samples(
    task: str,
    split: str,
    n: int,
    seed: int = 0,
    options: TaskOptions | None = None,
    world: WorldConfig | None = None,
) -> list[Sample]:
    """``n`` samples of ``task`` without pixels (fast; used for text-only documents and ceilings)."""
    rng = np.random.default_rng(seed_sequence(seed, task, split))
    sampler = SceneSampler(rng, world or WorldConfig(), SPLITS[split][1])
    samples = GENERATORS[task](sampler, options or TaskOptions(), n)
    for i, s in enumerate(samples):
        s.meta["index"] = i
    return samples


def fill_captions(text: str, captions: Sequence[str]) -> str:
    """Replace each ``<image>`` placeholder, in order, by its media item's caption (the text-only view)."""
    parts = text.split(IMAGE_TOKEN)
    if len(parts) - 1 != len(captions):
        raise ValueError(f"Text has {len(parts) - 1} {IMAGE_TOKEN} placeholders but {len(captions)} captions")
    out = [parts[0]]
    for caption, rest in zip(captions, parts[1:]):
        out += [caption, rest]
    return "".join(out)


def text_only_prompt(sample: Sample | dict) -> str:
    """The sample's prompt with true captions in the media slots (what the LM's text-only ceiling sees)."""
    text = sample.text if isinstance(sample, Sample) else sample["text"]
    meta = sample.meta if isinstance(sample, Sample) else sample["meta"]
    return fill_captions(text, meta["captions"])


class WorldDataset(torch.utils.data.Dataset):
    """Rendered samples of one task and split: ``dataset[i]`` is the sample dict of the module docstring.

    Pixels are stored once as uint8 per resolution (the noise is far above the quantisation step) and returned
    as float in [0, 1]. For caching frozen-encoder features, :meth:`pixels` gives all media of the dataset as
    one ``(N_media, F, C, H, W)`` tensor and :meth:`media_rows` the rows of sample ``i``.
    """

    def __init__(self, samples: list[Sample], pixels: dict[int, torch.Tensor], frames_per_media: np.ndarray) -> None:
        self.samples = samples
        self.image_sizes = tuple(pixels)
        self._pixels = pixels  # size -> (n_canvas, 3, H, W) uint8
        self._canvas_start = np.concatenate([[0], np.cumsum(frames_per_media)])
        counts = np.array([len(s.media) for s in samples])
        self._media_start = np.concatenate([[0], np.cumsum(counts)])
        self._frames = frames_per_media

    def __len__(self) -> int:
        return len(self.samples)

    def media_rows(self, index: int) -> range:
        """Rows of :meth:`pixels` holding sample ``index``'s media, in order of appearance."""
        return range(int(self._media_start[index]), int(self._media_start[index + 1]))

    def _media(self, size: int, row: int) -> torch.Tensor:
        a, b = self._canvas_start[row], self._canvas_start[row + 1]
        frames = self._pixels[size][a:b].float().div_(255.0)
        return frames if self._frames[row] > 1 else frames[0]

    def pixels(self, size: int | None = None) -> torch.Tensor:
        """Every media item, ``(N_media, F, C, H, W)`` float (all items of a task share F)."""
        size = self.image_sizes[0] if size is None else size
        if len(set(self._frames.tolist())) > 1:
            raise ValueError("Media of this dataset have different frame counts; use dataset[i] instead")
        images = self._pixels[size].float().div_(255.0)
        return images.reshape(len(self._frames), int(self._frames[0]), *images.shape[1:])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        index %= len(self)
        s = self.samples[index]
        by_size = {size: [self._media(size, r) for r in self.media_rows(index)] for size in self.image_sizes}
        return {
            "text": s.text,
            "images": by_size[self.image_sizes[0]],
            "images_by_size": by_size,
            "answer": s.answer,
            "meta": s.meta,
        }


def render_media(
    media: Sequence[Media], sizes: Sequence[int], world: WorldConfig, seed_seq: np.random.SeedSequence
) -> tuple[dict[int, torch.Tensor], np.ndarray]:
    """Render media at each size: ``{size: (n_canvas, 3, size, size) float}`` and the frames per media item."""
    table, backgrounds, frames = object_table(media)
    out = {}
    for size in sizes:
        gen = torch.Generator().manual_seed(derive_seed(seed_seq, size))
        out[size] = render(
            table, backgrounds, size, noise_std=world.noise_std, generator=gen, supersample=world.supersample
        )
    return out, frames


def make_task_dataset(
    task: str,
    split: str,
    n: int,
    seed: int = 0,
    *,
    image_sizes: int | Sequence[int] = 32,
    options: TaskOptions | None = None,
    world: WorldConfig | None = None,
) -> WorldDataset:
    """Generate and render ``n`` samples of ``task`` for ``split`` (``train``/``val``/``test``).

    ``image_sizes``: one size, or several (e.g. ``(32, 64)`` for a ViT and a higher-resolution expert): the same
    scenes are drawn at each; ``sample["images"]`` holds the first size.
    """
    sizes = (image_sizes,) if isinstance(image_sizes, int) else tuple(image_sizes)
    if not sizes or any(s < 8 for s in sizes):
        raise ValueError(f"image_sizes must be one or more sizes >= 8, got {image_sizes}")
    world = world or WorldConfig()
    samples = generate_samples(task, split, n, seed, options, world)
    media = [m for s in samples for m in s.media]
    float_pixels, frames = render_media(media, sizes, world, seed_sequence(seed, task, split, 1))
    pixels = {size: to_uint8(p) for size, p in float_pixels.items()}
    return WorldDataset(samples, pixels, frames)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Quantise [0, 1] float images to uint8 (how datasets store pixels)."""
    return images.mul(255.0).round_().to(torch.uint8)


def derive_seed(seed_seq: np.random.SeedSequence, *keys: int) -> int:
    """A 63-bit integer seed for a sub-stream ``keys`` of ``seed_seq`` (e.g. the pixel noise at one size)."""
    child = np.random.SeedSequence(seed_seq.entropy, spawn_key=(*seed_seq.spawn_key, *keys))
    return int(child.generate_state(2, np.uint64)[0] >> np.uint64(1))
