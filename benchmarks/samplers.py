"""MMFuser's block on each CPU deformable sampler beside transformers' reference, interleaved in one process.

Usage::

    python -m benchmarks.samplers [--size small|medium] [--rounds 15] [--threads 1] [--out benchmarks/results]

The block is ``benchmarks.run``'s ``mmfuser`` case (same weights and inputs on both sides: the fuser with 4 levels
and the self step, then the projector). Each round times one fwd+bwd of the reference and of ours with every
sampler ``ms_deform_attn_core`` can pick on CPU (``numba``, ``gather``), the order rotating from round to round so
that all sides see the same drift of the machine; gradients are reset before every call. Reported: the median
fwd+bwd per side and the reference's median over each side's (the speed-up of section 5 of issue 11).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from benchmarks.bridges import mmfuser_case
from benchmarks.overhead import publish, require_positive
from bridges.common import deformable

SAMPLERS = tuple(deformable._CPU_SAMPLERS)


@contextmanager
def only_sampler(name: str) -> Iterator[None]:
    """Let ``ms_deform_attn_core``'s ``auto`` choose ``name`` alone among the CPU samplers."""
    saved = dict(deformable._CPU_SAMPLERS)
    deformable._CPU_SAMPLERS.clear()
    deformable._CPU_SAMPLERS[name] = saved[name]
    try:
        yield
    finally:
        deformable._CPU_SAMPLERS.clear()
        deformable._CPU_SAMPLERS.update(saved)


def measure(size: str, rounds: int) -> dict[str, Any]:
    case = mmfuser_case(size, torch.device("cpu"))
    assert case.reference is not None and case.run_reference is not None

    def step(run: Callable[[], torch.Tensor], sampler: str | None) -> Callable[[], float]:
        def timed() -> float:
            case.ours.zero_grad(set_to_none=True)
            case.reference.zero_grad(set_to_none=True)
            with only_sampler(sampler) if sampler else nullcontext():
                start = time.perf_counter()
                run().float().sum().backward()
                return time.perf_counter() - start

        return timed

    sides = {"reference": step(case.run_reference, None)}
    sides.update({sampler: step(case.run_ours, sampler) for sampler in SAMPLERS})
    names = list(sides)
    for timed in sides.values():  # warm-up (numba compiles on its first call)
        timed(), timed()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(sides[name]())
    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    return {
        "size": size,
        "what": case.what,
        "rounds": rounds,
        "fwdbwd_median_ms": medians,
        "speedup_vs_reference": {s: medians["reference"] / medians[s] for s in SAMPLERS},
        "fwdbwd_ms": {name: [t * 1e3 for t in ts] for name, ts in times.items()},
    }


def render(result: dict[str, Any], command: str) -> str:
    lines = [
        f"# Deformable samplers in MMFuser's block ({result['size']}), {result['date']}",
        "",
        f"`{command}`; {result['what']}; {result['rounds']} interleaved rounds, {result['threads']} thread(s), "
        f"load average {result['load_average']['start'][0]:.2f} at the start.",
        "",
        "| side | fwd+bwd median (ms) | speed-up vs reference |",
        "|---|---:|---:|",
        f"| reference (transformers) | {result['fwdbwd_median_ms']['reference']:.1f} | 1.00 |",
    ]
    for sampler, speedup in result["speedup_vs_reference"].items():
        lines.append(f"| ours, `{sampler}` | {result['fwdbwd_median_ms'][sampler]:.1f} | {speedup:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.samplers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "small", "medium"), default="medium")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved fwd+bwd measurements per side")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    require_positive(parser, args, ["rounds", "threads"])
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    result = measure(args.size, args.rounds)
    result.update(
        threads=args.threads,
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        load_average={"start": load_start, "end": os.getloadavg()},
    )
    publish(result, "benchmarks.samplers", argv, render, args.out, f"samplers_{args.size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
