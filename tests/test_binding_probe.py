"""The binding probe (``python -m experiments.world.binding_probe``): the probe finds a label that is in the
features and not one that is not, and the command prints its JSON on the tiny world."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.world.binding_probe import probe_accuracy

REPO = Path(__file__).resolve().parents[1]


def test_the_probe_reads_a_linearly_encoded_label_and_not_an_absent_one() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(4, size=800)
    encoded = np.eye(4)[labels] @ rng.normal(size=(4, 32)) + 0.3 * rng.normal(size=(800, 32))
    assert probe_accuracy(encoded[:600], labels[:600], encoded[600:], labels[600:]) > 0.95
    noise = rng.normal(size=(800, 32))
    assert probe_accuracy(noise[:600], labels[:600], noise[600:], labels[600:]) < 0.4


@pytest.mark.slow  # the tiny world's ViT on 300 images (about 30 s, most of it imports and the world cache)
def test_the_command_prints_per_shape_accuracies_and_the_control(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "experiments.world.binding_probe", "--world", "tiny", "--train", "200", "--test", "100"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["world"] == "tiny" and set(result["where_is_shape"]) == {"square", "circle", "triangle", "cross"}
    assert sum(v["test_images"] for v in result["where_is_shape"].values()) == 2 * 100  # two shapes per image
    assert 0.25 < result["where_is_shape_mean"] <= 1 and 0 <= result["control_where_is_the_first_drawn"] <= 1
