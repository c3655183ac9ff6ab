# Two commands on a fresh machine: `make demo` and `make test`.
# torch is pinned and installed first so that the CPU wheel is used (an open range would pull CUDA builds).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -e ".[dev,logging]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/visalign demo

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests

lint: install
	$(BIN)/ruff check src tests benchmarks experiments

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
