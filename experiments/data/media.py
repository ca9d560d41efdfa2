"""Image and video loading shared by the real data sources: files or bytes in, float tensors in ``[0, 1]`` out.

* :func:`load_image` decodes a path or bytes with Pillow, applies the EXIF orientation (phone photographs are stored
  sideways with a rotation tag), and converts grayscale, palette and RGBA images to RGB (transparency composited
  onto the pad colour, so a transparent logo does not turn black).
* :func:`prepare_image` applies LLaVA's ``image_aspect`` choice, then an optional square resize:
  ``pad`` expands to a square with the encoder's mean colour (LLaVA's ``expand2square``), ``crop`` takes the centre
  square, ``resize`` keeps the picture as is for the encoder's own transform to squash (or squashes to
  ``image_size`` here). Result: ``(3, H, W)`` float, ``x / 255`` of the 8-bit pixels, exactly as the world stores
  its images.
* :func:`load_video` samples ``num_frames`` frames uniformly (``linspace`` over the decoded frames, LLaVA-NeXT's
  rule) from a video file (PyAV) or a folder of frame images: ``(F, 3, H, W)``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps

Aspect = Literal["pad", "resize", "crop"]
ASPECTS = ("pad", "resize", "crop")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # LLaVA pads with its CLIP processor's mean
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".gif")


class MediaError(ValueError):
    """A media file that is missing or cannot be decoded (the message names it)."""


@dataclass
class ImageOptions:
    """How every image of a source is prepared (on top of each encoder's own transform).

    Attributes:
        image_aspect: ``pad`` (square with ``pad_colour``), ``resize`` (squash) or ``crop`` (centre square).
        image_size: side of the square images leave the loader at (``None``: keep the size; the encoder's transform
            resizes). Setting it to the encoder's input size keeps worker-to-trainer traffic small.
        pad_colour: RGB in ``[0, 1]`` used by ``pad`` and behind transparency; ``None``: CLIP's mean, as LLaVA does.
            Set it to your encoder's normalisation mean.
        num_frames: frames sampled uniformly from each video.
    """

    image_aspect: str = "pad"
    image_size: int | None = None
    pad_colour: list[float] | None = None
    num_frames: int = 8

    def __post_init__(self) -> None:
        if self.image_aspect not in ASPECTS:
            raise ValueError(f"image_aspect '{self.image_aspect}' is not one of {', '.join(ASPECTS)}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be >= 1 or null, got {self.image_size}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")

    def colour(self) -> tuple[int, int, int]:
        mean = self.pad_colour if self.pad_colour is not None else CLIP_MEAN
        if len(mean) != 3:
            raise ValueError(f"pad_colour needs 3 values (RGB in [0, 1]), got {list(mean)}")
        return tuple(int(round(float(c) * 255)) for c in mean)  # type: ignore[return-value]


def load_image(
    source: str | os.PathLike[str] | bytes, background: tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """An RGB Pillow image from a path or encoded bytes, EXIF orientation applied."""
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            img = Image.open(io.BytesIO(bytes(source)))
        else:
            img = Image.open(source)
        img.load()
    except FileNotFoundError:
        raise MediaError(f"Image file not found: {source}. Check image_folder / video_folder and the path.") from None
    except Exception as err:  # Pillow raises many types for corrupt data
        name = source if not isinstance(source, (bytes, bytearray, memoryview)) else f"<{len(source)} bytes>"
        raise MediaError(f"Cannot decode image {name}: {type(err).__name__}: {err}") from None
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        img = Image.alpha_composite(canvas, rgba)
    return img.convert("RGB")


def prepare_image(img: Image.Image, options: ImageOptions) -> torch.Tensor:
    """``image_aspect`` then the optional resize: ``(3, H, W)`` float in ``[0, 1]``."""
    w, h = img.size
    if options.image_aspect == "pad" and w != h:
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), options.colour())
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    elif options.image_aspect == "crop" and w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if options.image_size is not None and img.size != (options.image_size, options.image_size):
        img = img.resize((options.image_size, options.image_size), Image.Resampling.BICUBIC)
    return to_tensor(img)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB -> ``(3, H, W)`` float ``x / 255``."""
    # numpy, not torch: the same correctly rounded float32 division as the world's ``uint8.float() / 255``, without
    # torch's intra-op threads (measured 30 ms per 128x128 image with 2 threads on a loaded 2-core machine)
    chw = np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(chw / np.float32(255.0))


def image_tensor(source: str | os.PathLike[str] | bytes, options: ImageOptions) -> torch.Tensor:
    """:func:`load_image` + :func:`prepare_image`."""
    return prepare_image(load_image(source, options.colour()), options)


def uniform_indices(total: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``[0, total)`` (first and last included)."""
    if total < 1:
        raise MediaError("The video has no frames")
    return [int(i) for i in np.linspace(0, total - 1, count).round().astype(int)]


def load_video(path: str | os.PathLike[str], options: ImageOptions) -> torch.Tensor:
    """``(F, 3, H, W)`` with ``F = options.num_frames``: a video file (PyAV) or a folder of frame images."""
    path = Path(path)
    if path.is_dir():
        frames = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not frames:
            raise MediaError(f"Frame folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        picked = [frames[i] for i in uniform_indices(len(frames), options.num_frames)]
        return torch.stack([image_tensor(p, options) for p in picked])
    if not path.exists():
        raise MediaError(f"Video file not found: {path}. Check video_folder and the path.")
    images = _decode_frames(path, options.num_frames)
    return torch.stack([prepare_image(img, options) for img in images])


def _decode_frames(path: Path, count: int) -> Sequence[Image.Image]:
    try:
        import av
    except ImportError as err:
        raise ImportError("Video files need PyAV: pip install -e '.[data]' (or pip install av)") from err
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            total = int(stream.frames or 0)
            wanted = uniform_indices(total, count) if total > 0 else []
            kept: dict[int, Image.Image] = {}
            decoded: list[Image.Image] = []
            for i, frame in enumerate(container.decode(stream)):
                if not wanted:  # frame count unknown: keep all, pick afterwards
                    decoded.append(frame.to_image())
                elif i in wanted:
                    kept[i] = frame.to_image()
                    if len(kept) == len(set(wanted)):
                        break
    except Exception as err:
        raise MediaError(f"Cannot decode video {path}: {type(err).__name__}: {err}") from None
    if wanted and len(kept) == len(set(wanted)):
        return [kept[i] for i in wanted]
    if wanted:  # the container over-stated its frame count: sample what was decoded
        decoded = [kept[i] for i in sorted(kept)]
    return [decoded[i] for i in uniform_indices(len(decoded), count)]
