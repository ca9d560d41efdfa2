"""What the Lightning harness costs on top of the model: one training step through it against a plain PyTorch loop.

Usage::

    python -m benchmarks.overhead [--threads 1] [--blocks 9] [--block-steps 20] [--warmup 10]
                                  [--out benchmarks/results] [OVERRIDE ...]   (added to the defaults below)

Both sides train the same model (built twice from the same seed, as ``experiments.harness.runner`` builds it: world
backbones, the stage's frozen/trainable policy), with the same optimiser (the harness module's own AdamW + warm-up /
cosine schedule), gradient clipping and the same in-memory micro-batches (taken once from the run's
``BridgeDataModule`` stream, so the tasks mix as in training). The plain side is ``zero_grad / forward / backward /
clip / step / schedule``. The harness side is ``trainer.fit`` with what ``runner._fit_stage`` attaches: the JSONL
metrics logger, the configured loggers and LR monitor, atomic checkpoints at the run's cadence, the throughput
callback and the progress bar; the feature cache wraps both sides when ``train.cache_features`` is set.

One run, interleaved: the batches reach Lightning through a generator, and between Lightning's blocks of
``block_steps`` steps that generator runs a block of plain steps, so both sides see the same machine load. Lightning's
time is what passes outside the generator (every hook, logger and callback of a step); the plain block's time is
excluded from it. Three ratios over the blocks after the warm-up: the total (all timed harness steps / all timed
plain steps: what a training run pays, the headline), the ratio of the two medians, and the median of the per-block
ratios (each harness block against the plain block beside it). On a VM whose step time drifts by +-20% from block to
block, the total and the paired median are the stable ones; the ratio of medians can move by 5% between runs.

Default setting: the demo's (``experiment=quick_ablation bridge=mlp``: the world ViT and LM, batch 64) with a
smaller sample pool (``data.train_size=256 data.eval_size=8``: the batches have the same shapes, the pools only take
less to build; nothing is evaluated).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor

from experiments.harness import build as _build
from experiments.harness import feature_cache
from experiments.harness.build import build_data, build_model, build_world, component_specs
from experiments.harness.callbacks import AtomicCheckpoint, JsonlLogger, Throughput
from experiments.harness.config import RunConfig, StageConfig, config_dict, load_config, to_container
from experiments.harness.datamodule import BridgeDataModule
from experiments.harness.module import BridgeLitModule
from experiments.harness.rundir import RunDir, write_json_atomic, write_text_atomic
from experiments.harness.stages import StagePlan, apply_stage
from experiments.harness.trainer import BatchPlan, batch_plan, build_loggers, build_trainer

DEFAULT_OVERRIDES = ("experiment=quick_ablation", "bridge=mlp", "data.train_size=256", "data.eval_size=8")


def with_defaults(extra: Sequence[str], defaults: Sequence[str] = DEFAULT_OVERRIDES) -> list[str]:
    """``defaults`` followed by ``extra``; a default whose key ``extra`` sets again is left out."""
    keys = {o.partition("=")[0].lstrip("+~") for o in extra}
    return [o for o in defaults if o.partition("=")[0] not in keys] + list(extra)


@dataclass
class Prepared:
    """A run config with its world, a freshly seeded model, its in-memory micro-batches and its first stage."""

    run: RunConfig
    world: Any
    model: Any
    plan: StagePlan
    batches: list[Any]
    stage_name: str
    stage: StageConfig
    bplan: BatchPlan
    cache_identity: tuple[Any, ...]


def prepare(overrides: Sequence[str], num_batches: int) -> Prepared:
    """Compose ``overrides``, build world and data as the runner does, and collate ``num_batches`` micro-batches."""
    run = load_config(list(overrides))
    if run.trainer.accelerator == "cpu":
        torch.set_flush_denormal(True)  # as runner._execute does: late-training denormal gradients are 10-100x slower
    world = build_world(run)
    data = build_data(run, world)
    stage_name, stage = next(iter(run.stages.items()))
    bplan = batch_plan(run, stage)
    model, plan = new_model(run, world, stage_name, stage)
    train_collate, eval_collate = _build.collators(model)
    datamodule = BridgeDataModule(
        data.select_train(stage.tasks, f"stages.{stage_name}.tasks"), {}, train_collate, eval_collate,
        micro_batch_size=bplan.micro, accumulation=bplan.accumulation, seed=run.seed, num_workers=0,
        task_weights=data.weights,
    )
    stream = iter(datamodule.train_dataloader())
    batches = [next(stream) for _ in range(num_batches)]
    identity = (_build.spec_key(component_specs(run, world)[0]),)
    return Prepared(run, world, model, plan, batches, stage_name, stage, bplan, identity)


def new_model(run: RunConfig, world: Any, stage_name: str, stage: StageConfig) -> tuple[Any, StagePlan]:
    """A freshly seeded model with the stage applied (what ``runner._execute`` builds)."""
    L.seed_everything(run.seed, workers=True, verbose=False)
    model = build_model(run, world)
    return model, apply_stage(model, stage_name, stage)


def lit_module(prep: Prepared, model: Any, plan: StagePlan) -> BridgeLitModule:
    return BridgeLitModule(model, prep.stage_name, prep.stage, plan, ("bridge", *plan.trainable_groups),
                           config_dict(prep.run), prep.run.eval.max_new_tokens)


class PlainLoop:
    """The training step without Lightning: the harness module's optimiser and schedule, the stage's clipping."""

    def __init__(self, prep: Prepared, model: Any, plan: StagePlan) -> None:
        self.model = model
        config = lit_module(prep, model, plan).configure_optimizers()
        self.optimizer = config["optimizer"]
        self.scheduler = config["lr_scheduler"]["scheduler"]
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.grad_clip = prep.stage.grad_clip
        if prep.bplan.accumulation != 1:
            raise ValueError(f"The plain loop takes one micro-batch per step; the plan accumulates "
                             f"{prep.bplan.accumulation}. Set train.micro_batch_size to the effective batch size.")

    def step(self, batch: Any) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model(batch).loss
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()


def harness_trainer(prep: Prepared, module: BridgeLitModule, run_dir: Path, max_steps: int) -> L.Trainer:
    """The trainer of one stage with the callbacks and loggers that ``runner._fit_stage`` attaches."""
    run, name = prep.run, prep.stage_name
    rd = RunDir(run_dir)
    jsonl = JsonlLogger(rd, name)
    throughput = Throughput(prep.bplan.micro, prep.bplan.world_size, run.efficiency.skip_steps)
    callbacks = [AtomicCheckpoint(rd.last_checkpoint(name), run.train.checkpoint_every_n_steps, jsonl), throughput]
    loggers = [jsonl, *build_loggers(run.trainer.loggers, rd.path, name)]
    if len(loggers) > 1 or run.trainer.loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    return build_trainer(run, max_steps=max_steps, plan=prep.bplan, grad_clip=prep.stage.grad_clip,
                         callbacks=callbacks, loggers=loggers, model=module.model)


@dataclass
class Schedule:
    """Alternating blocks: ``warmup`` steps of each side, then ``blocks`` blocks of ``block_steps`` per side."""

    warmup: int = 10
    blocks: int = 9
    block_steps: int = 20
    harness_s: list[float] = field(default_factory=list)
    plain_s: list[float] = field(default_factory=list)

    @property
    def harness_steps(self) -> int:
        return self.warmup + self.blocks * self.block_steps


class Interleaved:
    """The batches Lightning trains on; between its blocks it runs the plain loop's blocks (timed apart).

    Lightning's share of a block is the time spent outside this generator between the block's first and last
    hand-over; the plain block runs inside the generator, so it is not counted on Lightning's side.
    """

    def __init__(self, batches: Sequence[Any], plain: PlainLoop, schedule: Schedule) -> None:
        self.batches, self.plain, self.schedule = list(batches), plain, schedule

    def _plain_block(self, start: int, steps: int) -> float:
        t0 = time.perf_counter()
        for i in range(steps):
            self.plain.step(self.batches[(start + i) % len(self.batches)])
        return time.perf_counter() - t0

    def __iter__(self) -> Iterator[Any]:
        s, n = self.schedule, len(self.batches)
        self._plain_block(0, s.warmup)
        outside, handed = 0.0, 0
        while True:
            i = handed
            block = (i - s.warmup) // s.block_steps if i >= s.warmup else -1
            if i >= s.warmup and (i - s.warmup) % s.block_steps == 0:
                if block > 0:  # a harness block just ended: record it, then the plain block
                    s.harness_s.append(outside / s.block_steps)
                if block < s.blocks:
                    s.plain_s.append(self._plain_block(i, s.block_steps) / s.block_steps)
                outside = 0.0
            t_out = time.perf_counter()
            yield self.batches[i % n]
            if s.warmup < handed + 1 <= s.harness_steps:
                outside += time.perf_counter() - t_out
            handed += 1


def run_overhead(overrides: Sequence[str] = DEFAULT_OVERRIDES, schedule: Schedule | None = None,
                 num_batches: int = 8, threads: int | None = 1) -> dict[str, Any]:
    """Measure both sides interleaved in this process; the result holds every block, the medians and the ratio."""
    schedule = schedule or Schedule()
    if threads:
        torch.set_num_threads(threads)
    load_start = os.getloadavg()
    prep = prepare(overrides, num_batches)
    lit_model, lit_plan = new_model(prep.run, prep.world, prep.stage_name, prep.stage)
    plain_model, plain_plan = prep.model, prep.plan
    plain = PlainLoop(prep, plain_model, plain_plan)
    module = lit_module(prep, lit_model, lit_plan)
    use_cache = prep.run.train.cache_features
    with tempfile.TemporaryDirectory(prefix="bridgelab-overhead-") as tmp, ExitStack() as stack:
        cached = [stack.enter_context(feature_cache.cached_encoders(m, prep.cache_identity) if use_cache
                                      else nullcontext(False)) for m in (lit_model, plain_model)]
        # One step past the schedule: Lightning fetches a batch ahead, so the last timed hand-over must happen.
        trainer = harness_trainer(prep, module, Path(tmp), schedule.harness_steps + 1)
        trainer.fit(module, train_dataloaders=Interleaved(prep.batches, plain, schedule))
    harness, plain_t = statistics.median(schedule.harness_s), statistics.median(schedule.plain_s)
    pairs = [h / p for h, p in zip(schedule.harness_s, schedule.plain_s)]
    return {
        "what": "one training step: Lightning harness vs plain PyTorch loop (same model, optimiser, batches)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "overrides": list(overrides),
        "bridge": (to_container(prep.run.bridge) or {}).get("name"),
        "batch": prep.bplan.as_dict(),
        "feature_cache": bool(cached[0]),
        "schedule": {"warmup": schedule.warmup, "blocks": schedule.blocks, "block_steps": schedule.block_steps},
        "harness_ms_per_step": 1e3 * harness,
        "plain_ms_per_step": 1e3 * plain_t,
        "ratio": harness / plain_t,
        "paired_ratio_median": statistics.median(pairs),
        "total_ratio": sum(schedule.harness_s) / sum(schedule.plain_s),
        "harness_blocks_ms": [1e3 * v for v in schedule.harness_s],
        "plain_blocks_ms": [1e3 * v for v in schedule.plain_s],
        "machine": machine_info(load_start),
    }


def machine_info(load_start: tuple[float, float, float]) -> dict[str, Any]:
    """CPU, library versions, threads and the load average before and after (the machine is shared)."""
    import transformers

    name = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        name = models[0] if models else name
    return {"cpu": name, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "lightning": L.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "load_average_start": list(load_start),
            "load_average_end": list(os.getloadavg())}


def to_markdown(result: dict[str, Any], command: str) -> str:
    m = result["machine"]
    s = result["schedule"]
    return "\n".join([
        f"# Harness overhead ({result['date']})", "",
        f"Command: `{command}`", "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['threads']} torch thread(s), load average "
        f"{m['load_average_start'][0]:.2f} at the start, {m['load_average_end'][0]:.2f} at the end; torch "
        f"{m['torch']}, lightning {m['lightning']}.", "",
        f"Setting: {' '.join(result['overrides'])}; batch {result['batch']['micro']} "
        f"(accumulation {result['batch']['accumulation']}), "
        f"feature cache {'on' if result['feature_cache'] else 'off'}; "
        f"{s['warmup']} warm-up steps per side, then {s['blocks']} alternating blocks of {s['block_steps']} steps.", "",
        "| side | median ms/step | blocks (ms/step) |", "|---|---:|---|",
        f"| plain PyTorch loop | {result['plain_ms_per_step']:.2f} | "
        f"{', '.join(f'{v:.1f}' for v in result['plain_blocks_ms'])} |",
        f"| Lightning harness | {result['harness_ms_per_step']:.2f} | "
        f"{', '.join(f'{v:.1f}' for v in result['harness_blocks_ms'])} |", "",
        f"Ratio harness / plain: **{result['total_ratio']:.3f}** (total time of all timed steps); ratio of the "
        f"medians {result['ratio']:.3f}, median of the per-block ratios {result['paired_ratio_median']:.3f}; "
        "target <= 1.05.", "",
    ])


def write_outputs(result: dict[str, Any], out: Path, name: str, markdown: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / f"{name}.json", result)
    write_text_atomic(out / f"{name}.md", markdown)
    return out / f"{name}.json", out / f"{name}.md"


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, names: Sequence[str]) -> None:
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


def publish(result: dict[str, Any], module: str, argv: Sequence[str] | None,
            render: Callable[[dict[str, Any], str], str], out: Path, name: str) -> None:
    """Record the command line in ``result``, write ``<out>/<name>.json`` and ``.md`` atomically, print the markdown."""
    result["command"] = (f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    markdown = render(result, result["command"])
    write_outputs(result, out, name, markdown)
    print(markdown, end="")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help=f"config overrides after {' '.join(DEFAULT_OVERRIDES)}")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("--blocks", type=int, default=9, help="timed blocks per side")
    parser.add_argument("--block-steps", type=int, default=20, help="steps per block")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per side first")
    parser.add_argument("--batches", type=int, default=8, help="distinct micro-batches held in memory")
    parser.add_argument("--out", default="benchmarks/results", help="folder for overhead.json / overhead.md")
    args = parser.parse_args(argv)
    require_positive(parser, args, ("blocks", "block_steps", "batches"))
    overrides = with_defaults(args.overrides)
    schedule = Schedule(warmup=max(0, args.warmup), blocks=args.blocks, block_steps=args.block_steps)
    result = run_overhead(overrides, schedule, args.batches, args.threads or None)
    publish(result, "benchmarks.overhead", argv, to_markdown, Path(args.out), "overhead")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
