# Two commands for a new machine with Python 3.11 and the package registries:
#   make demo   - create .venv, install torch (CPU) then the project, run the demo
#   make test   - the same, plus test dependencies and redis-server, then the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: demo test install install-test redis-server lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# torch first and pinned: otherwise sentence-transformers lets pip resolve a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml integrations/langchain/pyproject.toml integrations/llamaindex/pyproject.toml
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

lint: install-test
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy
	$(BIN)/mypy --strict integrations/langchain/langchain_semantic_cache
	MYPYPATH=integrations/llamaindex $(BIN)/mypy --strict --namespace-packages --explicit-package-bases \
	  integrations/llamaindex/llama_index/llms/semantic_cache

bench: install-test
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/core.py

# The other benchmarks (minutes each): quality.py, embedding.py, redis_backend.py, hnsw.py, peers.py
# (peers needs `pip install -e '.[bench]'` and `pip install --no-deps langchain-redis==0.2.6`).

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
