"""benchmarks/gpu_check.sh: valid bash, the GPU plan it would run (every bridge with trainer=gpu, one FSDP run on a
single device, bench with bf16, scaling to N=400, all under one folder), and (slow) its CPU fallback end to end."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
BRIDGES = ("mlp", "qformer", "perceiver", "eagle", "mmfuser", "flamingo", "hyper_attention")


def _run(out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(out)], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=1200)


def test_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_gpu_plan(tmp_path: Path) -> None:
    done = _run(tmp_path / "g", DRY_RUN="1", CUDA="1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    bench = next(line for line in lines if line.startswith("bench"))
    assert "--device cuda --bf16" in bench and f"--out {tmp_path}/g/bench" in bench
    scaling = next(line for line in lines if line.startswith("scaling"))
    assert "--ns 1 4 16 64 128 256 400" in scaling and f"--out {tmp_path}/g/scaling" in scaling
    for bridge in BRIDGES:
        train = next(line for line in lines if line.startswith(f"train_{bridge} "))
        assert f"bridge={bridge} trainer=gpu" in train and f"run_dir={tmp_path}/g/train/{bridge}" in train
    fsdp = next(line for line in lines if line.startswith("train_fsdp"))
    assert "trainer=fsdp trainer.devices=1" in fsdp
    limits = [int(line.split("(")[1].split("s)")[0]) for line in lines if "s): " in line]
    assert sum(limits) <= 8 * 60  # the whole check fits its 8 minutes


@pytest.mark.slow
def test_cpu_fallback_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "c"
    done = _run(out, BRIDGES="mlp", STEPS="2", FORCE_CPU="1")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (out / "summary.tsv").read_text().splitlines()
    status = dict(line.split("\t")[:2] for line in summary[1:])
    assert status == {"bench": "0", "scaling": "0", "train_mlp": "0", "train_fsdp": "skipped (no CUDA)"}
    assert (out / "bench" / "bridges.json").exists() and (out / "scaling" / "scaling.png").exists()
    assert (out / "train" / "mlp" / "efficiency.json").exists() and "device: cpu" in (out / "machine.txt").read_text()
