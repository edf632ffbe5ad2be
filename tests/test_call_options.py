"""Per-call options (threshold, where, bypass, refresh, ttl) and the temperature policy, on every backend."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from semantic_llm_cache import Scope, SemanticCache
from semantic_llm_cache.errors import ConfigurationError, InvalidInputError
from semantic_llm_cache.storage import StorageBackend
from semantic_llm_cache.temperature import NeverAbove, ServeAlways, SkipByTemperature
from tests.fakes import BagOfWordsEmbedder

STORED = "how do i renew my passport online in the city office today please"
CLOSER = "how do i renew my passport online in the city office today"
FARTHER = "how do i renew my passport online in the city office"


def make_cache(backend: StorageBackend | None = None, **options: Any) -> SemanticCache:
    return SemanticCache(backend=backend, embedder=BagOfWordsEmbedder(), threshold=0.7, on_error="raise", **options)


class Counting:
    """A compute that answers with its call number."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return f"answer {self.calls}"


async def test_options_work_alike_on_every_backend(backend: StorageBackend) -> None:
    cache = make_cache(backend)
    await cache.store(STORED, "english", metadata={"lang": "en", "version": 2})
    closer, farther = await cache.lookup(CLOSER), await cache.lookup(FARTHER)
    assert closer is not None and farther is not None and farther.similarity < closer.similarity

    # a stricter threshold for one call refuses the farther paraphrase, a looser one is the cache's
    assert await cache.lookup(FARTHER, threshold=(farther.similarity + closer.similarity) / 2) is None
    assert await cache.lookup(CLOSER, threshold=(farther.similarity + closer.similarity) / 2) is not None
    assert await cache.lookup(FARTHER) is not None

    # where: exact and semantic hits alike must carry the fields
    for prompt in (STORED, CLOSER):
        assert await cache.lookup(prompt, where={"lang": "fr"}) is None
        assert await cache.lookup(prompt, where={"lang": "en", "version": 3}) is None
        hit = await cache.lookup(prompt, where={"lang": "en", "version": 2})
        assert hit is not None and hit.response == "english"
    assert await cache.lookup(STORED, where={"version": "2"}) is None  # the type counts, too

    # refresh: computed and stored over the old entry; the next plain call gets the new answer
    compute = Counting()
    assert await cache.get_or_compute(STORED, compute, refresh=True) == "answer 1"
    assert await cache.get_or_compute(STORED, compute) == "answer 1" and compute.calls == 1
    # bypass: computed, nothing read or written
    assert await cache.get_or_compute(STORED, compute, bypass=True) == "answer 2"
    assert await cache.get_or_compute(STORED, compute) == "answer 1"
    assert cache.stats["bypassed"] == 1 and cache.stats["refreshes"] == 1


async def test_where_tags_what_resolve_stores_and_never_widens_the_partition() -> None:
    cache = make_cache()
    tenant = Scope(namespace="a")
    compute = Counting()
    first = await cache.resolve(STORED, compute, tenant, where={"doc": "v1"})
    assert first.computed and first.key is not None
    again = await cache.resolve(CLOSER, compute, tenant, where={"doc": "v1"})
    assert again.hit is not None and again.response == "answer 1"
    assert again.hit.metadata["doc"] == "v1"
    other_version = await cache.resolve(CLOSER, compute, tenant, where={"doc": "v2"})
    assert other_version.computed and compute.calls == 2  # v1's answer does not serve v2
    assert await cache.lookup(CLOSER, Scope(namespace="b"), where={"doc": "v1"}) is None  # another tenant


async def test_a_filter_looks_past_closer_entries_that_do_not_match() -> None:
    cache = make_cache(candidates=2)
    await cache.store(STORED, "wanted", metadata={"kind": "wanted"})
    for index in range(6):  # closer to the query than STORED, but of another kind
        await cache.store(f"{CLOSER} {'x' * (index + 1)}", "other", metadata={"kind": "other"})
    hit = await cache.lookup(CLOSER, where={"kind": "wanted"})
    assert hit is not None and hit.response == "wanted"


async def test_a_filter_finds_the_match_behind_closer_entries_on_every_backend(backend: StorageBackend) -> None:
    cache = make_cache(backend, candidates=1)
    await cache.store(STORED, "wanted", metadata={"kind": "wanted", "n": 1.0})
    for index in range(6):  # closer to the query than STORED, but of another kind
        await cache.store(f"{CLOSER} {'x' * (index + 1)}", "other", metadata={"kind": "other"})
    for where in ({"kind": "wanted"}, {"kind": "wanted", "n": 1}):  # 1 and 1.0 are one value
        hit = await cache.lookup(CLOSER, where=where)
        assert hit is not None and hit.response == "wanted", where
    assert await cache.lookup(CLOSER, where={"kind": "missing"}) is None


async def test_redis_search_mode_filters_in_the_index(request: pytest.FixtureRequest) -> None:
    """Past what more candidates would find: only a filter in the index finds the one match among many."""
    from tests.plugins.backends import BACKEND_FACTORIES

    async with BACKEND_FACTORIES["redis-search"](request) as backend:
        cache = make_cache(backend, candidates=1)
        await cache.store(STORED, "wanted", metadata={"kind": "wanted"})
        for index in range(40):
            await cache.store(f"{CLOSER} {'x' * (index + 1)}", "other", metadata={"kind": "other"})
        hit = await cache.lookup(CLOSER, where={"kind": "wanted"})
        assert hit is not None and hit.response == "wanted"
        assert cache.backend.filters_where


async def test_ttl_per_call() -> None:
    cache = make_cache()
    resolution = await cache.resolve(STORED, Counting(), ttl=3600)
    assert resolution.key is not None
    entry = await cache.backend.get(resolution.key)
    assert entry is not None and entry.expires_at is not None and entry.expires_at - time.time() > 3500


def test_sync_faces_take_the_same_options() -> None:
    cache = make_cache()
    calls: list[int] = []

    def compute() -> str:
        calls.append(1)
        return f"sync {len(calls)}"

    assert cache.resolve_sync(STORED, compute, where={"lang": "en"}).computed
    assert cache.resolve_sync(CLOSER, compute, where={"lang": "en"}).response == "sync 1"
    assert cache.resolve_sync(CLOSER, compute, bypass=True).response == "sync 2"
    assert cache.resolve_sync(STORED, compute, refresh=True).response == "sync 3"
    assert cache.resolve_sync(STORED, compute).response == "sync 3" and len(calls) == 3


async def test_streams_take_bypass() -> None:
    cache = make_cache()

    async def chunks() -> Any:
        for piece in ("a", "b"):
            yield piece

    def assemble(parts: list[Any]) -> str:
        return "".join(parts)

    def replay(value: str) -> list[str]:
        return [value]

    streamed = await cache.resolve_stream(STORED, chunks, assemble=assemble, replay=replay, bypass=True)
    assert [chunk async for chunk in streamed] == ["a", "b"]
    assert await cache.lookup(STORED) is None


@pytest.mark.parametrize(
    "options",
    [
        {"threshold": 1.5},
        {"threshold": "0.9"},
        {"where": ["lang", "en"]},
        {"where": {"lang": ["en"]}},
        {"where": {"": 1}},
        {"where": {"x": float("nan")}},
        {"bypass": "yes"},
        {"refresh": 1},
        {"bypass": True, "refresh": True},
    ],
)
async def test_bad_options_are_refused_before_anything_happens(options: dict[str, Any]) -> None:
    cache = make_cache()
    compute = Counting()
    with pytest.raises(InvalidInputError):
        await cache.get_or_compute(STORED, compute, **options)
    assert compute.calls == 0 and cache.stats["stores"] == 0


async def test_temperature_never_above_keeps_sampled_answers_out() -> None:
    cache = make_cache(temperature_policy=NeverAbove(0.0))
    hot, cold = Scope(params={"temperature": 0.9}), Scope(params={"temperature": 0})
    compute = Counting()
    assert await cache.get_or_compute(STORED, compute, hot) == "answer 1"
    assert await cache.get_or_compute(STORED, compute, hot) == "answer 2"  # never served, never stored
    assert await cache.lookup(STORED, hot) is None
    assert await cache.get_or_compute(STORED, compute, cold) == "answer 3"
    assert await cache.get_or_compute(STORED, compute, cold) == "answer 3"
    assert cache.stats["temperature_skips"] == 3


async def test_temperature_skips_by_probability_store_fresh_samples() -> None:
    backend = make_cache().backend
    cache = make_cache(backend, temperature_policy=SkipByTemperature(max_temperature=1.0))
    hot = Scope(params={"temperature": 1.0})  # at max_temperature: always skips the lookup
    compute = Counting()
    assert await cache.get_or_compute(STORED, compute, hot) == "answer 1"
    assert await cache.get_or_compute(STORED, compute, hot) == "answer 2"  # a fresh sample, stored over the last
    plain = make_cache(backend)
    hit = await plain.lookup(STORED, hot)
    assert hit is not None and hit.response == "answer 2"
    assert cache.stats["temperature_skips"] == 2 and cache.stats["refreshes"] == 2


async def test_temperature_skip_probability_grows_with_temperature() -> None:
    policy = SkipByTemperature(max_temperature=2.0, rng=random.Random(7))
    assert not any(policy.skips(0.0) for _ in range(100))
    assert all(policy.skips(2.5) for _ in range(100))
    half = sum(policy.skips(1.0) for _ in range(1000))
    assert 430 <= half <= 570
    assert ServeAlways().skips(1.9) is False
    with pytest.raises(ConfigurationError):
        NeverAbove(-1)
    with pytest.raises(ConfigurationError):
        SkipByTemperature(max_temperature=0)
    with pytest.raises(ConfigurationError, match="temperature_policy"):
        make_cache(temperature_policy=object())
