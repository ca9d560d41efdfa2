"""The multi-image scaling study: how each bridge's first-token latency, per-token latency and memory grow with N.

Usage::

    python -m benchmarks.scaling [--ns 1 4 16 64 128 256 400] [--bridges mlp qformer ...] [--budget-gib 2]
                                 [--max-call-s 5] [--repeats 3] [--threads 1] [--device auto|cpu|cuda] [--quick]
                                 [--out runs/benchmarks/scaling]

For each N, one sample holds N images between a fixed text (:mod:`benchmarks.scaling_model`: the same small encoder
and LM for every bridge). Measured per bridge and N, the bridges timed interleaved (one measurement of each in turn):

* prefill (first-token) latency: ``MultimodalLM.generate(max_new_tokens=1)``, encoder included;
* per-decoded-token latency: the median time between consecutive steps of ``generate`` (KV cache), taken by a
  logits processor that records the clock at every step, over ``k`` decoded tokens and every repeat;
* encoder time (the same patches for every bridge, so timed once per N);
* peak memory of the prefill (:func:`benchmarks.measure.peak_memory_bytes`: CPU tensor memory, CUDA allocated);
* LM sequence length, KV-cache bytes after prefill, the inject bridges' visual memory bytes;
* prefill FLOPs (:func:`benchmarks.measure.count_flops`, the routine ``efficiency.json`` uses) while the math-backend
  attention of the sequence fits (``--flops-max-tokens``).

A curve stops, with the reason recorded, at the first N whose peak memory exceeds ``--budget-gib`` or whose prefill
exceeds ``--max-call-s`` (on a CPU the time limit keeps the run short), or before an N that the cost model
(:mod:`bridges.cost_model`) predicts over the memory budget. Writes ``scaling.json``, ``scaling.md`` and
``scaling.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from benchmarks.measure import Settings, count_flops, flop_method, forward, memory_method, peak_memory_bytes, time_calls
from benchmarks.run import _atomic_write, _load, machine
from benchmarks.scaling_model import Setup, build, images_batch, lm_sequence_length, tensor_bytes
from bridges.common.kv_cache import find_cache
from bridges.cost_model import predict_from_model

NS = (1, 4, 16, 64, 128, 256, 400)
QUICK_NS = (1, 4)
RATIOS = (("mlp", "hyper_attention"), ("qformer", "hyper_attention"), ("flamingo", "hyper_attention"))
DECODE_TOKENS = 4


def _generate(model: Any, batch: Any, tokens: int, **kwargs: Any) -> Any:
    return lambda: model.generate(batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, **kwargs)


class _Clock(LogitsProcessor):
    """Records the time at every generation step (HF calls logits processors once per new token)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.is_cuda:
            torch.cuda.synchronize(scores.device)
        self.times.append(time.perf_counter())
        return scores


def _per_token_ms(models: dict[str, Any], batches: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median time between consecutive generation steps (one decoded token with the KV cache), per bridge; the
    bridges take turns, the order reversed every round."""
    intervals: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    for _ in range(max(1, repeats)):
        for name in order:
            clock = _Clock()
            forward(_generate(models[name], batches[name], 1 + DECODE_TOKENS,
                              logits_processor=LogitsProcessorList([clock])))()
            intervals[name] += [b - a for a, b in zip(clock.times, clock.times[1:], strict=False)]
        order.reverse()
    return {name: 1e3 * statistics.median(v) for name, v in intervals.items()}


def _cache_bytes(model: Any, batch: Any) -> int:
    """Bytes of the HF KV cache after the prefill (captured from the LM's output)."""
    caches: list[Any] = []
    handle = model.lm.model.register_forward_hook(lambda _m, _i, out: caches.append(find_cache(out.values())))
    try:
        forward(_generate(model, batch, 1))()
    finally:
        handle.remove()
    return tensor_bytes(caches[0]) if caches and caches[0] is not None else 0


def _memory_bytes(model: Any, batch: Any) -> int | None:
    """An inject bridge's visual memory for the batch (held through decoding), ``None`` for a prefix bridge."""
    if model.bridge.kind != "inject":
        return None
    with torch.no_grad():
        return tensor_bytes(model.injection_context(batch).memory)


def _predicted_peak(model: Any, n: int) -> int | None:
    """The cost model's prefill peak for N images, ``None`` where it has no model of this bridge."""
    text = images_batch(model, 0, torch.device("cpu")).input_ids.shape[1] + n
    try:
        return int(predict_from_model(model, n, text).prefill_peak_bytes)
    except NotImplementedError:
        return None


def run_scaling(
    bridges: Sequence[str] | None = None,
    ns: Sequence[int] = NS,
    budget_gib: float = 2.0,
    max_call_s: float = 5.0,
    repeats: int = 3,
    warmup: int = 1,
    device: str = "auto",
    threads: int | None = None,
    bf16: bool | None = None,
    flops_max_tokens: int = 4096,
    setup: Setup | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Measure every bridge at every N (until its curve stops); returns ``{"meta", "points", "stopped", "ratios"}``."""
    setup = setup or Setup()
    names = list(bridges) if bridges else list(setup.bridges)
    unknown = [n for n in names if n not in setup.bridges]
    if unknown:
        raise ValueError(f"Unknown scaling bridges {unknown}. Known: {sorted(setup.bridges)}.")
    if not ns or any(int(n) < 1 for n in ns):
        raise ValueError(f"--ns must be positive image counts, got {list(ns)}.")
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(names, ns, budget_gib, max_call_s, repeats, warmup, device, bf16, flops_max_tokens, setup, verbose)
    finally:
        torch.set_num_threads(previous)


def _run(
    names: list[str], ns: Sequence[int], budget_gib: float, max_call_s: float, repeats: int, warmup: int, device: str,
    bf16: bool | None, flops_max_tokens: int, setup: Setup, verbose: bool,
) -> dict[str, Any]:
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    settings = Settings(dev, repeats=repeats, warmup=warmup, min_block_s=0.0, autocast=dev.type == "cuda"
                        if bf16 is None else bf16)
    budget = int(budget_gib * 2**30)
    models = {name: build(name, setup, dev) for name in names}
    meta = machine(settings) | {
        "ns": list(ns), "bridges": names, "budget_bytes": budget, "max_call_s": max_call_s, "repeats": repeats,
        "decode_tokens": DECODE_TOKENS, "memory_method": memory_method(dev), "flop_method": flop_method(),
        "setup": {"encoder": setup.encoder, "lm": setup.lm, "bridges": {n: setup.bridges[n] for n in names}},
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    points: list[dict[str, Any]] = []
    stopped: dict[str, str] = {}
    for n in sorted(int(v) for v in ns):
        live = {}
        for name in names:
            if name in stopped:
                continue
            predicted = _predicted_peak(models[name], n)
            if predicted is not None and predicted > budget:
                stopped[name] = f"N={n}: cost model predicts {predicted / 2**30:.2f} GiB > budget {budget_gib} GiB"
                continue
            live[name] = models[name]
        if not live:
            break
        batches = {name: images_batch(model, n, dev) for name, model in live.items()}
        first = next(iter(live))
        calls = {"encoder": forward(lambda m=live[first], b=batches[first]: m.encode_media(b))}
        for name, model in live.items():
            calls[f"{name}/prefill"] = forward(_generate(model, batches[name], 1))
        times = time_calls(calls, settings)
        per_token = _per_token_ms(live, batches, settings.repeats)
        for name, model in live.items():
            batch = batches[name]
            prefill = times[f"{name}/prefill"]["median_ms"]
            seq = lm_sequence_length(model, batch)
            point = {
                "bridge": name, "n": n, "lm_sequence_length": seq, "prefill_ms": prefill,
                "prefill_iqr_ms": times[f"{name}/prefill"]["iqr_ms"],
                "per_token_ms": per_token[name],
                "encoder_ms": times["encoder"]["median_ms"],
                "peak_prefill_bytes": peak_memory_bytes(forward(_generate(model, batch, 1)), settings),
                "kv_cache_bytes": _cache_bytes(model, batch), "visual_memory_bytes": _memory_bytes(model, batch),
                "prefill_flops": count_flops(_generate(model, batch, 1)) if seq <= flops_max_tokens else None,
                "predicted_peak_bytes": _predicted_peak(model, n),
            }
            points.append(point)
            if verbose:
                print(f"  {name} N={n}: prefill {prefill:.1f} ms, seq {seq}", file=sys.stderr, flush=True)
            peak = point["peak_prefill_bytes"] or 0
            if peak > budget:
                stopped[name] = f"N={n}: peak {peak / 2**30:.2f} GiB > budget {budget_gib} GiB"
            elif prefill / 1e3 > max_call_s:
                stopped[name] = f"N={n}: prefill {prefill / 1e3:.1f} s > --max-call-s {max_call_s}"
    meta["load_average_end"] = machine(settings)["load_average_start"]
    return {"meta": meta, "points": points, "stopped": stopped, "ratios": ratios(points)}


def ratios(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``a / hyper_attention`` for prefill, per-token latency and peak memory at every N both were measured at."""
    by = {(p["bridge"], p["n"]): p for p in points}
    out = []
    for a, b in RATIOS:
        for n in sorted({p["n"] for p in points}):
            pa, pb = by.get((a, n)), by.get((b, n))
            if pa is None or pb is None:
                continue
            row: dict[str, Any] = {"pair": f"{a}/{b}", "n": n}
            for key in ("prefill_ms", "per_token_ms", "peak_prefill_bytes", "lm_sequence_length", "kv_cache_bytes"):
                row[key] = (pa[key] / pb[key]) if pa.get(key) and pb.get(key) else None
            out.append(row)
    return out


# ---- report ----------------------------------------------------------------------------------------------------------


def _num(value: Any, fmt: str = ".3g", scale: float = 1.0) -> str:
    return "-" if value is None else format(value / scale, fmt)


def to_markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        "# Multi-image scaling",
        "",
        (
            f"{meta['device_name']} ({meta['device']}), {meta['threads']} threads, torch {meta['torch']}, autocast "
            f"{meta['autocast'] or 'off'}, median of {meta['repeats']}; {meta['date']}; load average "
            f"{_load(meta['load_average_start'])} at start, {_load(meta['load_average_end'])} at end. Memory: "
            f"{meta['memory_method']}; budget {meta['budget_bytes'] / 2**30:.3g} GiB, prefill limit "
            f"{meta['max_call_s']} s."
        ),
        "",
        (
            "| bridge | N | LM seq | encoder ms | prefill ms | per token ms | peak MiB | predicted MiB | KV MiB "
            "| visual memory MiB | prefill GFLOP |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in result["points"]:
        lines.append(
            f"| {p['bridge']} | {p['n']} | {p['lm_sequence_length']} | {_num(p['encoder_ms'])} | "
            f"{_num(p['prefill_ms'])} | {_num(p['per_token_ms'])} | {_num(p['peak_prefill_bytes'], scale=2**20)} | "
            f"{_num(p['predicted_peak_bytes'], scale=2**20)} | {_num(p['kv_cache_bytes'], scale=2**20)} | "
            f"{_num(p['visual_memory_bytes'], scale=2**20)} | {_num(p['prefill_flops'], scale=1e9)} |"
        )
    lines += ["", "Stopped curves: " + ("; ".join(f"{k} at {v}" for k, v in result["stopped"].items()) or "none"), ""]
    lines += ["| ratio | N | prefill | per token | peak memory | LM seq | KV cache |"]
    lines += ["|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["ratios"]:
        cells = " | ".join(_num(r[k], ".2f") for k in ("prefill_ms", "per_token_ms", "peak_prefill_bytes",
                                                         "lm_sequence_length", "kv_cache_bytes"))
        lines.append(f"| {r['pair']} | {r['n']} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Log-log prefill latency, per-token latency and peak memory against N, one line per bridge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("prefill_ms", "prefill (first token) ms"), ("per_token_ms", "per decoded token ms"),
              ("peak_prefill_bytes", "peak prefill memory MiB"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for name in result["meta"]["bridges"]:
            pts = [(p["n"], p[key]) for p in result["points"] if p["bridge"] == name and p.get(key)]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ys = [y / 2**20 for y in ys] if key.endswith("bytes") else ys
                ax.plot(xs, ys, marker="o", label=name)
        if key == "prefill_ms":
            enc = sorted({(p["n"], p["encoder_ms"]) for p in result["points"]})
            if enc:
                ax.plot(*zip(*enc, strict=True), "k--", label="encoder alone")
        ax.set(xscale="log", yscale="log", xlabel="images per sample N", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    paths = {"json": out / "scaling.json", "md": out / "scaling.md", "png": out / "scaling.png"}
    _atomic_write(paths["json"], json.dumps(result, indent=2, default=str) + "\n")
    _atomic_write(paths["md"], to_markdown(result))
    plot(result, paths["png"])
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ns", type=int, nargs="+", help=f"images per sample (default {list(NS)})")
    parser.add_argument("--bridges", nargs="+", help="bridges (default: all of the study)")
    parser.add_argument("--budget-gib", type=float, default=2.0, help="memory budget per prefill (default 2 GiB)")
    parser.add_argument("--max-call-s", type=float, default=5.0, help="stop a curve past this prefill time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="bf16 autocast (default: CUDA only)")
    parser.add_argument("--flops-max-tokens", type=int, default=4096, help="count prefill FLOPs up to this LM length")
    parser.add_argument("--quick", action="store_true", help=f"N={list(QUICK_NS)}, one repeat (a smoke run)")
    parser.add_argument("--out", default="runs/benchmarks/scaling")
    args = parser.parse_args(argv)
    ns = args.ns or (QUICK_NS if args.quick else NS)
    result = run_scaling(
        args.bridges, ns, args.budget_gib, args.max_call_s, 1 if args.quick else args.repeats, 0 if args.quick else 1,
        args.device, args.threads, args.bf16, args.flops_max_tokens, verbose=True,
    )
    paths = write_outputs(result, args.out)
    print(to_markdown(result))
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
