# Two commands for a newcomer: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv on first use and install the package with its dev extras, pinned to requirements-lock.txt:
# the exact versions `make test` was last green with. `make test-latest` installs the newest releases instead.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements-lock.txt
EVAL_STAMP := $(VENV)/.installed-eval
# lmms-eval's own pins (av<16, antlr4 4.7.2) cannot co-resolve with hydra, so it goes in without its dependencies;
# the [eval] extra holds what it imports (README, "Evaluation").
LMMS_EVAL := lmms-eval==0.7.3
# The oldest transformers the project supports (the lower bound in pyproject.toml and llm_adapters/versions.py).
OLDEST_TRANSFORMERS := 5.23.0
OLDEST_VENV := .venv-oldest
LATEST_VENV := .venv-latest
# The tests that reach into transformers' internals (LM families, injection, cached generation, reference parity).
HF_INTERNALS_TESTS := tests/test_llm_*.py tests/test_bridge_*.py
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-suite test-oldest test-latest lock install lint notebooks clean params bench scaling bench-harness

$(STAMP): pyproject.toml $(LOCK)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

# The [eval] extra and lmms-eval: `make test` runs their tests too (`make demo` does not need them).
$(EVAL_STAMP): $(STAMP)
	$(PY) -m pip install -c $(LOCK) -e '.[dev,eval]'
	$(PY) -m pip install -c $(LOCK) --no-deps '$(LMMS_EVAL)'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bridgelab demo

# ruff, the whole suite on the locked versions, then the transformers-facing tests on the oldest supported transformers.
test: lint test-suite test-oldest

test-suite: $(STAMP) $(EVAL_STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q

$(OLDEST_VENV)/.installed: $(STAMP)
	.ci/overlay-venv $(VENV) $(OLDEST_VENV) transformers==$(OLDEST_TRANSFORMERS)
	touch $@

test-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_VENV)/bin/python -m pytest -n 2 --dist loadfile -q -p no:cacheprovider $(HF_INTERNALS_TESTS)

# Drift check: a fresh venv with the newest releases (no lock; transformers even beyond pyproject's upper bound).
# If it passes, raise the bound (pyproject.toml + llm_adapters/versions.py) and run `make lock`.
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --upgrade pip >/dev/null
	$(LATEST_VENV)/bin/python -m pip install -e '.[dev,eval]'
	$(LATEST_VENV)/bin/python -m pip install --no-deps --upgrade lmms-eval
	$(LATEST_VENV)/bin/python -m pip install --upgrade transformers
	$(LATEST_VENV)/bin/python -m pytest -n 2 --dist loadfile -q

# Rewrite the lock from a fresh venv with the newest releases inside pyproject's ranges; then run `make test`.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --upgrade pip >/dev/null
	.venv-lock/bin/python -m pip install -e '.[dev,eval]'
	.venv-lock/bin/python -m pip install --no-deps '$(LMMS_EVAL)'
	.venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^bridgelab' > $(LOCK)
	rm -rf .venv-lock

params: $(STAMP)
	$(VENV)/bin/bridgelab params

# ruff over the whole repository (rules and line length: [tool.ruff] in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# JupyterLab on notebooks/ (the [notebooks] extra, installed on first use).
$(VENV)/.notebooks: $(STAMP)
	$(PY) -m pip install -e '.[notebooks]'
	touch $@

notebooks: $(VENV)/.notebooks
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PY) -m benchmarks.run

scaling: $(STAMP)
	$(PY) -m benchmarks.scaling --threads 1

# The harness's overhead over a plain PyTorch loop, then samples/s and the encoder/bridge/LM split per bridge
# (the demo's setting; results in benchmarks/results/overhead.* and throughput.*).
bench-harness: $(STAMP)
	$(PY) -m benchmarks.overhead --threads 1
	$(PY) -m benchmarks.throughput --threads 1

clean:
	rm -rf runs outputs multirun .pytest_cache $(OLDEST_VENV) $(LATEST_VENV)
