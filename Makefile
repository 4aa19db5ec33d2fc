# attnblocks — set-up and everyday commands. Every target creates .venv when it is missing.
PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
# Torch wheels known to work; override e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# pytest workers of make test / test-all (one per core; each runs torch with one thread, see
# tests/conftest.py); whole files go to one worker, so module fixtures are built once
PYTEST_WORKERS ?= auto

.PHONY: help install demo quickstart test test-all lint format bench bench-gpu wheel clean

help:
	@echo "make demo      set up .venv and train ARL-CNN on the embedded synthetic ISIC 2017 data"
	@echo "make test      set up .venv and run the fast test suite (lint included)"
	@echo "make test-all  also run the slow tests (compile, end-to-end training, every architecture)"
	@echo "               one room: make test PYTEST_ARGS=tests/core (or tests/examples, tests/benchmarks)"
	@echo "make bench     quick profiles of the benchmarks (CPU)"
	@echo "make bench-gpu every CUDA figure, once, with the python it finds (no venv; PYTHON=... to override)"
	@echo "make wheel     build the wheel into dist/"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[examples,test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) examples/isic2017_arl.py

quickstart: install
	$(PY) examples/quickstart.py

lint: install
	$(PY) -m ruff check attnblocks examples benchmarks tests
	$(PY) -m ruff format --check attnblocks examples benchmarks tests

format: install
	$(PY) -m ruff format attnblocks examples benchmarks tests
	$(PY) -m ruff check --fix attnblocks examples benchmarks tests

test: install lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile -m "slow or not slow" $(PYTEST_ARGS)

bench: install
	$(PY) -m benchmarks.memory --quick
	$(PY) -m benchmarks.models --device cpu --quick
	$(PY) -m benchmarks.blocks --device cpu --quick

# No venv and no downloads: a GPU machine's own PyTorch, Triton and timm run the package from here.
bench-gpu:
	bash benchmarks/gpu.sh

wheel: install
	$(PY) -m pip wheel --no-deps -w dist .

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
