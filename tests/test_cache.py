"""The engine: exact and semantic hits, partitions, expiry, bad input, single-flight, fail-open, guard, feedback."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from semantic_llm_cache import (
    CacheBackendError,
    Computed,
    ConfigurationError,
    EmbeddingError,
    InvalidInputError,
    MemoryBackend,
    Scope,
    SemanticCache,
)
from semantic_llm_cache.config import CacheEntry
from semantic_llm_cache.scope import exact_key, normalize_prompt
from tests.fakes import BagOfWordsEmbedder, unit

STORED = "how do i reset my password"
NEAR = "how do i reset my password please"  # bag-of-words similarity ~0.91 to STORED
FAR = "how do i delete my account"  # shares most words, similarity ~0.65: a different question
DIMENSION = 64


def at_cosine(similarity: float, axis: int) -> np.ndarray:
    """A unit vector whose cosine with the first basis vector is `similarity` (the rest along `axis`)."""
    vector = np.zeros(DIMENSION, dtype=np.float32)
    vector[0] = similarity
    vector[axis] = math.sqrt(1.0 - similarity**2)
    return unit(vector)


class MappedEmbedder:
    """An Embedder whose listed texts get fixed vectors (others a bag-of-words vector), to set similarities."""

    def __init__(self, vectors: dict[str, np.ndarray], name: str = "test-mapped") -> None:
        self.vectors = {text: unit(vector) for text, vector in vectors.items()}
        self.fallback = BagOfWordsEmbedder(DIMENSION)
        self._name = name
        self.calls = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return DIMENSION

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return np.stack([self.vectors.get(text, self.fallback.vector(text)) for text in texts]).astype(np.float32)


class BrokenBackend(MemoryBackend):
    """Every storage call fails as a lost connection would."""

    async def get(self, key: str) -> CacheEntry | None:
        raise ConnectionError("connection refused")

    async def set(self, key: str, entry: CacheEntry) -> None:
        raise ConnectionError("connection refused")

    async def delete(self, key: str) -> bool:
        raise ConnectionError("connection refused")

    async def find_nearest(self, *args: Any, **kwargs: Any) -> list[Any]:
        raise ConnectionError("connection refused")

    async def record_hit(self, key: str) -> None:
        raise ConnectionError("connection refused")


class HangingBackend(MemoryBackend):
    """Storage calls that never answer in time."""

    async def get(self, key: str) -> CacheEntry | None:
        await asyncio.sleep(10)
        return None

    async def set(self, key: str, entry: CacheEntry) -> None:
        await asyncio.sleep(10)

    async def find_nearest(self, *args: Any, **kwargs: Any) -> list[Any]:
        await asyncio.sleep(10)
        return []


async def size_of(cache: SemanticCache) -> int:
    return int((await cache.backend.get_stats())["size"])


# -- exact hits -----------------------------------------------------------------------------------------


async def test_exact_hit_is_served_without_embedding(cache: SemanticCache, embedder: BagOfWordsEmbedder) -> None:
    await cache.store(STORED, {"answer": "Use the reset link.", "steps": [1, 2]})
    assert embedder.calls == 1
    hit = await cache.lookup(STORED)
    assert hit is not None
    assert hit.kind == "exact"
    assert hit.similarity == 1.0
    assert hit.response == {"answer": "Use the reset link.", "steps": [1, 2]}
    assert hit.prompt == STORED
    assert hit.age >= 0
    assert embedder.calls == 1  # the exact path hashes; it never embeds
    assert cache.stats["exact_hits"] == 1


async def test_whitespace_only_differences_are_exact_hits(cache: SemanticCache, embedder: BagOfWordsEmbedder) -> None:
    await cache.store("How do I reset my password?", "link")
    hit = await cache.lookup("  How  do I\treset\n my   password?\n")
    assert hit is not None and hit.kind == "exact" and hit.response == "link"
    assert embedder.calls == 1


async def test_case_differences_are_not_exact(cache: SemanticCache, embedder: BagOfWordsEmbedder) -> None:
    await cache.store("How do I reset my password?", "link")
    hit = await cache.lookup("how do i reset my password?")
    assert hit is not None
    assert hit.kind == "semantic"  # the fake ignores case, so it still matches, but not by hash
    assert embedder.calls == 2


async def test_store_returns_the_exact_key(cache: SemanticCache) -> None:
    key = await cache.store(f"  {STORED} ", "link")
    assert key == exact_key(cache.partition_for(None), normalize_prompt(STORED))


# -- semantic hits, misses, threshold ----------------------------------------------------------------------


async def test_semantic_hit_for_a_near_prompt(cache: SemanticCache, embedder: BagOfWordsEmbedder) -> None:
    await cache.store(STORED, "Use the reset link.")
    expected = float(embedder.vector(STORED) @ embedder.vector(NEAR))
    hit = await cache.lookup(NEAR)
    assert hit is not None
    assert hit.kind == "semantic"
    assert hit.similarity >= cache.config.threshold
    assert hit.similarity == pytest.approx(expected, abs=1e-5)
    assert hit.prompt == STORED
    assert hit.response == "Use the reset link."
    assert hit.age >= 0
    assert cache.stats["semantic_hits"] == 1


async def test_miss_below_threshold(cache: SemanticCache, embedder: BagOfWordsEmbedder) -> None:
    await cache.store(STORED, "Use the reset link.")
    assert float(embedder.vector(STORED) @ embedder.vector(FAR)) < cache.config.threshold
    assert await cache.lookup(FAR) is None
    assert cache.stats["misses"] == 1
    assert cache.stats["semantic_hits"] == 0


async def test_threshold_is_inclusive(embedder: BagOfWordsEmbedder) -> None:
    backend = MemoryBackend()
    probe = SemanticCache(backend=backend, embedder=embedder, threshold=0.0, on_error="raise")
    await probe.store(STORED, "link")
    measured = await probe.lookup(NEAR)
    assert measured is not None
    similarity = measured.similarity

    at_threshold = SemanticCache(backend=backend, embedder=embedder, threshold=similarity, on_error="raise")
    hit = await at_threshold.lookup(NEAR)
    assert hit is not None and hit.similarity == similarity

    next_float32 = float(np.nextafter(np.float32(similarity), np.float32(2.0)))
    just_above = SemanticCache(backend=backend, embedder=embedder, threshold=next_float32, on_error="raise")
    assert await just_above.lookup(NEAR) is None


async def test_a_hit_never_reports_a_similarity_below_the_threshold(embedder: BagOfWordsEmbedder) -> None:
    backend = MemoryBackend()
    probe = SemanticCache(backend=backend, embedder=embedder, threshold=0.0, on_error="raise")
    await probe.store(STORED, "link")
    measured = await probe.lookup(NEAR)
    assert measured is not None
    threshold = math.nextafter(measured.similarity, 2.0)
    strict = SemanticCache(backend=backend, embedder=embedder, threshold=threshold, on_error="raise")
    hit = await strict.lookup(NEAR)
    assert hit is None or hit.similarity >= threshold


# -- partitions --------------------------------------------------------------------------------------------

PARTITION_PAIRS = {
    "namespace": (Scope(namespace="tenant-a"), Scope(namespace="tenant-b")),
    "model": (Scope(model="openai:gpt-4o-mini"), Scope(model="openai:gpt-4o")),
    "params": (Scope(params={"temperature": 0}), Scope(params={"temperature": 1})),
    "context": (Scope(context=[{"role": "system", "content": "Be brief."}]), Scope(context=None)),
}


@pytest.mark.parametrize("pair", PARTITION_PAIRS.values(), ids=PARTITION_PAIRS.keys())
async def test_a_partition_never_sees_another_partitions_entry(cache: SemanticCache, pair: tuple[Scope, Scope]) -> None:
    mine, other = pair
    await cache.store(STORED, "mine", scope=mine)
    assert await cache.lookup(STORED, scope=other) is None
    assert await cache.lookup(NEAR, scope=other) is None
    exact = await cache.lookup(STORED, scope=mine)
    near = await cache.lookup(NEAR, scope=mine)
    assert exact is not None and exact.response == "mine"
    assert near is not None and near.response == "mine"


async def test_cache_namespaces_and_embedders_partition_a_shared_backend() -> None:
    backend = MemoryBackend()
    tenant_a = SemanticCache(backend=backend, embedder=BagOfWordsEmbedder(), namespace="a", threshold=0.8)
    tenant_b = SemanticCache(backend=backend, embedder=BagOfWordsEmbedder(), namespace="b", threshold=0.8)
    other_model = SemanticCache(
        backend=backend, embedder=BagOfWordsEmbedder(name="another-model"), namespace="a", threshold=0.8
    )
    await tenant_a.store(STORED, "a's answer")
    assert await tenant_b.lookup(STORED) is None
    assert await tenant_b.lookup(NEAR) is None
    assert await other_model.lookup(STORED) is None  # same words, vectors of another embedder: never compared
    assert await other_model.lookup(NEAR) is None
    hit = await tenant_a.lookup(NEAR)
    assert hit is not None and hit.response == "a's answer"


async def test_a_closer_entry_elsewhere_does_not_hide_a_hit_here(embedder: BagOfWordsEmbedder) -> None:
    mine, other = Scope(namespace="mine"), Scope(namespace="other")
    async with SemanticCache(embedder=embedder, threshold=0.8, candidates=1, on_error="raise") as cache:
        await cache.store(STORED, "mine", scope=mine)
        await cache.store(NEAR, "other", scope=other)  # identical to the query, but in another partition
        hit = await cache.lookup(NEAR, scope=mine)
        assert hit is not None
        assert hit.response == "mine" and hit.kind == "semantic" and hit.prompt == STORED


# -- expiry ------------------------------------------------------------------------------------------------


async def test_expired_entries_are_never_returned(embedder: BagOfWordsEmbedder) -> None:
    short_default = SemanticCache(embedder=embedder, threshold=0.8, ttl=0.5, on_error="raise")
    long_default = SemanticCache(embedder=embedder, threshold=0.8, ttl=60, on_error="raise")
    await short_default.store(STORED, "expires")
    await short_default.store("what is the capital of france", "outlives the default", ttl=60)
    await long_default.store(STORED, "expires by its own ttl", ttl=0.5)
    assert (await short_default.lookup(STORED)) is not None
    assert (await long_default.lookup(NEAR)) is not None

    await asyncio.sleep(0.7)
    assert await short_default.lookup(STORED) is None  # exact path
    assert await short_default.lookup(NEAR) is None  # semantic path
    assert await long_default.lookup(STORED) is None
    assert await long_default.lookup(NEAR) is None
    survivor = await short_default.lookup("what is the capital of france")
    assert survivor is not None and survivor.response == "outlives the default"
    assert await size_of(short_default) == 1
    assert await size_of(long_default) == 0


# -- bad input ---------------------------------------------------------------------------------------------

BAD_PROMPTS = ["", "   ", "\n\t ", None, 42, b"how do i reset my password", ["how"]]


@pytest.mark.parametrize("prompt", BAD_PROMPTS, ids=repr)
async def test_bad_prompt_is_rejected_and_nothing_changes(
    cache: SemanticCache, embedder: BagOfWordsEmbedder, prompt: Any
) -> None:
    await cache.store(STORED, "kept")
    calls = embedder.calls

    async def compute() -> str:
        raise AssertionError("compute must not run for a rejected prompt")

    with pytest.raises(InvalidInputError):
        await cache.lookup(prompt)
    with pytest.raises(InvalidInputError):
        await cache.store(prompt, "answer")
    with pytest.raises(InvalidInputError):
        await cache.get_or_compute(prompt, compute)
    with pytest.raises(InvalidInputError):
        await cache.delete(prompt)
    assert embedder.calls == calls
    assert await size_of(cache) == 1
    assert cache.stats["stores"] == 1


class _Opaque:
    pass


BAD_RESPONSES = {
    "object": _Opaque(),
    "set": {1, 2},
    "tuple": (1, 2),
    "nan": float("nan"),
    "inf": float("inf"),
    "bytes": b"answer",
    "int keys": {1: "one"},
    "nested int keys": {"outer": {2: "two"}},
    "nested object": ["fine", _Opaque()],
    "nested nan": {"score": [1.0, float("nan")]},
}


@pytest.mark.parametrize("response", BAD_RESPONSES.values(), ids=BAD_RESPONSES.keys())
async def test_response_that_is_not_json_is_rejected_before_writing(
    cache: SemanticCache, embedder: BagOfWordsEmbedder, response: Any
) -> None:
    await cache.store(STORED, "kept")
    with pytest.raises(InvalidInputError):
        await cache.store(STORED, response)
    with pytest.raises(InvalidInputError):
        await cache.store("a brand new question", response)
    assert await size_of(cache) == 1
    hit = await cache.lookup(STORED)
    assert hit is not None and hit.response == "kept"
    assert embedder.calls == 1  # rejected before embedding


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": -5}, "ttl"),
        ({"ttl": float("inf")}, "ttl"),
        ({"metadata": ["not", "a", "dict"]}, "metadata"),
        ({"metadata": {"when": object()}}, "metadata"),
        ({"tokens": -1}, "tokens"),
        ({"compute_seconds": -0.5}, "compute_seconds"),
    ],
)
async def test_bad_store_options_are_rejected(cache: SemanticCache, arguments: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError, match=field):
        await cache.store(STORED, "answer", **arguments)
    assert await size_of(cache) == 0


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": -0.1}, "threshold"),
        ({"ttl": 0}, "ttl"),
        ({"max_entries": 0}, "max_entries"),
        ({"on_error": "x"}, "on_error"),
        ({"timeout": 0}, "timeout"),
        ({"candidates": 0}, "candidates"),
    ],
)
def test_bad_configuration_is_rejected(embedder: BagOfWordsEmbedder, arguments: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        SemanticCache(embedder=embedder, **arguments)


# -- embedder failures -------------------------------------------------------------------------------------

BAD_VECTORS = {
    "nan": lambda texts: np.full((len(texts), 8), np.nan),
    "inf": lambda texts: np.full((len(texts), 8), np.inf),
    "zero": lambda texts: np.zeros((len(texts), 8)),
    "1-D": lambda texts: np.ones(8),
    "too many rows": lambda texts: np.ones((len(texts) + 1, 8)),
    "ragged": lambda texts: [[1.0, 2.0], [3.0]],
}


@pytest.mark.parametrize("make_output", BAD_VECTORS.values(), ids=BAD_VECTORS.keys())
async def test_bad_embedder_output_raises_embedding_error(make_output: Any) -> None:
    cache = SemanticCache(embedder=make_output, on_error="raise")
    with pytest.raises(EmbeddingError):
        await cache.lookup(STORED)
    with pytest.raises(EmbeddingError):
        await cache.store(STORED, "answer")
    assert await size_of(cache) == 0


@pytest.mark.parametrize("make_output", BAD_VECTORS.values(), ids=BAD_VECTORS.keys())
async def test_bad_embedder_output_is_a_counted_miss_when_logging(make_output: Any) -> None:
    cache = SemanticCache(embedder=make_output, on_error="log")
    assert await cache.lookup(STORED) is None
    stats = await cache.get_stats()
    assert stats["errors"] == 1 and stats["embedder_errors"] == 1 and stats["misses"] == 1
    assert await size_of(cache) == 0


async def test_wrong_dimension_from_the_embedder_raises_embedding_error() -> None:
    dimensions = iter([8, 4])

    def shrinking(texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), next(dimensions)))

    cache = SemanticCache(embedder=shrinking, on_error="raise")
    await cache.store("first question", "first")
    with pytest.raises(EmbeddingError, match="dimension"):
        await cache.lookup("second question")
    assert await size_of(cache) == 1


class ProtocolEmbedder:
    """An Embedder-protocol object (not a callable) returning whatever it is told to."""

    name = "test-protocol"
    dimension = 8

    def __init__(self, make_output: Any) -> None:
        self.make_output = make_output

    async def embed(self, texts: Sequence[str]) -> Any:
        return self.make_output(texts)


PROTOCOL_BAD_VECTORS = {
    **BAD_VECTORS,
    "wrong dimension": lambda texts: np.ones((len(texts), 4)),
}


@pytest.mark.parametrize("make_output", PROTOCOL_BAD_VECTORS.values(), ids=PROTOCOL_BAD_VECTORS.keys())
@pytest.mark.parametrize("on_error", ["raise", "log"])
async def test_bad_output_of_an_embedder_object_is_an_embedding_error(make_output: Any, on_error: str) -> None:
    cache = SemanticCache(embedder=ProtocolEmbedder(make_output), on_error=on_error)  # type: ignore[arg-type]
    if on_error == "raise":
        with pytest.raises(EmbeddingError):
            await cache.lookup(STORED)
        with pytest.raises(EmbeddingError):
            await cache.store(STORED, "answer")
    else:
        assert await cache.lookup(STORED) is None
        assert cache.stats["embedder_errors"] == 1
    assert await size_of(cache) == 0


async def test_exact_hits_survive_a_broken_embedder() -> None:
    state = {"broken": False}
    words = BagOfWordsEmbedder(8)

    def flaky(texts: list[str]) -> np.ndarray:
        if state["broken"]:
            raise RuntimeError("embedding service down")
        return np.stack([words.vector(text) for text in texts])

    cache = SemanticCache(embedder=flaky, threshold=0.8, on_error="log")
    await cache.store(STORED, "link")
    state["broken"] = True
    exact = await cache.lookup(STORED)
    assert exact is not None and exact.kind == "exact"
    assert await cache.lookup(NEAR) is None
    assert cache.stats["embedder_errors"] == 1


# -- get_or_compute ----------------------------------------------------------------------------------------


async def test_one_hundred_concurrent_calls_compute_once(cache: SemanticCache) -> None:
    calls = 0

    async def compute() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "the answer"

    answers = await asyncio.gather(*(cache.get_or_compute(STORED, compute) for _ in range(100)))
    assert calls == 1
    assert answers == ["the answer"] * 100
    assert cache.stats["stores"] == 1
    assert cache.stats["shared_hits"] == 99  # joined callers are hits, not misses (#11)
    assert cache.stats["misses"] == 1 and cache.stats.snapshot()["hit_rate"] == 0.99


async def test_concurrent_calls_compute_once_when_embedding_yields() -> None:
    words = BagOfWordsEmbedder()
    delays = iter(np.random.default_rng(7).uniform(0.0, 0.02, size=1000))

    async def slow_embedding(texts: list[str]) -> np.ndarray:
        await asyncio.sleep(next(delays))
        return np.stack([words.vector(text) for text in texts])

    cache = SemanticCache(embedder=slow_embedding, threshold=0.8, on_error="raise")
    calls = 0

    async def compute() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return "the answer"

    answers = await asyncio.gather(*(cache.get_or_compute(STORED, compute) for _ in range(50)))
    assert calls == 1
    assert set(answers) == {"the answer"}


async def test_failing_compute_reaches_every_waiter_and_is_not_stored(cache: SemanticCache) -> None:
    calls = 0
    failure = RuntimeError("model overloaded")

    async def failing() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        raise failure

    outcomes = await asyncio.gather(*(cache.get_or_compute(STORED, failing) for _ in range(20)), return_exceptions=True)
    assert calls == 1
    assert all(outcome is failure for outcome in outcomes)
    assert await size_of(cache) == 0
    assert cache.stats["stores"] == 0

    async def working() -> str:
        nonlocal calls
        calls += 1
        return "recovered"

    assert await cache.get_or_compute(STORED, working) == "recovered"
    assert calls == 2
    hit = await cache.lookup(STORED)
    assert hit is not None and hit.response == "recovered"


async def test_sync_compute_runs_off_the_event_loop(cache: SemanticCache) -> None:
    loop_thread = threading.get_ident()
    compute_threads: list[int] = []
    ticks = 0

    def blocking_compute() -> str:
        compute_threads.append(threading.get_ident())
        time.sleep(0.3)
        return "slow answer"

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        assert await cache.get_or_compute(STORED, blocking_compute) == "slow answer"
    finally:
        ticking.cancel()
    assert compute_threads and compute_threads[0] != loop_thread
    assert ticks >= 10  # the loop kept running while compute slept


async def test_computed_tokens_are_credited_on_later_hits(cache: SemanticCache) -> None:
    async def compute() -> Computed:
        await asyncio.sleep(0.05)
        return Computed("answer", tokens=5)

    assert await cache.get_or_compute(STORED, compute) == "answer"
    assert (await cache.get_stats())["saved_tokens"] == 0
    assert await cache.lookup(STORED) is not None
    assert await cache.lookup(NEAR) is not None
    stats = await cache.get_stats()
    assert stats["saved_tokens"] == 10
    assert stats["saved_seconds"] >= 2 * 0.05


async def test_computed_store_false_is_returned_but_not_stored(cache: SemanticCache) -> None:
    calls = 0

    async def compute() -> Computed:
        nonlocal calls
        calls += 1
        return Computed({"text": "private"}, store=False)

    assert await cache.get_or_compute(STORED, compute) == {"text": "private"}
    assert await cache.get_or_compute(STORED, compute) == {"text": "private"}
    assert calls == 2
    assert await size_of(cache) == 0


async def test_non_json_answer_is_returned_uncached_when_logging(embedder: BagOfWordsEmbedder) -> None:
    answer = _Opaque()
    cache = SemanticCache(embedder=embedder, threshold=0.8, on_error="log")
    assert await cache.get_or_compute(STORED, lambda: answer) is answer
    assert await size_of(cache) == 0
    assert cache.stats["unstorable_answers"] == 1


async def test_non_json_answer_raises_when_raising(cache: SemanticCache) -> None:
    async def compute() -> set[int]:
        return {1, 2}

    with pytest.raises(InvalidInputError):
        await cache.get_or_compute(STORED, compute)
    assert await size_of(cache) == 0


async def test_resolve_reports_how_each_answer_was_served(cache: SemanticCache) -> None:
    calls = 0

    async def compute() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "answer"

    first, second, third = await asyncio.gather(*(cache.resolve(STORED, compute) for _ in range(3)))
    assert calls == 1
    assert first.computed and first.hit is None and not first.shared
    for waiter in (second, third):
        assert waiter.shared and not waiter.computed and waiter.hit is None and waiter.response == "answer"

    exact = await cache.resolve(STORED, compute)
    assert not exact.computed and exact.hit is not None and exact.hit.kind == "exact"
    semantic = await cache.resolve(NEAR, compute)
    assert not semantic.computed and semantic.hit is not None and semantic.hit.kind == "semantic"
    assert semantic.response == "answer"
    assert calls == 1


def test_resolve_sync_from_eight_threads_computes_once() -> None:
    cache = SemanticCache(embedder=BagOfWordsEmbedder(), threshold=0.8, on_error="raise")
    calls = 0
    lock = threading.Lock()
    barrier = threading.Barrier(8)
    resolutions: list[Any] = []

    def compute() -> str:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.2)
        return "answer"

    def worker() -> None:
        barrier.wait()
        resolution = cache.resolve_sync(STORED, compute)
        with lock:
            resolutions.append(resolution)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(resolutions) == 8
    assert calls == 1
    assert {resolution.response for resolution in resolutions} == {"answer"}
    assert sum(resolution.computed for resolution in resolutions) == 1
    later = cache.resolve_sync(NEAR, compute)
    assert later.hit is not None and later.hit.kind == "semantic" and calls == 1


def test_resolve_sync_failure_is_not_stored() -> None:
    cache = SemanticCache(embedder=BagOfWordsEmbedder(), threshold=0.8, on_error="raise")

    def failing() -> str:
        raise ValueError("no answer")

    with pytest.raises(ValueError, match="no answer"):
        cache.resolve_sync(STORED, failing)
    assert cache.resolve_sync(STORED, lambda: "second try").computed


# -- fail-open ---------------------------------------------------------------------------------------------


async def test_a_failing_backend_is_a_counted_miss(embedder: BagOfWordsEmbedder) -> None:
    cache = SemanticCache(backend=BrokenBackend(), embedder=embedder, threshold=0.8, on_error="log")
    assert await cache.lookup(STORED) is None
    assert await cache.store(STORED, "answer") is None
    assert await cache.get_or_compute(STORED, lambda: "computed anyway") == "computed anyway"
    assert await cache.delete(STORED) is False
    stats = await cache.get_stats()
    assert stats["errors"] >= 4
    assert stats["backend_errors"] == stats["errors"]
    assert stats["stores"] == 0


async def test_a_failing_backend_raises_when_asked_to(embedder: BagOfWordsEmbedder) -> None:
    cache = SemanticCache(backend=BrokenBackend(), embedder=embedder, on_error="raise")
    with pytest.raises(CacheBackendError, match="ConnectionError"):
        await cache.lookup(STORED)
    with pytest.raises(CacheBackendError):
        await cache.store(STORED, "answer")
    assert cache.stats["backend_errors"] == 2


async def test_a_hanging_backend_times_out_as_a_miss(embedder: BagOfWordsEmbedder) -> None:
    cache = SemanticCache(backend=HangingBackend(), embedder=embedder, timeout=0.2, on_error="log")
    started = time.perf_counter()
    assert await cache.lookup(STORED) is None
    assert await cache.store(STORED, "answer") is None
    assert time.perf_counter() - started < 1.5
    stats = await cache.get_stats()
    assert stats["timeouts"] >= 2
    assert stats["misses"] == 1
    assert stats["stores"] == 0


# -- the answer guard --------------------------------------------------------------------------------------

LOOK_ALIKES = {
    "numbers": ("Is SGPA 6.86 good?", "Is SGPA 6.71 good?"),
    "names": ("What is the population of Mono County?", "What is the population of Merced County?"),
    "negation": ("Why can my app use the camera?", "Why can't my app use the camera?"),
}


@pytest.mark.parametrize("pair", LOOK_ALIKES.values(), ids=LOOK_ALIKES.keys())
async def test_answer_guard_refuses_look_alikes(pair: tuple[str, str]) -> None:
    stored, query = pair
    same = unit(np.ones(DIMENSION))
    guarded = SemanticCache(embedder=MappedEmbedder({stored: same, query: same}), threshold=0.8, on_error="raise")
    await guarded.store(stored, "answer for the stored prompt")
    assert await guarded.lookup(query) is None
    assert guarded.stats["guard_refusals"] == 1
    assert guarded.stats["misses"] == 1

    unguarded = SemanticCache(
        embedder=MappedEmbedder({stored: same, query: same}), threshold=0.8, answer_guard=False, on_error="raise"
    )
    await unguarded.store(stored, "answer for the stored prompt")
    hit = await unguarded.lookup(query)
    assert hit is not None and hit.kind == "semantic" and hit.similarity == pytest.approx(1.0, abs=1e-6)
    assert unguarded.stats["guard_refusals"] == 0


async def test_answer_guard_serves_the_next_candidate() -> None:
    query = "Is SGPA 6.86 good?"
    refused = "Is SGPA 6.71 good?"
    allowed = "Is an SGPA of 6.86 good?"
    embedder = MappedEmbedder({query: at_cosine(1.0, 1), refused: at_cosine(0.99, 1), allowed: at_cosine(0.9, 2)})
    cache = SemanticCache(embedder=embedder, threshold=0.8, on_error="raise")
    await cache.store(refused, "6.71 answer")
    await cache.store(allowed, "6.86 answer")
    hit = await cache.lookup(query)
    assert hit is not None
    assert hit.prompt == allowed and hit.response == "6.86 answer"
    assert hit.similarity == pytest.approx(0.9, abs=1e-5)
    assert cache.stats["guard_refusals"] == 1


# -- feedback ----------------------------------------------------------------------------------------------


async def test_negative_feedback_on_a_semantic_hit_raises_that_entrys_bar() -> None:
    stored, nearer, wrong, farther = "reset my password", "reset the password", "reset a password", "reset passwords"
    embedder = MappedEmbedder(
        {stored: at_cosine(1.0, 1), nearer: at_cosine(0.95, 2), wrong: at_cosine(0.9, 3), farther: at_cosine(0.85, 4)}
    )
    cache = SemanticCache(embedder=embedder, threshold=0.8, on_error="raise")
    await cache.store(stored, "answer")
    hit = await cache.lookup(wrong)
    assert hit is not None and hit.kind == "semantic"
    await cache.feedback(hit, correct=False)
    assert await cache.lookup(wrong) is None
    assert await cache.lookup(farther) is None
    still = await cache.lookup(nearer)
    assert still is not None and still.response == "answer"
    exact = await cache.lookup(stored)
    assert exact is not None and exact.kind == "exact"
    assert cache.stats["feedback_wrong"] == 1
    assert cache.stats["feedback_refusals"] == 2


async def test_negative_feedback_stops_a_semantic_hit_at_similarity_one(
    cache: SemanticCache, embedder: BagOfWordsEmbedder
) -> None:
    await cache.store("How do I reset my password?", "answer")
    hit = await cache.lookup("how do i reset my password?")
    assert hit is not None and hit.kind == "semantic"
    await cache.feedback(hit, correct=False)
    assert await cache.lookup("how do i reset my password?") is None


async def test_negative_feedback_on_an_exact_hit_deletes_the_entry(cache: SemanticCache) -> None:
    await cache.store(STORED, "wrong answer")
    hit = await cache.lookup(STORED)
    assert hit is not None and hit.kind == "exact"
    await cache.feedback(hit, correct=False)
    assert await size_of(cache) == 0
    assert await cache.lookup(STORED) is None


async def test_positive_feedback_is_counted_and_recorded(cache: SemanticCache) -> None:
    await cache.store(STORED, "answer", metadata={"source": "test"})
    hit = await cache.lookup(NEAR)
    assert hit is not None
    await cache.feedback(hit, correct=True)
    await cache.feedback(hit, correct=True)
    entry = await cache.backend.get(hit.key)
    assert entry is not None
    assert entry.metadata["source"] == "test"
    assert entry.metadata["feedback"]["correct"] == 2
    assert entry.metadata["feedback"]["lowest_correct_similarity"] == pytest.approx(hit.similarity)
    assert cache.stats["feedback_correct"] == 2
    again = await cache.lookup(NEAR)
    assert again is not None and again.response == "answer"


# -- stats, delete, clear, warmup --------------------------------------------------------------------------


async def test_stats_report_counters_latency_savings_and_backend(cache: SemanticCache) -> None:
    await cache.store(STORED, "answer", compute_seconds=1.5, tokens=40)
    await cache.lookup(STORED)
    await cache.lookup(NEAR)
    await cache.lookup(FAR)
    stats = await cache.get_stats()
    assert stats["exact_hits"] == 1
    assert stats["semantic_hits"] == 1
    assert stats["misses"] == 1
    assert stats["stores"] == 1
    assert stats["errors"] == 0
    assert stats["guard_refusals"] == 0
    assert stats["lookups"] == 3
    assert stats["hit_rate"] == pytest.approx(2 / 3)
    assert 0 < stats["lookup_ms_p50"] <= stats["lookup_ms_p99"]
    assert stats["saved_seconds"] == pytest.approx(3.0)
    assert stats["saved_tokens"] == 80
    assert stats["threshold"] == 0.8
    assert stats["embedder"] == "test-bag-of-words"
    assert stats["backend"]["backend"] == "memory"
    assert stats["backend"]["size"] == 1


async def test_delete_and_clear(cache: SemanticCache) -> None:
    tenant_a, tenant_b = Scope(namespace="a"), Scope(namespace="b")
    await cache.store(STORED, "a1", scope=tenant_a)
    await cache.store("what is the capital of france", "a2", scope=tenant_a)
    await cache.store(STORED, "b1", scope=tenant_b)
    await cache.store(STORED, "default")
    assert await cache.delete(STORED, scope=tenant_a) is True
    assert await cache.delete(STORED, scope=tenant_a) is False
    assert await cache.lookup(STORED, scope=tenant_a) is None
    assert await cache.lookup(NEAR, scope=tenant_a) is None
    assert await size_of(cache) == 3

    await cache.clear("a")
    assert await size_of(cache) == 2
    b_hit = await cache.lookup(STORED, scope=tenant_b)
    assert b_hit is not None and b_hit.response == "b1"
    await cache.clear()
    assert await size_of(cache) == 0
    assert await cache.lookup(STORED) is None


async def test_warmup_calls_the_embedder(cache: SemanticCache, embedder: BagOfWordsEmbedder) -> None:
    await cache.warmup()
    assert embedder.calls == 1


async def test_config_object_and_overrides(embedder: BagOfWordsEmbedder) -> None:
    from semantic_llm_cache import CacheConfig

    cache = SemanticCache(embedder=embedder, config=CacheConfig(threshold=0.5, ttl=30), threshold=0.9)
    assert cache.config.threshold == 0.9
    assert cache.config.ttl == 30
    assert isinstance(cache.backend, MemoryBackend)
    assert cache.backend.max_entries == cache.config.max_entries


async def test_delete_key_deletes_the_entry_a_hit_names(cache: SemanticCache) -> None:
    tenant_a, tenant_b = Scope(namespace="a"), Scope(namespace="b")
    await cache.store(STORED, "a1", scope=tenant_a)
    await cache.store(STORED, "b1", scope=tenant_b)
    hit_a = await cache.lookup(NEAR, scope=tenant_a)
    hit_b = await cache.lookup(STORED, scope=tenant_b)
    assert hit_a is not None and hit_a.kind == "semantic" and hit_b is not None
    assert await cache.delete_key(hit_a.key, namespace="b") is False  # another tenant's key: refused
    assert await cache.delete_key(hit_a.key, namespace="a") is True
    assert await cache.delete_key(hit_a.key) is False  # already gone
    assert await cache.lookup(STORED, scope=tenant_a) is None
    assert await cache.delete_key(hit_b.key) is True
    assert await size_of(cache) == 0
    for bad in ("", None, 7):
        with pytest.raises(InvalidInputError, match="key"):
            await cache.delete_key(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="namespace"):
        await cache.delete_key("k", namespace="")
