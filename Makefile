# make demo      : create .venv if missing, install leanvit with its extras, run the main job
# make test      : same set-up, then the whole test suite (both cores: pytest-xdist, one torch thread a worker)
# make test-fast : the fast tier (-m "not slow"): models, checkpoints, fusion, verification, options, shapes
# make test-avx2 : the whole suite as an AVX2-only CPU runs it (torch capped to AVX2; tests/conftest.py)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-fast test-avx2 install bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/leanvit demo --out out/demo

# two workers (one per core, one torch thread each); worksteal evens out the long tests. Costly shared fixtures
# are built once per run for both workers (tests/helpers/once.py).
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist worksteal --durations=20 tests

test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

test-avx2: $(STAMP)
	LEANVIT_TEST_CPU=avx2 $(PYTEST)

bench: $(STAMP)
	$(BIN)/python benchmarks/cpu_throughput.py

clean:
	rm -rf out .pytest_cache
