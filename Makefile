# Two set-up commands for a fresh machine: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export RAY_USAGE_STATS_ENABLED := 0
export FLWR_HOME := $(CURDIR)/.flwr

.PHONY: demo test test-slow lint bench-quality bench-quality-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build; an unpinned resolve would pull several GB of CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fedrec-sim run --run-dir runs/demo --overwrite

test: $(STAMP)
	bash scripts/install-system-deps.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench-quality: $(STAMP)
	$(BIN)/fedrec-sim bench quality-central

bench-quality-quick: $(STAMP)
	$(BIN)/fedrec-sim bench quality-central --quick

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
