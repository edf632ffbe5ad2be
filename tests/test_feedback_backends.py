"""Negative feedback works the same on every backend: the entry's own threshold is stored with it."""

from __future__ import annotations

from semantic_llm_cache import SemanticCache
from semantic_llm_cache.storage import StorageBackend
from tests.fakes import BagOfWordsEmbedder

STORED = "how do i renew my passport online in the city office today please"
FARTHER = "how do i renew my passport online in the city office"  # less similar to STORED
CLOSER = "how do i renew my passport online in the city office today"  # more similar to STORED


async def test_wrong_feedback_stops_the_neighbourhood_on_every_backend(backend: StorageBackend) -> None:
    embedder = BagOfWordsEmbedder()
    cache = SemanticCache(backend=backend, embedder=embedder, threshold=0.7, on_error="raise")
    await cache.store(STORED, "answer")
    farther = await cache.lookup(FARTHER)
    closer = await cache.lookup(CLOSER)
    assert farther is not None and closer is not None and farther.kind == closer.kind == "semantic"
    assert farther.similarity < closer.similarity

    await cache.feedback(farther, correct=False)

    assert await cache.lookup(FARTHER) is None  # that query, and anything as far or farther, stops hitting
    still = await cache.lookup(CLOSER)
    assert still is not None and still.response == "answer"  # a closer query still hits
    exact = await cache.lookup(STORED)
    assert exact is not None and exact.kind == "exact"
    assert cache.stats["feedback_refusals"] >= 1
