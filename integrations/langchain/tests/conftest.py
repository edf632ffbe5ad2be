"""Fixtures for the LangChain integration: the semantic BaseCache over the shared core `cache` settings, run
against every backend below, and a factory of counting fake chat models.

Only fixtures live here; helpers live in `langchain_fakes`, which test modules import (never `conftest`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_core.globals import set_llm_cache
from langchain_fakes import CountingChatModel
from langchain_semantic_cache import SemanticCache

from semantic_llm_cache import SemanticCache as CoreSemanticCache


@pytest.fixture
def cache(cache_on_each_backend: CoreSemanticCache) -> CoreSemanticCache:
    """Overrides the shared `cache`: the same suite over memory and real Redis servers (tests/plugins/core.py)."""
    return cache_on_each_backend


@pytest.fixture
def lc_cache(cache: CoreSemanticCache) -> SemanticCache:
    """The LangChain cache over the shared core `cache` fixture (bag-of-words, threshold 0.8, on_error=raise)."""
    return SemanticCache(cache=cache)


@pytest.fixture
def global_cache(lc_cache: SemanticCache) -> Iterator[SemanticCache]:
    """`lc_cache` installed with set_llm_cache for the test, removed afterwards."""
    set_llm_cache(lc_cache)
    try:
        yield lc_cache
    finally:
        set_llm_cache(None)


@pytest.fixture
def chat_model() -> Callable[..., CountingChatModel]:
    """Factory: chat_model("answer 1", "answer 2", cache=...)."""

    def make(*responses: str, **fields: Any) -> CountingChatModel:
        return CountingChatModel(responses=list(responses), **fields)

    return make
