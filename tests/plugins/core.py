"""Shared fixtures for every test folder (loaded by the root conftest.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest

from semantic_llm_cache import SemanticCache
from semantic_llm_cache.storage import StorageBackend
from tests.fakes import BagOfWordsEmbedder
from tests.plugins.backends import BACKEND_FACTORIES


@pytest.fixture(params=sorted(BACKEND_FACTORIES))
async def backend(request: Any) -> AsyncIterator[StorageBackend]:
    """A fresh, empty backend of each registered kind (the contract suite runs once per kind)."""
    async with BACKEND_FACTORIES[request.param](request) as instance:
        yield instance


@pytest.fixture
def embedder() -> BagOfWordsEmbedder:
    return BagOfWordsEmbedder()


@pytest.fixture
async def cache(embedder: BagOfWordsEmbedder) -> AsyncIterator[SemanticCache]:
    """An in-memory cache over the fake embedder, threshold 0.8, on_error='raise' so failures show."""
    async with SemanticCache(embedder=embedder, threshold=0.8, on_error="raise") as instance:
        yield instance


# The in-memory backend and real Redis (client-side index and server-side search): what the integrations'
# suites run over.
ENGINE_BACKENDS = [
    pytest.param(name, marks=[pytest.mark.redis] if name.startswith("redis") else [], id=name)
    for name in ("memory", "redis-plain", "redis-search")
    if name in BACKEND_FACTORIES
]


@pytest.fixture(params=ENGINE_BACKENDS)
async def cache_on_each_backend(request: Any, embedder: BagOfWordsEmbedder) -> AsyncIterator[SemanticCache]:
    """The `cache` fixture's options (fake embedder, threshold 0.8, on_error='raise') over each backend above."""
    async with (
        BACKEND_FACTORIES[request.param](request) as backend,
        SemanticCache(backend=backend, embedder=embedder, threshold=0.8, on_error="raise") as instance,
    ):
        yield instance
