"""Fixtures for the LangChain integration: the semantic BaseCache over the shared core `cache` settings, run
against every backend below, and a factory of counting fake chat models.

Only fixtures live here; helpers live in `langchain_fakes`, which test modules import (never `conftest`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from langchain_core.globals import set_llm_cache
from langchain_fakes import CountingChatModel
from langchain_semantic_cache import SemanticCache

from semantic_llm_cache import SemanticCache as CoreSemanticCache
from tests.fakes import BagOfWordsEmbedder
from tests.plugins.backends import BACKEND_FACTORIES

# The same suite against the in-memory backend and real Redis servers (client-side and server-side search).
BACKENDS = [
    pytest.param(name, marks=[pytest.mark.redis] if name.startswith("redis") else [], id=name)
    for name in ("memory", "redis-plain", "redis-search")
    if name in BACKEND_FACTORIES
]


@pytest.fixture(params=BACKENDS)
async def cache(request: pytest.FixtureRequest, embedder: BagOfWordsEmbedder) -> AsyncIterator[CoreSemanticCache]:
    """Overrides the shared `cache` (same options: threshold 0.8, on_error='raise') over each backend."""
    async with (
        BACKEND_FACTORIES[request.param](request) as backend,
        CoreSemanticCache(backend=backend, embedder=embedder, threshold=0.8, on_error="raise") as instance,
    ):
        yield instance


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
