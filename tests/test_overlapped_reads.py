"""A lookup on a backend whose reads are round trips (`remote_reads`) overlaps its exact read with the embedding and
the semantic search (CacheConfig.overlap_reads). Ordering is asserted through events, never wall-clock time."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from semantic_llm_cache import CacheConfig, SemanticCache
from semantic_llm_cache.backends.memory import MemoryBackend
from semantic_llm_cache.config import CacheEntry, Vector
from semantic_llm_cache.embeddings.base import Matrix
from semantic_llm_cache.storage import Match
from tests.fakes import BagOfWordsEmbedder
from tests.plugins.redis_servers import RedisServer, fresh_backend


class RemoteLike(MemoryBackend):
    """A memory backend that declares remote reads and whose `get` and search wait for the test's gates."""

    remote_reads = True

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events
        self.get_gate = asyncio.Event()
        self.get_gate.set()
        self.find_gate = asyncio.Event()
        self.find_gate.set()

    async def get(self, key: str) -> CacheEntry | None:
        self.events.append("get sent")
        await asyncio.sleep(0)  # a round trip: the lookup's other work goes on meanwhile
        await self.get_gate.wait()
        self.events.append("get answered")
        return await super().get(key)

    async def _find_nearest(
        self, query: Vector, threshold: float, k: int, namespace: str | None, partition: str | None
    ) -> list[Match]:
        self.events.append("search sent")
        await self.find_gate.wait()
        self.events.append("search answered")
        return await super()._find_nearest(query, threshold, k, namespace, partition)

    async def get_and_find_nearest(self, key: str, *args: Any, **options: Any) -> tuple[CacheEntry | None, list[Match]]:
        self.events.append("read and search in one call")
        return await super().get_and_find_nearest(key, *args, **options)


class RecordingEmbedder(BagOfWordsEmbedder):
    """Records when it is called and when it answers; can be held at a gate, and remembers a cancellation."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events
        self.gate = asyncio.Event()
        self.gate.set()
        self.cancelled = 0
        self.waits = True

    async def embed(self, texts: Sequence[str]) -> Matrix:
        self.events.append("embed called")
        try:
            if self.waits:
                await asyncio.sleep(0)  # a model takes its time: the lookup's other work goes on meanwhile
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.events.append("embedded")
        return await super().embed(texts)


async def make(**config: Any) -> tuple[SemanticCache, RemoteLike, RecordingEmbedder, list[str]]:
    events: list[str] = []
    backend = RemoteLike(events)
    embedder = RecordingEmbedder(events)
    cache = SemanticCache(
        backend=backend,
        embedder=embedder,
        config=CacheConfig(threshold=0.8, answer_guard=False, **config),
        never_cache=False,
    )
    await cache.store("what is the capital of france", "paris")
    cache._recent_vectors.clear()  # each lookup below embeds its text
    events.clear()
    embedder.calls = 0
    return cache, backend, embedder, events


async def reach(events: list[str], name: str) -> None:
    """Let the loop run until `name` has happened."""
    for _ in range(1000):
        if name in events:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{name!r} never happened: {events}")


def unretrieved_errors(loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    """Start recording the loop's reports of tasks and futures: 'Task exception was never retrieved', 'Task was
    destroyed but it is pending' (other tests' leftovers the collector finds, e.g. unclosed clients, are not)."""
    reports: list[dict[str, Any]] = []

    def record(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "future" in context or "task" in context:
            reports.append(context)

    loop.set_exception_handler(record)
    return reports


async def test_a_semantic_lookup_embeds_and_searches_while_the_exact_read_is_in_flight() -> None:
    cache, backend, _, events = await make()
    backend.get_gate.clear()
    lookup = asyncio.ensure_future(cache.lookup("what is the capital of france please"))
    await reach(events, "search answered")
    assert not lookup.done()  # the exact read still holds it
    backend.get_gate.set()
    hit = await lookup
    assert hit is not None and hit.kind == "semantic" and hit.response == "paris"
    assert events == ["embed called", "get sent", "embedded", "search sent", "search answered", "get answered"]
    assert cache.stats.snapshot()["semantic_hits"] == 1


async def test_a_vector_ready_at_once_goes_with_the_exact_read_in_one_backend_call() -> None:
    cache, _, embedder, events = await make()
    embedder.waits = False  # an embedder that answers without waiting (a cache of vectors, a table)
    hit = await cache.lookup("what is the capital of france please")
    assert hit is not None and hit.kind == "semantic"
    exact = await cache.lookup("what is the capital of france")
    assert exact is not None and exact.kind == "exact"
    assert events.count("read and search in one call") == 2
    assert events[:2] == ["embed called", "embedded"]  # the vector first, then the one call
    stats = cache.stats.snapshot()
    assert (stats["exact_hits"], stats["semantic_hits"]) == (1, 1)


async def test_an_exact_hit_wins_over_the_search_and_is_counted_as_exact() -> None:
    cache, backend, embedder, events = await make()
    backend.get_gate.clear()
    lookup = asyncio.ensure_future(cache.lookup("what is the capital of france"))
    await reach(events, "search answered")  # the search found the same entry, at similarity ~1
    backend.get_gate.set()
    hit = await lookup
    assert hit is not None and hit.kind == "exact" and hit.similarity == 1.0
    stats = cache.stats.snapshot()
    assert (stats["exact_hits"], stats["semantic_hits"]) == (1, 0)
    assert embedder.calls == 1


async def test_an_exact_hit_does_not_wait_for_the_embedding_and_cancels_it_cleanly() -> None:
    reports = unretrieved_errors(asyncio.get_running_loop())
    cache, _, embedder, events = await make()
    embedder.gate.clear()  # the model never answers
    hit = await cache.lookup("what is the capital of france")
    assert hit is not None and hit.kind == "exact"
    await asyncio.sleep(0)  # the cancellation is delivered
    assert embedder.cancelled == 1
    assert "search sent" not in events
    gc.collect()
    await asyncio.sleep(0)
    assert reports == []
    assert cache.stats.snapshot()["errors"] == 0
    assert cache.circuit_states() == {"backend": "closed", "embedder": "closed"}


async def test_an_exact_hit_after_the_search_was_sent_awaits_it() -> None:
    reports = unretrieved_errors(asyncio.get_running_loop())
    cache, backend, _, events = await make()
    backend.get_gate.clear()
    backend.find_gate.clear()
    lookup = asyncio.ensure_future(cache.lookup("what is the capital of france"))
    await reach(events, "search sent")
    backend.get_gate.set()
    await reach(events, "get answered")
    for _ in range(5):
        await asyncio.sleep(0)
    assert not lookup.done()  # the search in flight is finished, not cut off
    backend.find_gate.set()
    hit = await lookup
    assert hit is not None and hit.kind == "exact"
    gc.collect()
    await asyncio.sleep(0)
    assert reports == []


async def test_a_failing_embedder_on_an_exact_hit_is_served_and_never_unretrieved() -> None:
    reports = unretrieved_errors(asyncio.get_running_loop())
    cache, _, embedder, _ = await make()

    async def broken(texts: Sequence[str]) -> Matrix:
        raise RuntimeError("model gone")

    embedder.embed = broken  # type: ignore[method-assign]
    hit = await cache.lookup("what is the capital of france")
    assert hit is not None and hit.kind == "exact"
    assert await cache.lookup("something else entirely") is None
    gc.collect()
    await asyncio.sleep(0)
    assert reports == []


async def test_a_cancelled_lookup_cancels_its_search() -> None:
    reports = unretrieved_errors(asyncio.get_running_loop())
    cache, backend, _, events = await make()
    backend.get_gate.clear()
    backend.find_gate.clear()
    lookup = asyncio.ensure_future(cache.lookup("what is the capital of france please"))
    await reach(events, "search sent")
    lookup.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lookup
    for _ in range(3):
        await asyncio.sleep(0)
    assert [task for task in asyncio.all_tasks() if task is not asyncio.current_task()] == []
    assert "search answered" not in events
    gc.collect()
    await asyncio.sleep(0)
    assert reports == []


async def test_overlap_off_and_local_backends_read_first_and_never_embed_an_exact_hit() -> None:
    cache, _, embedder, events = await make(overlap_reads=False)
    assert (await cache.lookup("what is the capital of france")) is not None
    assert embedder.calls == 0 and events == ["get sent", "get answered"]
    assert await cache.lookup("what is the capital of france please") is not None
    assert events[2:] == ["get sent", "get answered", "embed called", "embedded", "search sent", "search answered"]

    memory = SemanticCache(backend=MemoryBackend(), embedder=BagOfWordsEmbedder(), never_cache=False)
    await memory.store("a question", "an answer")
    memory.embedder.calls = 0  # type: ignore[attr-defined]
    assert await memory.lookup("a question") is not None
    assert memory.embedder.calls == 0  # type: ignore[attr-defined]


async def test_a_prompt_over_the_window_is_reported_only_when_the_exact_read_missed() -> None:
    cache, _, embedder, _ = await make()
    embedder.max_tokens = 3  # type: ignore[attr-defined]
    embedder.count_tokens = lambda text: len(text.split())  # type: ignore[attr-defined]
    await cache.store("a prompt of many more words", "stored by exact match only")
    assert (await cache.lookup("a prompt of many more words")) is not None  # exact: nothing to report
    assert cache.stats.snapshot()["too_long_for_semantic"] == 1  # the store's
    assert await cache.lookup("another prompt of many words") is None
    assert cache.stats.snapshot()["too_long_for_semantic"] == 2


async def test_overlapped_waits_are_charged_to_the_call_budget_once() -> None:
    # the exact read and the embedding each take 1.2 s of a 2 s budget, at the same time: charged one after the
    # other (2.4 s) the search would not be sent; charged once, it has 0.8 s left
    cache, backend, embedder, _ = await make(timeout=2.0)
    backend.get_gate.clear()
    embedder.gate.clear()
    loop = asyncio.get_running_loop()
    loop.call_later(1.2, backend.get_gate.set)
    loop.call_later(1.2, embedder.gate.set)
    hit = await cache.lookup("what is the capital of france please")
    assert hit is not None and hit.kind == "semantic"
    stats = cache.stats.snapshot()
    assert [stats.get(name, 0) for name in ("short_circuits", "timeouts", "errors")] == [0, 0, 0]


def test_overlap_reads_is_checked() -> None:
    with pytest.raises(Exception, match="overlap_reads"):
        CacheConfig(overlap_reads=1)  # type: ignore[arg-type]


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["search", "client"])
async def test_on_redis_a_semantic_lookup_overlaps_its_two_round_trips(
    mode: str, redis_search_server: RedisServer
) -> None:
    async with fresh_backend(redis_search_server.url, index=mode) as backend:
        assert backend.remote_reads
        embedder = BagOfWordsEmbedder()
        cache = SemanticCache(backend=backend, embedder=embedder, threshold=0.8, answer_guard=False,
                              never_cache=False)  # fmt: skip
        await cache.store("what is the capital of france", "paris")
        await cache.store("how tall is the eiffel tower", "330 m", metadata={"topic": "sizes"})
        exact = await cache.lookup("what is the capital of france")
        semantic = await cache.lookup("what is the capital of france please")
        where = await cache.lookup("how tall is the eiffel tower today", where={"topic": "sizes"})
        assert exact is not None and exact.kind == "exact"
        assert semantic is not None and semantic.kind == "semantic" and semantic.response == "paris"
        assert where is not None and where.response == "330 m"
        assert await cache.lookup("how tall is the eiffel tower today", where={"topic": "towns"}) is None
        assert await cache.lookup("an unrelated question about cooking") is None
        stats = cache.stats.snapshot()
        assert (stats["exact_hits"], stats["semantic_hits"], stats["errors"]) == (1, 2, 0)
        raw = aioredis.Redis.from_url(redis_search_server.url)
        gets = []
        plain_get = backend.get

        async def counted_get(key: str) -> CacheEntry | None:
            gets.append(key)
            return await plain_get(key)

        backend.get = counted_get  # type: ignore[method-assign]
        try:
            await raw.config_resetstat()
            await cache.lookup("what is the capital of france please")
            await backend._hits_written()
            calls = {name: value["calls"] for name, value in (await raw.info("commandstats")).items()}
        finally:
            await raw.aclose()
        assert gets == []  # the vector was ready at once: the exact read went in the search's pipeline
        if mode == "search":  # the exact read (entry and counters) and the FT.SEARCH, one pipeline
            assert (calls.get("cmdstat_hgetall"), calls.get("cmdstat_FT.SEARCH")) == (2, 1)
        else:  # the exact read, the changelog delta and the candidate, one pipeline
            assert (calls.get("cmdstat_hgetall"), calls.get("cmdstat_xrange")) == (3, 1)
