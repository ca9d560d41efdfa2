"""Scene sampling for the embedded world: what is in each picture, its caption, and the facts questions ask about.

A :class:`Picture` is one canvas (an image, or one video frame): its objects in resolution-free coordinates, a
background colour, the facts (colour, shape, count, digit, position) and a caption in the world's vocabulary. A
:class:`Media` item is a tuple of pictures (one for an image, F for a video) plus the caption that stands in for it
in text-only documents. Scene kinds:

* ``object``: one shape in a quadrant, "a red circle at the top left";
* ``count``: 1-4 identical shapes in distinct quadrants, "three red circles";
* ``digit``: one tinted scikit-learn digit in a quadrant, "a red digit seven at the top left";
* ``pair``: two different shapes in distinct quadrants, "a red circle at the top left and a blue square at ...";
* ``frame``: one shape in a cell of a 3x3 grid (video frames), "a red circle at the middle centre";
* ``video``: a shape moving left, right, up or down over F frames,
  "a red circle at top left then top centre then top right" (the frame positions, so the direction is inferred).

Object sizes vary (uncaptioned) within the ranges of :class:`WorldConfig`. Digits are split by instance: the
``train`` pool of scikit-learn rows for training and pretraining, the disjoint ``eval`` pool for val/test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from experiments.world.render import DIGIT, PALETTE, ObjectTable, digit_bank
from experiments.world.vocab import COLOURS, DIRECTIONS, HORIZONTAL, NUMBER_WORDS, SHAPE_PLURALS, SHAPES, VERTICAL

STILL_KINDS = ("object", "count", "digit", "pair", "frame")
QUADRANT_WORDS = ("top left", "top right", "bottom left", "bottom right")
MARGIN = 0.02


@dataclass
class WorldConfig:
    """How scenes look (resolution-free). Defaults follow WORLD_PROTOTYPE.md (objects 12-14 px at 32x32).

    Attributes:
        noise_std: Gaussian pixel noise.
        background_max: backgrounds are uniform per channel in ``[0, background_max]`` (dark).
        colour_jitter: uniform per-channel jitter added to the palette colour.
        object_half: half-size range of single objects (``object``, ``pair``), fraction of the image side.
        count_half: half-size range in ``count`` scenes.
        digit_half: half-size range of digits ("small digits": the fine-detail probe).
        frame_half: half-size range in video frames (must fit a third of the image).
        supersample: anti-aliasing factor of the shape rasteriser.
    """

    noise_std: float = 0.03
    background_max: float = 0.3
    colour_jitter: float = 0.05
    object_half: list[float] = field(default_factory=lambda: [0.16, 0.22])
    count_half: list[float] = field(default_factory=lambda: [0.13, 0.19])
    digit_half: list[float] = field(default_factory=lambda: [0.17, 0.21])
    frame_half: list[float] = field(default_factory=lambda: [0.12, 0.15])
    supersample: int = 2


@dataclass(frozen=True)
class Obj:
    """One object: shape id (``render.DIGIT`` for digits), colour id and its jittered RGB, centre, half-size, and
    for digits the scikit-learn row and the digit value."""

    shape: int
    colour: int
    rgb: tuple[float, float, float]
    x: float
    y: float
    half: float
    digit_row: int = -1
    digit: int = -1

    @property
    def quadrant(self) -> int:
        return int(self.y >= 0.5) * 2 + int(self.x >= 0.5)


@dataclass(frozen=True)
class Picture:
    """One canvas: its objects, background, kind and caption."""

    kind: str
    objects: tuple[Obj, ...]
    background: tuple[float, float, float]
    caption: str


@dataclass(frozen=True)
class Media:
    """One media item: 1 picture (image) or F pictures (video frames), its text caption and its facts.

    ``facts`` holds what questions can ask: ``colour``, ``shape``, ``count``, ``digit``, ``where``,
    ``direction`` (only the keys that apply to the kind).
    """

    kind: str
    frames: tuple[Picture, ...]
    caption: str
    facts: dict


def article(colour: int) -> str:
    """``"an"`` before a vowel ("an orange circle"), else ``"a"``."""
    return "an" if COLOURS[colour][0] in "aeiou" else "a"


def quadrant_words(q: int) -> str:
    return QUADRANT_WORDS[q]


def grid_words(x: float, y: float) -> str:
    """Position in the 3x3 grid, "top left" ... "middle centre" ... "bottom right"."""
    return f"{VERTICAL[min(int(y * 3), 2)]} {HORIZONTAL[min(int(x * 3), 2)]}"


class SceneSampler:
    """Draws media items from a numpy ``Generator`` (deterministic given its seed)."""

    def __init__(self, rng: np.random.Generator, world: WorldConfig, digit_pool: str = "train") -> None:
        if digit_pool not in ("train", "eval"):
            raise ValueError(f"digit_pool must be 'train' or 'eval', got '{digit_pool}'")
        self.rng = rng
        self.world = world
        rows = np.arange(len(digit_bank()[1]))
        self.digit_rows = rows[rows % 5 != 0] if digit_pool == "train" else rows[rows % 5 == 0]

    # ---- primitives -------------------------------------------------------------------------------------------
    def _half(self, bounds: Sequence[float]) -> float:
        return float(self.rng.uniform(bounds[0], bounds[1]))

    def _background(self) -> tuple[float, float, float]:
        bg = self.rng.uniform(0.0, self.world.background_max, size=3)
        return (float(bg[0]), float(bg[1]), float(bg[2]))

    def _in_cell(self, lo: float, hi: float, half: float) -> float:
        a, b = lo + half + MARGIN, hi - half - MARGIN
        return float(self.rng.uniform(a, b)) if b > a else (lo + hi) / 2

    def _in_quadrant(self, q: int, half: float) -> tuple[float, float]:
        col, row = q % 2, q // 2
        return self._in_cell(col * 0.5, col * 0.5 + 0.5, half), self._in_cell(row * 0.5, row * 0.5 + 0.5, half)

    def _digit(self) -> tuple[int, int]:
        row = int(self.rng.choice(self.digit_rows))
        return row, int(digit_bank()[1][row])

    def _rgb(self, colour: int) -> tuple[float, float, float]:
        j = self.world.colour_jitter
        rgb = np.clip(PALETTE[colour] + self.rng.uniform(-j, j, size=3), 0.0, 1.0)
        return (float(rgb[0]), float(rgb[1]), float(rgb[2]))

    def _colour(self, exclude: int | None = None) -> int:
        if exclude is None:
            return int(self.rng.integers(len(COLOURS)))
        return int((exclude + self.rng.integers(1, len(COLOURS))) % len(COLOURS))

    # ---- scene kinds ------------------------------------------------------------------------------------------
    def object(self, colour: int | None = None, shape: int | None = None) -> Media:
        c = self._colour() if colour is None else colour
        s = int(self.rng.integers(len(SHAPES))) if shape is None else shape
        q, half = int(self.rng.integers(4)), self._half(self.world.object_half)
        x, y = self._in_quadrant(q, half)
        caption = f"{article(c)} {COLOURS[c]} {SHAPES[s]} at the {quadrant_words(q)}"
        pic = Picture("object", (Obj(s, c, self._rgb(c), x, y, half),), self._background(), caption)
        return Media("object", (pic,), caption, {"colour": c, "shape": s, "count": 1, "where": q})

    def count(self, colour: int | None = None, shape: int | None = None, count: int | None = None) -> Media:
        c = self._colour() if colour is None else colour
        s = int(self.rng.integers(len(SHAPES))) if shape is None else shape
        k = int(self.rng.integers(1, 5)) if count is None else count
        quads = self.rng.permutation(4)[:k]
        objs = []
        for q in sorted(int(q) for q in quads):
            half = self._half(self.world.count_half)
            objs.append(Obj(s, c, self._rgb(c), *self._in_quadrant(q, half), half))
        noun = SHAPES[s] if k == 1 else SHAPE_PLURALS[s]
        caption = f"{NUMBER_WORDS[k]} {COLOURS[c]} {noun}"
        pic = Picture("count", tuple(objs), self._background(), caption)
        return Media("count", (pic,), caption, {"colour": c, "shape": s, "count": k})

    def digit(self, colour: int | None = None) -> Media:
        c = self._colour() if colour is None else colour
        row, value = self._digit()
        q, half = int(self.rng.integers(4)), self._half(self.world.digit_half)
        x, y = self._in_quadrant(q, half)
        caption = f"{article(c)} {COLOURS[c]} digit {NUMBER_WORDS[value]} at the {quadrant_words(q)}"
        pic = Picture("digit", (Obj(DIGIT, c, self._rgb(c), x, y, half, row, value),), self._background(), caption)
        return Media("digit", (pic,), caption, {"colour": c, "digit": value, "count": 1, "where": q})

    def pair(self, distinct_shapes: bool = False) -> Media:
        """Two shapes that differ in (colour, shape), or in shape with ``distinct_shapes``, in distinct quadrants;
        facts describe the first one."""
        q1, q2 = (int(q) for q in self.rng.permutation(4)[:2])
        c1, s1 = self._colour(), int(self.rng.integers(len(SHAPES)))
        c2, s2 = self._colour(), int(self.rng.integers(len(SHAPES)))
        while (c2, s2) == (c1, s1) or (distinct_shapes and s2 == s1):
            c2, s2 = self._colour(), int(self.rng.integers(len(SHAPES)))
        objs = []
        for c, s, q in ((c1, s1, q1), (c2, s2, q2)):
            half = self._half(self.world.object_half)
            objs.append(Obj(s, c, self._rgb(c), *self._in_quadrant(q, half), half))
        caption = (
            f"{article(c1)} {COLOURS[c1]} {SHAPES[s1]} at the {quadrant_words(q1)} and "
            f"{article(c2)} {COLOURS[c2]} {SHAPES[s2]} at the {quadrant_words(q2)}"
        )
        pic = Picture("pair", tuple(objs), self._background(), caption)
        facts = {"colour": c1, "shape": s1, "where": q1, "others": [(c2, s2, q2)]}
        return Media("pair", (pic,), caption, facts)

    def frame(self) -> Media:
        """One shape in a random cell of the 3x3 grid (the still-image view of a video frame)."""
        c, s = self._colour(), int(self.rng.integers(len(SHAPES)))
        half = self._half(self.world.frame_half)
        gx, gy = (int(g) for g in self.rng.integers(3, size=2))
        x, y = self._in_cell(gx / 3, (gx + 1) / 3, half), self._in_cell(gy / 3, (gy + 1) / 3, half)
        caption = f"{article(c)} {COLOURS[c]} {SHAPES[s]} at the {grid_words(x, y)}"
        pic = Picture("frame", (Obj(s, c, self._rgb(c), x, y, half),), self._background(), caption)
        return Media("frame", (pic,), caption, {"colour": c, "shape": s, "count": 1})

    def video(self, frames: int, direction: int | None = None) -> Media:
        """A shape crossing the image in one of ``DIRECTIONS`` over ``frames`` frames (first and last in the
        outer thirds, so the direction follows from the first and last positions)."""
        if frames < 2:
            raise ValueError(f"A video needs at least 2 frames, got {frames}")
        d = int(self.rng.integers(len(DIRECTIONS))) if direction is None else direction
        c, s = self._colour(), int(self.rng.integers(len(SHAPES)))
        half = self._half(self.world.frame_half)
        band = int(self.rng.integers(3))
        fixed = self._in_cell(band / 3, (band + 1) / 3, half)
        start, end = float(self.rng.uniform(0.15, 0.25)), float(self.rng.uniform(0.75, 0.85))
        if DIRECTIONS[d] in ("left", "up"):
            start, end = 1.0 - start, 1.0 - end
        moving = np.linspace(start, end, frames)
        bg, rgb = self._background(), self._rgb(c)
        pics, where = [], []
        for m in moving:
            x, y = (float(m), fixed) if DIRECTIONS[d] in ("left", "right") else (fixed, float(m))
            where.append(grid_words(x, y))
            cap = f"{article(c)} {COLOURS[c]} {SHAPES[s]} at the {where[-1]}"
            pics.append(Picture("frame", (Obj(s, c, rgb, x, y, half),), bg, cap))
        caption = f"{article(c)} {COLOURS[c]} {SHAPES[s]} at " + " then ".join(where)
        return Media("video", tuple(pics), caption, {"colour": c, "shape": s, "direction": d})

    def still(self, kind: str) -> Media:
        """A media item of one of ``STILL_KINDS``."""
        if kind not in STILL_KINDS:
            raise ValueError(f"Unknown scene kind '{kind}'; choose from {STILL_KINDS}")
        return getattr(self, kind)()


def object_table(media: Sequence[Media]) -> tuple[ObjectTable, np.ndarray, np.ndarray]:
    """Flatten media into one rendering table.

    Returns ``(table, backgrounds (n_canvas, 3), frames_per_media (n_media,))``; canvases are in media order,
    frames in order within a video.
    """
    rows, backgrounds, frames_per_media = [], [], []
    for item in media:
        frames_per_media.append(len(item.frames))
        for pic in item.frames:
            canvas = len(backgrounds)
            backgrounds.append(pic.background)
            rows.extend((canvas, o) for o in pic.objects)
    n = len(rows)
    shape = np.fromiter((o.shape for _, o in rows), np.int64, n)
    table = ObjectTable(
        canvas=np.fromiter((c for c, _ in rows), np.int64, n),
        shape=shape,
        digit_row=np.fromiter((o.digit_row for _, o in rows), np.int64, n),
        rgb=np.array([o.rgb for _, o in rows], dtype=np.float32).reshape(n, 3),
        centre=np.array([(o.x, o.y) for _, o in rows], dtype=np.float32).reshape(n, 2),
        half=np.fromiter((o.half for _, o in rows), np.float32, n),
    )
    return table, np.asarray(backgrounds, dtype=np.float32).reshape(-1, 3), np.asarray(frames_per_media)
