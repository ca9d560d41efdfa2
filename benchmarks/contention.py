"""Training speed beside a competing process, per thread / OpenMP wait-policy setting (issue 11, section 4).

Usage::

    python -m benchmarks.contention [--seconds 5] [--repeats 3] [--settings auto threads=2 threads=1 ...]
                                    [--competitor other-session|same-session] [--out runs/benchmarks/contention]
    python -m benchmarks.contention --command "bridgelab demo run_dir={out}" --settings auto --repeats 1

The default workload is the demo's first and most affected phase in miniature: training steps of a tiny Llama LM
(2 layers, width 64, batch 32 x 32 tokens, AdamW), run in a fresh subprocess per measurement with the setting's
environment (``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY``, ``BRIDGELAB_THREADS``), after a few seconds of warm-up (so
``auto``, ``experiments.harness.threads``, has settled). With ``--command`` the workload is that command instead
(``{out}`` becomes a fresh directory per measurement under ``--out``), and its speed is 1 / its wall time.

The competitor is one niced CPU-bound process (a pure-Python loop, one thread), as a user's other program would be.
``other-session`` (the default) starts it in a new session, as from another terminal: Linux puts each session in its
own autogroup and shares the CPU fairly between autogroups, so its ``nice`` does not lower it against us.
``same-session`` starts it as our child, where ``nice`` does rank it below us. For every setting, ``alone`` and
``beside`` are measured interleaved (alternating, ``repeats`` times), so the ratio ``alone / beside`` (the slowdown)
comes from one run; ``idle cost`` is the setting's alone speed relative to the first setting's. A good setting keeps
the slowdown near the 2x that the lost core explains without an idle cost above 5%.

Measuring this honestly needs an otherwise quiet machine: on a machine shared with other work the "alone" speed is
itself contended (the report records the load average).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_SETTINGS = ("default", "auto", "threads=1", "threads=2,wait=PASSIVE", "threads=1,wait=PASSIVE",
                    "threads=2,wait=ACTIVE")
COMPETITORS = ("other-session", "same-session")
WARMUP_S = 3.0  # > 2 governor intervals in the worker, so ``auto`` is measured settled
ROOT = Path(__file__).resolve().parents[1]  # the worker runs as ``python -m benchmarks.contention`` from here
COMPETITOR = "import os\nos.nice(10)\nwhile True:\n    pass\n"


def parse_setting(text: str) -> dict[str, str]:
    """``threads=N,wait=PASSIVE|ACTIVE`` (either part optional), ``auto`` or ``default`` -> the worker's environment.

    ``default`` is torch's own thread count, never changed; ``auto`` lets the threads follow the load.
    """
    env: dict[str, str] = {}
    if text in ("default", "auto"):
        return {"BRIDGELAB_THREADS": "auto" if text == "auto" else str(torch_default_threads())}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key == "threads" and value.isdigit() and int(value) > 0:
            env["OMP_NUM_THREADS"] = value
            env["BRIDGELAB_THREADS"] = value
        elif key == "wait" and value.upper() in ("PASSIVE", "ACTIVE"):
            env["OMP_WAIT_POLICY"] = value.upper()
        else:
            raise ValueError(
                f"Bad contention setting '{text}': use 'default', 'auto' or 'threads=N,wait=PASSIVE|ACTIVE' "
                "(e.g. threads=1)."
            )
    return env


@functools.cache
def torch_default_threads() -> int:
    """torch's own intra-op thread count in a fresh process of this environment (what ``default`` fixes)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         env={k: v for k, v in os.environ.items() if k != "BRIDGELAB_THREADS"},
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def worker(seconds: float, warmup_s: float = WARMUP_S) -> dict[str, float]:
    """Training steps of the tiny LM for ``seconds`` after ``warmup_s`` of warm-up; returns steps/s.

    ``BRIDGELAB_THREADS`` is honoured as the harness honours it; ``auto`` ticks a governor every step (every second).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from experiments.harness.threads import ThreadGovernor, governor_from_env, usable_cores

    governor = governor_from_env()
    if governor is not None:
        governor = ThreadGovernor(max_threads=governor.max_threads, cores=usable_cores(), interval_s=1.0)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 256, (32, 32))

    def step() -> None:
        if governor is not None:
            governor.tick()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    while time.perf_counter() - start < warmup_s:
        step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    return {"steps_per_s": steps / (time.perf_counter() - start), "threads": torch.get_num_threads(),
            "thread_changes": governor.changes if governor is not None else 0}


def start_competitor(kind: str) -> subprocess.Popen:
    """One niced busy loop: in a new session (its own autogroup, like another terminal) or as our child."""
    if kind not in COMPETITORS:
        raise ValueError(f"Unknown competitor '{kind}': use one of {', '.join(COMPETITORS)}.")
    return subprocess.Popen([sys.executable, "-c", COMPETITOR], start_new_session=kind == "other-session")


def _measure(setting: str, seconds: float, competing: bool, competitor: str = "other-session",
             command: str | None = None, out: Path | None = None) -> float:
    """Steps/s of the worker, or 1 / wall seconds of ``command``, under ``setting``."""
    env = {**os.environ, **parse_setting(setting)}
    rival = start_competitor(competitor) if competing else None
    try:
        if command is None:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.contention", "--worker", "--seconds", str(seconds)],
                env=env, cwd=ROOT, capture_output=True, text=True, check=True,
            )
            return float(json.loads(done.stdout.strip().splitlines()[-1])["steps_per_s"])
        assert out is not None
        side = "beside" if competing else "alone"
        run_dir = out / f"{setting.replace(',', '_').replace('=', '')}-{side}"
        suffix = 0
        while run_dir.with_name(f"{run_dir.name}-{suffix}").exists():
            suffix += 1
        run_dir = run_dir.with_name(f"{run_dir.name}-{suffix}")
        run_dir.mkdir(parents=True)
        start = time.perf_counter()
        with open(run_dir / "console.log", "w") as log:
            subprocess.run(shlex.split(command.replace("{out}", str(run_dir))), env=env, cwd=ROOT,
                           stdout=log, stderr=subprocess.STDOUT, check=True)
        return 1.0 / (time.perf_counter() - start)
    finally:
        if rival is not None:
            rival.kill()
            rival.wait()


def run_contention(settings: Sequence[str] = DEFAULT_SETTINGS, seconds: float = 5.0, repeats: int = 3,
                   competitor: str = "other-session", command: str | None = None,
                   out: Path | None = None) -> dict:
    """Per setting: median speed alone and beside the competitor, slowdown, idle cost; and the chosen setting."""
    for s in settings:
        parse_setting(s)  # fail before measuring anything
    if competitor not in COMPETITORS:
        raise ValueError(f"Unknown competitor '{competitor}': use one of {', '.join(COMPETITORS)}.")
    samples: dict[str, dict[str, list[float]]] = {s: {"alone": [], "beside": []} for s in settings}
    load_start = os.getloadavg()
    for r in range(repeats):
        for s in settings if r % 2 == 0 else reversed(settings):
            for competing in (False, True) if r % 2 == 0 else (True, False):
                speed = _measure(s, seconds, competing, competitor, command, out)
                samples[s]["beside" if competing else "alone"].append(speed)
    rows = []
    base = statistics.median(samples[settings[0]]["alone"])
    for s in settings:
        alone, beside = statistics.median(samples[s]["alone"]), statistics.median(samples[s]["beside"])
        rows.append({"setting": s, "alone_steps_per_s": alone, "beside_steps_per_s": beside,
                     "slowdown": alone / beside, "idle_cost": base / alone - 1, "samples": samples[s]})
    fine = [r for r in rows if r["idle_cost"] <= 0.05] or rows
    chosen = min(fine, key=lambda r: r["slowdown"])["setting"]
    return {"rows": rows, "chosen": chosen, "seconds": seconds, "repeats": repeats, "cpu_count": os.cpu_count(),
            "competitor": competitor, "command": command,
            "unit": "runs/s (1 / wall seconds)" if command else "steps/s",
            "load_average_start": load_start, "load_average_end": os.getloadavg(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def to_markdown(result: dict[str, Any]) -> str:
    timed = result.get("command") is not None
    unit = "wall s" if timed else "steps/s"
    lines = [
        f"# Training beside a competing process ({result['date']}, {result['cpu_count']} CPUs, load "
        f"{result['load_average_start'][0]:.1f} -> {result['load_average_end'][0]:.1f})", "",
        f"Workload: {'`' + result['command'] + '`' if timed else 'the tiny-LM training worker'}; competitor: one "
        f"niced busy loop, {result.get('competitor', 'same-session')}; {result['repeats']} repeat(s).", "",
        f"| setting | alone {unit} | beside {unit} | slowdown | idle cost |", "|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        alone, beside = r["alone_steps_per_s"], r["beside_steps_per_s"]
        if timed:
            alone, beside = 1 / alone, 1 / beside
        lines.append(f"| {r['setting']} | {alone:.2f} | {beside:.2f} | {r['slowdown']:.2f}x | "
                     f"{100 * r['idle_cost']:+.1f}% |")
    lines += ["", f"Chosen (lowest slowdown with idle cost <= 5%): {result['chosen']}"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.contention", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per worker measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS))
    parser.add_argument("--competitor", choices=COMPETITORS, default="other-session")
    parser.add_argument("--command", default=None,
                        help="time this command instead of the worker; {out} is a fresh directory per measurement")
    parser.add_argument("--name", default="contention", help="file stem of the report under --out")
    parser.add_argument("--out", default="runs/benchmarks/contention")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.seconds)))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run_contention(args.settings, args.seconds, args.repeats, args.competitor, args.command, out)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{args.name}.md").write_text(to_markdown(result))
    print(to_markdown(result), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
