"""The supported transformers range: one range in pyproject, the code and the Makefile, a lock inside it, a warning
outside it (issue 8: transformers 5.24 broke cached generation of the inject bridges without an error)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import llm_adapters
from llm_adapters.versions import TESTED_TRANSFORMERS, UntestedTransformersWarning, untested_transformers_message

ROOT = Path(__file__).resolve().parents[1]


def _requirement(name: str) -> Requirement:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(r for r in map(Requirement, deps) if r.name == name)


def _lock() -> dict[str, str]:
    lines = (ROOT / "requirements-lock.txt").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line)


def test_pyproject_declares_the_tested_range_with_an_upper_bound() -> None:
    spec = _requirement("transformers").specifier
    assert spec == TESTED_TRANSFORMERS
    assert any(s.operator == "<" for s in spec) and any(s.operator == ">=" for s in spec)


def test_make_test_oldest_runs_the_lower_bound() -> None:
    oldest = re.search(r"^OLDEST_TRANSFORMERS := (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    lower = next(s.version for s in TESTED_TRANSFORMERS if s.operator == ">=")
    assert Version(oldest) == Version(lower)


def test_the_lock_pins_a_tested_release_of_every_core_package() -> None:
    lock = _lock()
    assert Version(lock["transformers"]) in TESTED_TRANSFORMERS
    for name in ("torch", "torchvision", "lightning", "timm", "open_clip_torch", "hydra-core", "tokenizers"):
        assert name in lock, f"{name} is not pinned in requirements-lock.txt"


def test_the_installed_transformers_is_tested() -> None:
    """Fails under `make test-latest` when a newer transformers is out: the drift is found by a command."""
    assert untested_transformers_message() is None


@pytest.mark.parametrize("version", ["5.22.0", "5.25.0", "6.0.0"])
def test_an_untested_version_is_named_with_the_range_and_the_fix(version: str) -> None:
    message = untested_transformers_message(version)
    assert message is not None
    assert f"transformers {version} is installed" in message and str(TESTED_TRANSFORMERS) in message
    assert "requirements-lock.txt" in message and "make test-latest" in message


def test_versions_inside_the_range_pass() -> None:
    assert untested_transformers_message("5.23.0") is None and untested_transformers_message("5.24.3") is None


def test_llm_adapters_warns_at_import_outside_the_range() -> None:
    code = (
        "import importlib.metadata as m, warnings\n"
        "real = m.version\n"
        "m.version = lambda name: '5.99.0' if name == 'transformers' else real(name)\n"
        "warnings.simplefilter('always')\n"
        "import llm_adapters\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "UntestedTransformersWarning" in proc.stderr and "transformers 5.99.0 is installed" in proc.stderr


def test_warn_if_untested_uses_the_warning_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("llm_adapters.versions.metadata.version", lambda name: "4.46.0")
    with pytest.warns(UntestedTransformersWarning, match="transformers 4.46.0 is installed"):
        llm_adapters.warn_if_untested()


def _dry_run(target: str) -> str:
    proc = subprocess.run(["make", "-n", "-B", target], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_install_uses_the_lock_and_test_latest_does_not() -> None:
    assert "pip install -c requirements-lock.txt -e '.[dev]'" in _dry_run("install")
    latest = _dry_run("test-latest")
    assert "requirements-lock.txt" not in latest
    assert "pip install --upgrade transformers" in latest and "pytest" in latest


def test_make_test_includes_the_oldest_transformers_run() -> None:
    commands = _dry_run("test")
    assert ".ci/overlay-venv .venv .venv-oldest transformers==" in commands
    assert ".venv-oldest/bin/python -m pytest" in commands and "tests/test_llm_" in commands
