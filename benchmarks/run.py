"""Benchmark every bridge beside its installed reference: time, FLOPs, parameters, peak memory.

Usage::

    python -m benchmarks.run [--size tiny|small|medium] [--out DIR] [--bridges mlp qformer ...]
                             [--repeats N] [--warmup N] [--threads N] [--device auto|cpu|cuda] [--bf16]

Writes ``<out>/bridges.md`` (the table printed to stdout) and ``<out>/bridges.json`` (every record and the machine),
both atomically. On CUDA (or with ``--bf16``) the timed calls run under bf16 autocast; the parity check (reference and
ours on the same weights and inputs, float32, eval mode) and the FLOP counts always run in float32. A parity failure
stops the run: speeds of different computations are not comparable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import bridges as _prefix_cases  # noqa: F401  (registers the prefix-bridge cases first)
from benchmarks import inject as _inject_cases  # noqa: F401  (then the inject-bridge cases)
from benchmarks.case import CASES, SIZES, Case
from benchmarks.measure import (
    Settings,
    count_flops,
    flop_method,
    forward,
    forward_backward,
    gemm_rate,
    memory_method,
    param_count,
    parity,
    peak_memory_bytes,
    time_calls,
    time_shares,
)

#: (repeats, warmup) per size.
DEFAULT_REPEATS = {"tiny": (1, 1), "small": (7, 2), "medium": (5, 1)}
ATOL = RTOL = 1e-4
FLOP_TOLERANCE = 0.10


class ParityError(AssertionError):
    """Ours and the reference disagree, so their timings would not compare equal computations."""


def _zero_grad(module: torch.nn.Module | None) -> None:
    if module is not None:
        module.zero_grad(set_to_none=True)


def _has_trainable(module: torch.nn.Module | None) -> bool:
    return module is not None and any(p.requires_grad for p in module.parameters())


def _measure(case: Case, settings: Settings) -> dict[str, dict[str, Any]]:
    """Times (interleaved across the sides) and peak memory of ours, the reference and the baseline."""
    sides = {"ours": (case.ours, case.run_ours)}
    if case.run_reference is not None:
        sides["ref"] = (case.reference, case.run_reference)
    out: dict[str, dict[str, Any]] = {name: {} for name in sides}
    fwd = {name: forward(fn) for name, (_, fn) in sides.items()}
    if case.baseline is not None:
        fwd["baseline"] = forward(case.baseline[1])
    for name, timing in time_calls(fwd, settings).items():
        out.setdefault(name, {})["fwd"] = timing
    trainable = {name: fn for name, (module, fn) in sides.items() if _has_trainable(module)}
    for name, timing in time_calls({n: forward_backward(fn) for n, fn in trainable.items()}, settings).items():
        out[name]["fwdbwd"] = timing
    for name, (module, fn) in sides.items():
        _zero_grad(module)
        out[name]["peak_mem_fwd_bytes"] = peak_memory_bytes(forward(fn), settings)
        if name in trainable:
            out[name]["peak_mem_fwdbwd_bytes"] = peak_memory_bytes(forward_backward(fn), settings)
            _zero_grad(module)
    return out


def run_case(case: Case, settings: Settings) -> dict[str, Any]:
    """Measure one case; raises :class:`ParityError` when ours and the reference disagree."""
    record: dict[str, Any] = {
        "bridge": case.name,
        "what": case.what,
        "num_media": case.num_media,
        "reference": case.reference_name or None,
        "no_reference": case.no_reference or None,
        "params": param_count(case.ours),
        "ref_params": param_count(case.reference),
        "notes": list(case.notes),
    }
    # equal computations first: same weights, same inputs, float32
    ours_out = forward(case.run_ours)()
    if case.run_reference is not None:
        check = parity(ours_out, forward(case.run_reference)(), ATOL, RTOL)
        record["parity"] = check
        if not check["matched"]:
            raise ParityError(f"{case.name}: ours and the reference ({case.reference_name}) differ: {check}")
    # FLOPs: the declaration per media item against the counter
    timed_flops = count_flops(case.run_ours, case.flop_mapping)
    counted = timed_flops if case.run_flops is None else count_flops(case.run_flops, case.flop_mapping)
    measured = counted / case.num_media
    declared = case.declared_flops_per_media
    record.update(
        declared_flops_per_media=declared,
        measured_flops_per_media=measured,
        flops_rel_err=(declared - measured) / measured if measured else float("nan"),
        timed_flops=timed_flops,
    )
    if case.run_reference is not None:
        record["ref_timed_flops"] = count_flops(case.run_reference, case.flop_mapping)
    # time and memory
    measured_sides = _measure(case, settings)
    ours = record["ours"] = measured_sides["ours"]
    if "ref" in measured_sides:
        ref = record["ref"] = measured_sides["ref"]
        record["speed_ratio_fwd"] = ours["fwd"]["median_ms"] / ref["fwd"]["median_ms"]
        if "fwdbwd" in ours and "fwdbwd" in ref:
            record["speed_ratio_fwdbwd"] = ours["fwdbwd"]["median_ms"] / ref["fwdbwd"]["median_ms"]
    if case.baseline is not None:
        record["baseline"] = {"label": case.baseline[0], **measured_sides["baseline"]}
    record["fwd_gflops_per_s"] = record["timed_flops"] / (ours["fwd"]["median_ms"] * 1e6)
    record["fwd_time_shares"] = time_shares(forward(case.run_ours), settings)
    return record


def machine(settings: Settings) -> dict[str, Any]:
    """Device, library versions, threads and the load of the machine (it is shared)."""
    import transformers

    if settings.device.type == "cuda":
        name = torch.cuda.get_device_name(settings.device)
    else:
        name = platform.processor() or platform.machine()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.exists():
            models = [
                ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")
            ]
            name = models[0] if models else name
    return {
        "device": str(settings.device),
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "autocast": "bfloat16" if settings.autocast else None,
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def run_benchmarks(
    size: str = "small",
    bridges: Sequence[str] | None = None,
    repeats: int | None = None,
    warmup: int | None = None,
    device: str = "auto",
    threads: int | None = None,
    bf16: bool | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run the chosen cases (all by default) and return ``{"meta": ..., "records": [...]}``.

    ``bf16``: time under bfloat16 autocast; ``None`` = on CUDA only. Parity and FLOPs always run in float32.
    """
    if size not in SIZES:
        raise ValueError(f"Unknown size '{size}'. Use one of {SIZES}.")
    names = list(bridges) if bridges else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(f"Unknown bridges {unknown}. Known: {sorted(CASES)}")
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    default_repeats, default_warmup = DEFAULT_REPEATS[size]
    settings = Settings(
        device=dev,
        repeats=repeats if repeats is not None else default_repeats,
        warmup=warmup if warmup is not None else default_warmup,
        autocast=dev.type == "cuda" if bf16 is None else bf16,
    )
    meta = machine(settings) | {
        "size": size,
        "repeats": settings.repeats,
        "warmup": settings.warmup,
        "memory_method": memory_method(dev),
        "flop_method": flop_method(),
        "parity_atol": ATOL,
        "parity_rtol": RTOL,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    # the machine's limit, measured in the same run (before and after the bridges: the load drifts)
    gemm = [gemm_rate(settings)]
    records = []
    for name in names:
        start = dt.datetime.now()
        record = run_case(CASES[name](size, dev), settings)
        record["wall_s"] = (dt.datetime.now() - start).total_seconds()
        records.append(record)
        if verbose:
            print(f"  {name}: {record['wall_s']:.1f} s", file=sys.stderr, flush=True)
    meta["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    gemm.append(gemm_rate(settings))
    if settings.device.type == "cuda":
        meta["gemm_bf16"] = gemm_rate(settings, dtype=torch.bfloat16)
    rate = max(g["gflops_per_s"] for g in gemm)
    meta["gemm_fp32"] = {"before": gemm[0], "after": gemm[1], "gflops_per_s": rate}
    if settings.autocast and "gemm_bf16" in meta:  # the timed calls ran in bf16: compare with the bf16 rate
        rate = meta["gemm_bf16"]["gflops_per_s"]
    meta["gemm_reference_gflops_per_s"] = rate
    for record in records:
        record["fraction_of_gemm"] = record["fwd_gflops_per_s"] / rate
        if record["fraction_of_gemm"] < 0.5:
            shares = record["fwd_time_shares"]
            name, share = shares["top_other_ops"][0] if shares["top_other_ops"] else ("-", 0.0)
            record["bottleneck"] = (f"{100 * (1 - shares['gemm_share']):.0f}% of the time outside GEMMs; "
                                    f"largest: {name} {100 * share:.0f}%")
    return {"meta": meta, "records": records}


# ---- report ----------------------------------------------------------------------------------------------------------


def _ms(side: dict[str, Any] | None, key: str) -> str:
    if not side or key not in side:
        return "-"
    t = side[key]
    return f"{t['median_ms']:.3g} ±{t['iqr_ms'] / 2:.2g}"


def _mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.3g}"


def _ratio(record: dict[str, Any], key: str) -> str:
    return f"{record[key]:.2f}" if key in record else "-"


def to_markdown(result: dict[str, Any]) -> str:
    meta, records = result["meta"], result["records"]
    lines = [
        f"# Bridge benchmarks ({meta['size']})",
        "",
        (
            f"{meta['device_name']} ({meta['device']}), {meta['threads']} threads, torch {meta['torch']}, transformers "
            f"{meta['transformers']}, autocast {meta['autocast'] or 'off (float32)'}; median of {meta['repeats']} "
            f"measurements after {meta['warmup']} warm-up calls; {meta['date']}; load average "
            f"{_load(meta.get('load_average_start'))} at start, {_load(meta.get('load_average_end'))} at end."
        ),
        "",
        (
            "Times in ms (median ±half the inter-quartile range); ratio = ours / reference (below 1: ours is faster). "
            "FLOPs per media item: the bridge's declaration and the `FlopCounterMode` count (SDPA as math). Peak "
            f"memory of one fwd+bwd in MiB ({meta['memory_method']})."
        ),
        "",
        (
            "| bridge | N | params | fwd ours | fwd ref | ratio | fwd+bwd ours | fwd+bwd ref | ratio | GFLOP/media "
            "declared / counted | fwd GFLOP/s | of GEMM rate | peak MiB ours / ref | parity (max abs diff) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in records:
        ours, ref = r.get("ours"), r.get("ref")
        parity_cell = f"ok ({r['parity']['max_abs_diff']:.1e})" if "parity" in r else "no reference"
        lines.append(
            f"| {r['bridge']} | {r['num_media']} | {r['params'] / 1e6:.3g}M | {_ms(ours, 'fwd')} | {_ms(ref, 'fwd')} "
            f"| {_ratio(r, 'speed_ratio_fwd')} | {_ms(ours, 'fwdbwd')} | {_ms(ref, 'fwdbwd')} "
            f"| {_ratio(r, 'speed_ratio_fwdbwd')} | {r['declared_flops_per_media'] / 1e9:.3g} / "
            f"{r['measured_flops_per_media'] / 1e9:.3g} ({100 * r['flops_rel_err']:+.1f}%) "
            f"| {r['fwd_gflops_per_s']:.3g} | {r['fraction_of_gemm']:.2f} | {_mb(ours.get('peak_mem_fwdbwd_bytes'))} / "
            f"{_mb(ref.get('peak_mem_fwdbwd_bytes')) if ref else '-'} | {parity_cell} |"
        )
    gemm = meta["gemm_fp32"]
    before, after = gemm["before"]["gflops_per_s"], gemm["after"]["gflops_per_s"]
    lines += ["", (f"Machine GEMM rate (fp32 {gemm['before']['size']}² matmul, same run): {before:.3g} GFLOP/s before "
                   f"the bridges, {after:.3g} after; fractions use {meta['gemm_reference_gflops_per_s']:.3g}.")]
    if "gemm_bf16" in meta:
        lines.append(f"bf16 GEMM rate: {meta['gemm_bf16']['gflops_per_s']:.3g} GFLOP/s.")
    slow = [r for r in records if "bottleneck" in r]
    if slow:
        lines += ["", "Below half the GEMM rate (fwd):", ""]
        lines += [f"- **{r['bridge']}** ({r['fraction_of_gemm']:.2f}): {r['bottleneck']}" for r in slow]
    lines += ["", "Timed computations and references:", ""]
    for r in records:
        reference = r["reference"] or f"none: {r['no_reference']}"
        lines.append(f"- **{r['bridge']}**: {r['what']}. Reference: {reference}.")
        if "baseline" in r:
            base = r["baseline"]
            extra = r["ours"]["fwd"]["median_ms"] / base["fwd"]["median_ms"] - 1
            lines.append(f"  Baseline {base['label']}: fwd {_ms(base, 'fwd')} ms (ours adds {100 * extra:+.0f}%).")
        for note in r["notes"]:
            lines.append(f"  - {note}")
    return "\n".join(lines) + "\n"


def _load(value: Any) -> str:
    return "n/a" if not value else "/".join(f"{v:.1f}" for v in value)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_outputs(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    md, js = out / "bridges.md", out / "bridges.json"
    _atomic_write(js, json.dumps(result, indent=2, default=str) + "\n")
    _atomic_write(md, to_markdown(result))
    return md, js


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", choices=SIZES)
    parser.add_argument("--out", default="runs/benchmarks", help="output directory (default: runs/benchmarks)")
    parser.add_argument("--bridges", nargs="+", choices=sorted(CASES), help="cases to run (default: all)")
    parser.add_argument("--repeats", type=int, help="timed measurements per computation")
    parser.add_argument("--warmup", type=int, help="untimed calls before timing")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, help="time under bf16 autocast (default: on CUDA only)"
    )
    args = parser.parse_args(argv)
    result = run_benchmarks(
        args.size, args.bridges, args.repeats, args.warmup, args.device, args.threads, args.bf16, verbose=True
    )
    md, js = write_outputs(result, args.out)
    print(to_markdown(result))
    print(f"wrote {md} and {js}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
