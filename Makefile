# Two commands for a newcomer: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv on first use and install the package with its dev extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test install lint clean params bench

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bridgelab demo

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q

params: $(STAMP)
	$(VENV)/bin/bridgelab params

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf runs outputs multirun .pytest_cache
