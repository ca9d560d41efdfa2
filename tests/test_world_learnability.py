"""experiments/world/learnability.py: the command trains an LM on one format and reports its text-only QA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_the_command_reports_text_qa_of_the_format_it_was_given() -> None:
    cmd = [sys.executable, "-m", "experiments.world.learnability", "--task", "spatial", "--objects", "2",
           "--option", "spatial_ask_by=shape", "--steps", "5", "--layers", "3"]
    out = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["options"] == {"spatial_ask_by": "shape"} and report["steps"] == 5 and report["threads"] == 1
    assert report["layers"] == 3  # read off the trained model's config
    assert list(report["text_qa"]) == ["spatial/where_shape"] and 0 <= report["text_qa"]["spatial/where_shape"] <= 1


def test_a_malformed_option_is_refused_with_the_form_to_use() -> None:
    cmd = [sys.executable, "-m", "experiments.world.learnability", "--task", "spatial", "--option", "spatial_ask_by"]
    out = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "KEY=VALUE" in out.stderr
