"""Image and video loading on real photographs (scikit-learn's china.jpg and flower.jpg): aspect handling, modes,
EXIF orientation, videos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from experiments.data.media import ImageOptions, MediaError, image_tensor, load_image, load_video, uniform_indices


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    data = load_sample_images()
    return {Path(name).stem: image for name, image in zip(data.filenames, data.images)}  # (427, 640, 3) uint8


def jpeg(array: np.ndarray, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95, **save)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_pad_keeps_the_whole_landscape_photo_centred_on_the_mean_colour(photos) -> None:
    china = photos["china"]
    h, w = china.shape[:2]
    assert (h, w) == (427, 640)
    out = image_tensor(png(Image.fromarray(china)), ImageOptions(image_aspect="pad", pad_colour=[0.0, 0.5, 1.0]))
    assert out.shape == (3, 640, 640) and out.dtype == torch.float32
    top = (640 - 427) // 2
    band = out[:, :top].reshape(3, -1)
    assert torch.equal(band, torch.tensor([0, 128, 255]).float().div(255)[:, None].expand_as(band))
    assert torch.equal(out[:, top : top + 427], torch.from_numpy(china.copy()).permute(2, 0, 1).float().div(255))
    assert torch.equal(out[:, top + 427 :].reshape(3, -1)[:, 0], band[:, 0])


def test_pad_colour_defaults_to_clip_mean_like_llava(photos) -> None:
    out = image_tensor(png(Image.fromarray(photos["flower"])), ImageOptions(image_aspect="pad"))
    assert out[:, 0, 0].mul(255).round().tolist() == [123.0, 117.0, 104.0]  # int(x * 255) of CLIP's mean, rounded


def test_crop_takes_the_centre_square_and_resize_squashes(photos) -> None:
    flower = photos["flower"]
    data = png(Image.fromarray(flower))
    crop = image_tensor(data, ImageOptions(image_aspect="crop"))
    left = (640 - 427) // 2
    assert crop.shape == (3, 427, 427)
    assert torch.equal(crop, torch.from_numpy(flower[:, left : left + 427].copy()).permute(2, 0, 1).float().div(255))
    kept = image_tensor(data, ImageOptions(image_aspect="resize"))
    assert kept.shape == (3, 427, 640)  # left for the encoder's own transform to squash
    squashed = image_tensor(data, ImageOptions(image_aspect="resize", image_size=64))
    assert squashed.shape == (3, 64, 64)
    # squashing keeps the whole picture: the mean colour stays close; cropping loses the sides
    full_mean = torch.from_numpy(flower.copy()).float().mean((0, 1)) / 255
    assert torch.allclose(squashed.mean((1, 2)), full_mean, atol=0.02)
    assert image_tensor(data, ImageOptions(image_aspect="crop", image_size=32)).shape == (3, 32, 32)


def test_portrait_pads_left_and_right(photos) -> None:
    portrait = np.ascontiguousarray(photos["china"].transpose(1, 0, 2))  # 640 x 427, taller than wide
    out = image_tensor(png(Image.fromarray(portrait)), ImageOptions(image_aspect="pad", pad_colour=[0, 0, 0]))
    assert out.shape == (3, 640, 640)
    left = (640 - 427) // 2
    assert out[:, :, :left].abs().sum() == 0 and out[:, :, left + 427 :].abs().sum() == 0
    assert out[:, :, left : left + 427].abs().sum() > 0


def test_grayscale_and_rgba_become_rgb(photos) -> None:
    grey = Image.fromarray(photos["flower"]).convert("L")
    out = image_tensor(png(grey), ImageOptions(image_aspect="resize"))
    assert out.shape == (3, 427, 640) and torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    rgba = Image.fromarray(photos["china"]).convert("RGBA")
    alpha = np.full((427, 640), 255, np.uint8)
    alpha[:, :100] = 0  # a transparent strip shows the background colour, not the hidden pixels
    rgba.putalpha(Image.fromarray(alpha))
    out = image_tensor(png(rgba), ImageOptions(image_aspect="resize", pad_colour=[1.0, 1.0, 1.0]))
    assert out.shape == (3, 427, 640)
    assert bool((out[:, :, :100] == 1.0).all())
    visible = torch.from_numpy(photos["china"][:, 100:].copy()).permute(2, 0, 1).float().div(255)
    assert torch.equal(out[:, :, 100:], visible)


def test_exif_rotated_jpeg_is_turned_upright(photos) -> None:
    china = photos["china"]
    sideways = np.ascontiguousarray(np.rot90(china, k=1))  # stored rotated 90 degrees counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: "rotate 90 CW to display"
    data = jpeg(sideways, exif=exif.tobytes())
    raw = Image.open(io.BytesIO(data))
    assert raw.size == (427, 640)  # as stored: portrait
    upright = load_image(data)
    assert upright.size == (640, 427)  # as displayed: the original landscape
    diff = np.abs(np.asarray(upright, np.int16) - china.astype(np.int16)).mean()
    assert diff < 4.0  # JPEG noise only; a wrong rotation direction would not even have the right shape after rot
    wrong = np.abs(np.asarray(upright, np.int16)[::-1, ::-1] - china.astype(np.int16)).mean()
    assert wrong > 20


def test_missing_and_corrupt_images_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"not found: .*nothere\.jpg"):
        load_image(tmp_path / "nothere.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(MediaError, match=r"Cannot decode image .*bad\.jpg"):
        load_image(bad)


def test_bad_options_fail_clearly() -> None:
    with pytest.raises(ValueError, match="image_aspect 'square' is not one of pad, resize, crop"):
        ImageOptions(image_aspect="square")
    with pytest.raises(ValueError, match="num_frames"):
        ImageOptions(num_frames=0)


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def brightness_clip(n: int, size: int = 32) -> list[np.ndarray]:
    """Frame k is a flat grey of level 20 + 20 k: the sampled frames can be read back from their brightness."""
    return [np.full((size, size, 3), 20 + 20 * k, np.uint8) for k in range(n)]


def test_video_file_frames_are_sampled_uniformly(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    _write_video(path, brightness_clip(10))
    clip = load_video(path, ImageOptions(num_frames=4, image_aspect="resize"))
    assert clip.shape == (4, 3, 32, 32)
    levels = clip.mean((1, 2, 3)).mul(255).tolist()
    expected = [20 + 20 * k for k in uniform_indices(10, 4)]  # frames 0, 3, 6, 9
    assert uniform_indices(10, 4) == [0, 3, 6, 9]
    assert np.allclose(levels, expected, atol=4), (levels, expected)


def test_frame_folder_is_a_video(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, frame in enumerate(brightness_clip(6, size=16)):
        Image.fromarray(frame).save(folder / f"{k:04d}.png")
    clip = load_video(folder, ImageOptions(num_frames=3))
    assert clip.shape == (3, 3, 16, 16)
    assert clip.mean((1, 2, 3)).mul(255).round().tolist() == [20.0, 60.0, 120.0]  # frames 0, 2 (2.5 rounds to even), 5
    with pytest.raises(MediaError, match="not found"):
        load_video(tmp_path / "missing.mp4", ImageOptions())
