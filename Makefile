# Two commands for a new machine with Python 3.11 and the package registries:
#   make demo   - create .venv, install the project (the light install: no torch), run the demo
#   make test   - torch (CPU) pinned, the project with its test dependencies, redis-server, then the whole suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: demo test test-py310 test-light install install-test redis-server lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# The light install: what `pip install async-semantic-llm-cache` gives a user (no torch).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	touch $@

# The tests also cover the torch path ([torch] extra) and `tune` ([tune], in [dev]): torch first and pinned, otherwise sentence-transformers
# lets pip resolve a multi-GB CUDA build.
$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml integrations/langchain/pyproject.toml integrations/llamaindex/pyproject.toml
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install "$(TORCH)" -e ".[dev]" -e integrations/langchain -e integrations/llamaindex
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# Debian's Redis 7 for the plain-Redis and cluster tests (the search-module server comes from PyPI wheels).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y redis-server; \
	  else sudo apt-get update && sudo apt-get install -y redis-server; fi; }

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m semantic_llm_cache demo

test: install-test redis-server
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# The oldest supported Python with the light install (no torch): the engine, the memory and SQLite backends and
# the contract suite with the fake embedder, and the default embedder itself.
PY310 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10 /usr/bin/python3.10))
test-py310:
	@if [ -z "$(PY310)" ]; then echo "python3.10 not found: skipping the Python 3.10 run"; exit 0; fi; \
	set -e; [ -x .venv310/bin/python ] || $(PY310) -m venv .venv310; \
	.venv310/bin/pip install -q -e . redis pytest pytest-asyncio pytest-timeout hypothesis; \
	HF_HUB_OFFLINE=1 .venv310/bin/python -m pytest -q -p no:cacheprovider -m "not model" -k "not redis" \
	  tests/test_cache.py tests/test_scope.py tests/test_config.py tests/test_guard.py tests/test_flat_index.py \
	  tests/test_memory_backend.py tests/test_decorators.py tests/test_serialization.py \
	  tests/test_sqlite_backend.py tests/test_backend_contract.py \
	  tests/test_single_flight.py tests/test_reliability.py tests/test_sensitive.py tests/test_never_cache.py \
	  tests/test_default_embedder.py

# What a user gets from `pip install async-semantic-llm-cache`: a fresh venv, a plain (non-editable) install,
# no torch or its company, its size, and the default embedder serving a paraphrase from the installed files.
LIGHT := /tmp/semantic-llm-cache-light-venv
test-light:
	rm -rf $(LIGHT) && $(PYTHON) -m venv $(LIGHT) && $(LIGHT)/bin/pip install -q --upgrade pip
	$(LIGHT)/bin/pip install -q .
	cd /tmp && HF_HUB_OFFLINE=1 HOME=$(LIGHT)/home $(LIGHT)/bin/python $(CURDIR)/tools/check_light_install.py

lint: install-test
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy
	$(BIN)/mypy --strict integrations/langchain/langchain_semantic_cache
	MYPYPATH=integrations/llamaindex $(BIN)/mypy --strict --namespace-packages --explicit-package-bases \
	  integrations/llamaindex/llama_index/llms/semantic_cache

bench: install-test
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/core.py

# The other benchmarks (minutes each): quality.py, embedding.py, redis_backend.py, hnsw.py, peers.py,
# lookup_floor.py (redis|memory), error_budget.py (needs ../shared/data/qqp_dev.jsonl)
# (peers needs `pip install -e '.[bench]'` and `pip install --no-deps langchain-redis==0.2.6`).

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
