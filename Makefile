# Two commands on a fresh machine: `make demo` and `make test`. Each builds
# the virtualenv it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: demo test lint protos model bench serve clean

# The service alone (no torch): what the Docker image holds too.
$(VENV)/.service: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

# Training and test tools. torch goes in first, pinned, so that the range in
# pyproject.toml is already satisfied by the CPU build on this machine.
$(VENV)/.dev: $(VENV)/.service
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[train,dev]'
	touch $@

demo: $(VENV)/.service
	$(BIN)/actionstream demo

test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Regenerate the gRPC/protobuf stubs; never edit actionstream/v1 by hand.
protos: $(VENV)/.dev
	scripts/gen_protos.sh $(PY) .

# Reproduce the bundled default model: TrainConfig's defaults, seed 0.
model: $(VENV)/.dev
	$(BIN)/actionstream train --out runs/default --seed 0
	$(BIN)/actionstream export runs/default --out service/models/default.onnx
	$(BIN)/actionstream evaluate runs/default

bench: $(VENV)/.dev
	$(PY) bench/step_latency.py

serve: $(VENV)/.service
	$(BIN)/actionstream serve

clean:
	rm -rf $(VENV) build runs .pytest_cache .mypy_cache .ruff_cache
