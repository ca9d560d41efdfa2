"""Training throughput of every bridge in the demo's setting, and where a step's time goes (encoder, bridge, LM).

Usage::

    python -m benchmarks.throughput [--threads 1] [--rounds 3] [--block-steps 5] [--bridges mlp qformer ...]
                                    [--out benchmarks/results] [OVERRIDE ...]   (added to the defaults)

Each bridge is built as the demo builds it (``experiment=quick_ablation bridge=<name>``: its ``by_bridge`` sizes,
the world ViT and LM, the ``align`` stage, batch 64) and trained by the plain loop of ``benchmarks.overhead`` (the
same step as the harness: ``python -m benchmarks.overhead`` gives the harness's ratio on top) on in-memory
micro-batches from the run's own training stream. Two settings per bridge: ``cached`` (the demo's
``train.cache_features=true``: frozen encoder features come from the feature cache, filled during the warm-up, so
the encoder hardly runs) and ``uncached`` (the encoder runs every step). Samples/s: median over ``rounds``
interleaved rounds (every bridge and setting one block of ``block_steps`` steps per round, the order reversed every
other round). The split comes from a separate, instrumented block (``benchmarks.clock.ComponentClock``): exclusive
time in encoder, bridge and LM, forward and backward, and ``other`` (splicing, clipping, the optimiser step).
Default bridges: the demo's sweep list in ``quick_ablation.yaml``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from benchmarks.clock import COMPONENTS, ComponentClock
from benchmarks.overhead import (
    DEFAULT_OVERRIDES,
    PlainLoop,
    Prepared,
    machine_info,
    prepare,
    publish,
    require_positive,
    with_defaults,
)
from experiments.harness import feature_cache
from experiments.harness.config import compose

SETTINGS = ("cached", "uncached")


def demo_bridges() -> list[str]:
    """The bridges the demo sweeps, in its order (``hydra.sweeper.params.bridge`` of ``experiment=quick_ablation``)."""
    cfg = compose(["experiment=quick_ablation"], with_hydra=True)
    return [b.strip() for b in str(cfg.hydra.sweeper.params.bridge).split(",")]


class Bench:
    """One bridge's plain loop over its batches, with or without the feature cache."""

    def __init__(self, prep: Prepared) -> None:
        self.prep = prep
        self.loop = PlainLoop(prep, prep.model, prep.plan)
        self.samples = prep.bplan.micro
        self._next = 0

    def _cache(self, setting: str) -> Any:
        if setting == "cached":
            return feature_cache.cached_encoders(self.prep.model, self.prep.cache_identity)
        return nullcontext(False)

    def _batch(self) -> Any:
        batch = self.prep.batches[self._next % len(self.prep.batches)]
        self._next += 1
        return batch

    def block(self, setting: str, steps: int) -> float:
        """Seconds per step over ``steps`` steps."""
        with self._cache(setting) as active:
            if setting == "cached" and not active:
                raise RuntimeError(f"{self.prep.run.bridge}: the feature cache does not apply to this model")
            t0 = time.perf_counter()
            for _ in range(steps):
                self.loop.step(self._batch())
            return (time.perf_counter() - t0) / steps

    def split(self, setting: str, steps: int) -> dict[str, Any]:
        """Instrumented steps: seconds per step per component and phase, and the wall time they add up to."""
        loop = self.loop
        with self._cache(setting), ComponentClock(self.prep.model) as clock:
            t0 = time.perf_counter()
            for _ in range(steps):
                batch = self._batch()
                clock.start()
                loop.optimizer.zero_grad(set_to_none=True)
                loss = loop.model(batch).loss
                clock.set_phase("backward")
                loss.backward()
                clock.set_phase("optimizer")
                if loop.grad_clip:
                    torch.nn.utils.clip_grad_norm_(loop.params, loop.grad_clip)
                loop.optimizer.step()
                loop.scheduler.step()
                clock.stop()
            wall = time.perf_counter() - t0
        seconds = clock.seconds()
        total = sum(seconds.values())
        return {
            "share": {k: v / total for k, v in seconds.items()},
            "component_ms_per_step": {k: 1e3 * v / steps for k, v in seconds.items()},
            "ms_per_step_by_phase": {k: {p: 1e3 * v / steps for p, v in ph.items()}
                                     for k, ph in clock.by_phase().items()},
            "instrumented_ms_per_step": 1e3 * wall / steps,
            "clock_over_wall": total / wall,
        }


def run_throughput(bridges: Sequence[str] | None = None, overrides: Sequence[str] = DEFAULT_OVERRIDES,
                   rounds: int = 3, block_steps: int = 5, warmup: int = 3, split_steps: int = 5,
                   num_batches: int = 8, threads: int | None = 1) -> dict[str, Any]:
    """Samples/s per bridge and setting (interleaved rounds), the time split, and ratios to ``mlp``."""
    if threads:
        torch.set_num_threads(threads)
    load_start = os.getloadavg()
    bridges = list(bridges or demo_bridges())
    base = [o for o in overrides if not o.startswith("bridge=")]
    benches = {b: Bench(prepare([*base, f"bridge={b}"], num_batches)) for b in bridges}
    for bench in benches.values():  # fills the feature cache with every batch's features
        bench.block("cached", max(warmup, num_batches))
        bench.block("uncached", warmup)
    times: dict[str, dict[str, list[float]]] = {b: {s: [] for s in SETTINGS} for b in bridges}
    for r in range(rounds):
        order = bridges if r % 2 == 0 else bridges[::-1]
        for b in order:
            for s in SETTINGS if r % 2 == 0 else SETTINGS[::-1]:
                times[b][s].append(benches[b].block(s, block_steps))
    rows = []
    for b in bridges:
        bench = benches[b]
        row: dict[str, Any] = {"bridge": b, "micro_batch": bench.samples}
        for s in SETTINGS:
            per_step = statistics.median(times[b][s])
            row[s] = {"samples_per_s": bench.samples / per_step, "ms_per_step": 1e3 * per_step,
                      "blocks_ms": [1e3 * t for t in times[b][s]], **bench.split(s, split_steps)}
        rows.append(row)
    reference = next((r for r in rows if r["bridge"] == "mlp"), None)
    for row in rows:
        for s in SETTINGS:
            row[s]["samples_per_s_vs_mlp"] = (row[s]["samples_per_s"] / reference[s]["samples_per_s"]
                                              if reference else None)
    return {
        "what": "training samples/s per bridge (plain loop = the harness's step) and the encoder/bridge/LM split",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "overrides": [*base, "bridge=<each>"],
        "schedule": {"rounds": rounds, "block_steps": block_steps, "warmup": warmup, "split_steps": split_steps,
                     "batches": num_batches},
        "rows": rows,
        "machine": machine_info(load_start),
    }


def to_markdown(result: dict[str, Any], command: str) -> str:
    m, s = result["machine"], result["schedule"]
    lines = [
        f"# Training throughput per bridge ({result['date']})", "",
        f"Command: `{command}`", "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['threads']} torch thread(s), load average "
        f"{m['load_average_start'][0]:.2f} at the start, {m['load_average_end'][0]:.2f} at the end.", "",
        f"Setting: {' '.join(result['overrides'])} (the demo's by_bridge sizes), plain training step; "
        f"{s['rounds']} interleaved rounds of {s['block_steps']} steps per bridge and setting (median), split from "
        f"{s['split_steps']} instrumented steps.", "",
        "| bridge | setting | samples/s | vs mlp | ms/step | encoder | bridge | LM | other | LM fwd / bwd ms | "
        "bridge fwd / bwd ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        for setting in SETTINGS:
            r = row[setting]
            share = r["share"]
            ph = r["ms_per_step_by_phase"]
            vs = f"{r['samples_per_s_vs_mlp']:.2f}" if r["samples_per_s_vs_mlp"] is not None else "-"
            lines.append(
                f"| {row['bridge']} | {setting} | {r['samples_per_s']:.0f} | {vs} | {r['ms_per_step']:.1f} | "
                + " | ".join(f"{100 * share[c]:.0f}%" for c in COMPONENTS)
                + f" | {ph['lm'].get('forward', 0):.1f} / {ph['lm'].get('backward', 0):.1f} | "
                f"{ph['bridge'].get('forward', 0):.1f} / {ph['bridge'].get('backward', 0):.1f} |"
            )
    slow = ", ".join(f"{row['bridge']} {row['cached']['instrumented_ms_per_step'] / row['cached']['ms_per_step']:.2f}"
                     for row in result["rows"])
    lines += ["", f"Shares are of the instrumented step (instrumented / timed ms per step, cached: {slow}). "
              "`other`: splicing, clipping, AdamW, zero_grad.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help=f"config overrides after {' '.join(DEFAULT_OVERRIDES)}")
    parser.add_argument("--bridges", nargs="+", default=None, help="default: the demo's sweep list")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block-steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--split-steps", type=int, default=5)
    parser.add_argument("--batches", type=int, default=8, help="distinct micro-batches held in memory")
    parser.add_argument("--out", default="benchmarks/results", help="folder for throughput.json / throughput.md")
    args = parser.parse_args(argv)
    require_positive(parser, args, ("rounds", "block_steps", "split_steps", "batches"))
    result = run_throughput(args.bridges, with_defaults(args.overrides), args.rounds, args.block_steps,
                            max(0, args.warmup), args.split_steps, args.batches, args.threads or None)
    publish(result, "benchmarks.throughput", argv, to_markdown, Path(args.out), "throughput")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
