"""Data-loader scale benchmark: index a 1,000,000-entry LLaVA JSONL and stream samples through DataLoader workers.

Usage::

    python -m benchmarks.data [--entries 1000000] [--samples 20000] [--workers 2] [--image-size 128]
                              [--batch-size 32] [--repeats 2] [--out runs/benchmarks/data] [--keep]

Measures, on a generated file (short texts; every record names one of ``--images`` JPEGs, so the images stay in the
page cache and decoding, not the disk, is what the loader competes with):

* index build time of ``data=llava`` (:class:`experiments.data.index.RecordIndex` over the file);
* resident memory of the index against ``json.load``'s objects for the same records (each measured as the RSS growth
  of a fresh Python process, after a garbage collection);
* samples/s of the training stream (``TrainStream`` over the lazy source, ``--workers`` DataLoader workers, a tiny
  encoder transform: resize to 32x32 and normalise, stacked per micro-batch) against the decode-only rate: the same
  image files in the same order, decoded and transformed by the same number of workers, with no index, no JSON and
  no sample logic. Their ratio is how close the loader gets to the decoder's own speed. The two are timed
  alternately ``--repeats`` times and the best of each is kept (the machine may be shared).

Writes ``<out>/data.json``; prints a Markdown table. Targets (issue 9): index memory <= 1/5 of ``json.load``'s,
loader throughput >= 80% of decode-only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

TRANSFORM_SIZE = (32, 32)


def generate(folder: Path, entries: int, images: int, image_size: int) -> Path:
    """A LLaVA JSONL of ``entries`` records over ``images`` JPEGs (returns the JSONL path)."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(images):
        pixels = rng.integers(0, 256, (image_size // 8, image_size // 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((image_size, image_size), Image.Resampling.BICUBIC).save(
            folder / "img" / f"{k}.jpg", quality=90)
    path = folder / "data.jsonl"
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    with open(path, "w") as f:
        for i in range(entries):
            f.write(json.dumps({
                "id": f"{i:07d}", "image": f"img/{i % images}.jpg",
                "conversations": [{"from": "human", "value": "<image>\nWhat colour is the square?"},
                                  {"from": "gpt", "value": colours[i % len(colours)]}],
            }) + "\n")
    return path


def rss() -> int:
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss


def measure_memory(kind: str, path: str) -> dict[str, float]:
    """In this (fresh) process: RSS growth and time of building ``kind`` ('index' or 'json') over ``path``."""
    if kind == "index":
        from experiments.data.index import RecordIndex  # import first: module memory is not index memory

        before = rss()
        start = time.perf_counter()
        held: Any = RecordIndex(path)
        seconds = time.perf_counter() - start
        extra = {"array_bytes": held.nbytes()}
    else:
        before = rss()
        start = time.perf_counter()
        with open(path) as f:  # the objects json.load builds for a JSON list of the same records
            held = [json.loads(line) for line in f]
        seconds = time.perf_counter() - start
        extra = {}
    grown = rss() - before
    return {"rss_bytes": grown, "seconds": seconds, "entries": len(held), **extra}


def _in_subprocess(kind: str, path: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.data", "--measure", kind, str(path)], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


class TinyEncoderCollate:
    """The tiny encoder's transform over a micro-batch of samples: ``(B, 3, 32, 32)`` normalised pixels."""

    def __init__(self) -> None:
        from encoders.transforms import ImageTransform

        self.transform = ImageTransform(TRANSFORM_SIZE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def __call__(self, samples: Sequence[dict[str, Any]]) -> torch.Tensor:
        return torch.stack([self.transform(s["images"][0]) for s in samples])


class DecodeOnly(Dataset):
    """The image files of the streamed samples, in the same order, decoded and transformed in micro-batches."""

    def __init__(self, paths: list[str], batch_size: int) -> None:
        self.paths, self.batch_size = paths, batch_size
        self.collate = TinyEncoderCollate()

    def __len__(self) -> int:
        return len(self.paths) // self.batch_size

    def __getitem__(self, b: int) -> torch.Tensor:
        from experiments.data.media import ImageOptions, image_tensor

        options = ImageOptions()
        chunk = self.paths[b * self.batch_size : (b + 1) * self.batch_size]
        return self.collate([{"images": [image_tensor(p, options)]} for p in chunk])


def timed(loader: DataLoader, batches: int) -> float:
    """Seconds for ``batches`` batches after the first (worker start-up excluded)."""
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return time.perf_counter() - start


def throughput(path: Path, folder: Path, samples: int, workers: int, batch_size: int, repeats: int) -> dict[str, Any]:
    from experiments.harness.data import DATA_SOURCES
    from experiments.harness.datamodule import TaskStream, TrainStream

    entry, config = DATA_SOURCES.make_config({"name": "experiments.data.llava:llava", "path": str(path),
                                              "image_folder": str(folder)})
    data = entry.cls(config, None).build(0)
    stream = TrainStream(data.train, batch_size, TinyEncoderCollate(), seed=0)
    batches = samples // batch_size
    # the images the stream drew, in its order: micro-batches 1..batches (batch 0 is the warm-up)
    order = TaskStream(len(data.train["llava"]), stream.seed * 1000).take(batch_size, batches * batch_size)
    paths = [str(folder / f"img/{int(i) % config_images(folder)}.jpg") for i in order]
    decode = DecodeOnly([paths[0]] * batch_size + paths, batch_size)
    loader_runs, decode_runs = [], []
    for _ in range(repeats):  # alternated, so a change in the machine's load hits both sides
        loader_runs.append(timed(DataLoader(stream, batch_size=None, num_workers=workers), batches))
        decode_runs.append(timed(DataLoader(decode, batch_size=None, num_workers=workers), batches))
    n = batches * batch_size
    loader_s, decode_s = min(loader_runs), min(decode_runs)
    return {"samples": n, "loader_samples_per_s": n / loader_s, "decode_only_samples_per_s": n / decode_s,
            "ratio": decode_s / loader_s, "loader_runs_s": loader_runs, "decode_runs_s": decode_runs}


def config_images(folder: Path) -> int:
    return len(list((folder / "img").glob("*.jpg")))


def run(entries: int, samples: int, workers: int, image_size: int, batch_size: int, images: int, out: Path,
        keep: bool, repeats: int = 2) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    folder = out / "synthetic"
    start = time.perf_counter()
    path = generate(folder, entries, images, image_size)
    generated_s = time.perf_counter() - start
    file_bytes = os.path.getsize(path)
    try:
        index = _in_subprocess("index", path)
        plain = _in_subprocess("json", path)
        speed = throughput(path, folder, samples, workers, batch_size, repeats)
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "settings": {"entries": entries, "samples": samples, "workers": workers, "image_size": image_size,
                     "batch_size": batch_size, "images": images, "repeats": repeats, "file_bytes": file_bytes},
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "generate_s": generated_s,
        "index": index,
        "json_load": plain,
        "index_memory_fraction": index["rss_bytes"] / plain["rss_bytes"],
        **speed,
    }
    (out / "data.json").write_text(json.dumps(result, indent=2))
    return result


def to_markdown(r: dict[str, Any]) -> str:
    mib = 1 << 20
    rows = [
        ("index build time (s)", f"{r['index']['seconds']:.2f}", f"json.load: {r['json_load']['seconds']:.2f}"),
        ("index resident memory (MiB)", f"{r['index']['rss_bytes'] / mib:.1f}",
         f"json.load: {r['json_load']['rss_bytes'] / mib:.1f} "
         f"(fraction {r['index_memory_fraction']:.3f}; target <= 0.2)"),
        ("loader samples/s", f"{r['loader_samples_per_s']:.0f}",
         f"decode-only: {r['decode_only_samples_per_s']:.0f} (ratio {r['ratio']:.2f}; target >= 0.8)"),
    ]
    head = "| measure | value | beside it |\n|---|---|---|\n"
    return head + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data", description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=512, help="distinct JPEGs the records name")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/data"))
    parser.add_argument("--repeats", type=int, default=2, help="alternating timings of each side (best kept)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure_memory(*args.measure)))
        return 0
    torch.set_num_threads(1)
    result = run(args.entries, args.samples, args.workers, args.image_size, args.batch_size, args.images, args.out,
                 args.keep, args.repeats)
    print(to_markdown(result))
    print(f"load average {result['machine']['load_average']} on {result['machine']['cpus']} CPUs; "
          f"details in {args.out / 'data.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
