# Two commands do all set-up on a fresh machine (Python 3.11):
#   make demo   — the main job on the embedded default (Beam DirectRunner) on a sample image set
#   make test   — the whole test suite
# Each creates .venv when missing. torch/torchvision come from this machine's local wheels.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipelines.demo --out build/demo

test: $(STAMP)
	$(BIN)/ruff check lcrypt pipelines loaders training tests bench
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n 2 --durations=15

bench: $(STAMP)
	$(BIN)/python bench/bench_schemes.py

clean:
	rm -rf build .pytest_cache .hypothesis
