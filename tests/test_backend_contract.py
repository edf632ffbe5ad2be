"""The storage contract, run against every registered backend (memory, SQLite, Redis plain/search/cluster, Valkey
without modules and Valkey with RediSearch)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from semantic_llm_cache.config import CacheEntry
from semantic_llm_cache.storage import StorageBackend
from tests.fakes import unit

DIMENSION = 8


def make_entry(
    prompt: str,
    vector: list[float] | None,
    partition: str = "p" * 32,
    namespace: str = "default",
    expires_in: float | None = None,
    **fields: object,
) -> CacheEntry:
    return CacheEntry(
        prompt=prompt,
        response={"answer": prompt.upper(), "n": [1, 2.5, None, True]},
        partition_id=partition,
        namespace=namespace,
        embedding=None if vector is None else unit(vector),
        embedder="test",
        expires_at=None if expires_in is None else time.time() + expires_in,
        **fields,  # type: ignore[arg-type]
    )


def basis(position: int, dimension: int = DIMENSION, mix: float = 0.0, other: int = 1) -> list[float]:
    vector = [0.0] * dimension
    vector[position] = 1.0
    vector[other] += mix
    return vector


def key(partition: str, name: str) -> str:
    return f"{partition}:{name}"


P1, P2 = "a" * 32, "b" * 32


async def test_set_then_get_round_trips_every_field(backend: StorageBackend) -> None:
    entry = make_entry(
        "hello",
        basis(0),
        partition=P1,
        metadata={"source": "test"},
        compute_seconds=1.5,
        tokens=42,
        min_similarity=0.97,
    )
    await backend.set(key(P1, "k1"), entry)
    got = await backend.get(key(P1, "k1"))
    assert got is not None
    assert got.prompt == "hello" and got.response == entry.response
    assert got.partition_id == P1 and got.namespace == "default" and got.embedder == "test"
    assert got.metadata == {"source": "test"} and got.compute_seconds == 1.5 and got.tokens == 42
    assert got.min_similarity == pytest.approx(0.97)  # negative feedback must survive every backend
    assert got.embedding is not None and entry.embedding is not None
    np.testing.assert_allclose(got.embedding, entry.embedding, rtol=0, atol=1e-6)
    assert abs(got.created_at - entry.created_at) < 1e-3


async def test_get_missing_returns_none(backend: StorageBackend) -> None:
    assert await backend.get(key(P1, "nothing")) is None


async def test_entry_without_vector_is_stored_but_never_searched(backend: StorageBackend) -> None:
    await backend.set(key(P1, "k"), make_entry("exact only", None, partition=P1))
    assert (await backend.get(key(P1, "k"))) is not None
    assert await backend.find_similar(unit(basis(0)), 0.0, partition=P1) is None


async def test_delete_reports_whether_it_deleted(backend: StorageBackend) -> None:
    await backend.set(key(P1, "k"), make_entry("x", basis(0), partition=P1))
    assert await backend.delete(key(P1, "k")) is True
    assert await backend.delete(key(P1, "k")) is False
    assert await backend.get(key(P1, "k")) is None
    assert await backend.find_similar(unit(basis(0)), 0.5, partition=P1) is None


async def test_overwrite_replaces_vector_and_response(backend: StorageBackend) -> None:
    await backend.set(key(P1, "k"), make_entry("first", basis(0), partition=P1))
    await backend.set(key(P1, "k"), make_entry("second", basis(3), partition=P1))
    assert await backend.find_similar(unit(basis(0)), 0.9, partition=P1) is None
    match = await backend.find_similar(unit(basis(3)), 0.9, partition=P1)
    assert match is not None and match[0] == key(P1, "k") and match[1].prompt == "second"
    assert len(await backend.iterate()) == 1


async def test_find_similar_returns_the_best_match_at_or_above_threshold(backend: StorageBackend) -> None:
    await backend.set(key(P1, "near"), make_entry("near", basis(0, mix=0.2), partition=P1))
    await backend.set(key(P1, "far"), make_entry("far", basis(0, mix=1.0), partition=P1))
    await backend.set(key(P1, "other"), make_entry("other", basis(5), partition=P1))
    match = await backend.find_similar(unit(basis(0)), 0.5, partition=P1)
    assert match is not None
    found_key, entry, similarity = match
    assert found_key == key(P1, "near") and entry.prompt == "near"
    assert similarity == pytest.approx(float(unit(basis(0, mix=0.2))[0]), abs=1e-4)
    # inclusive: the reported similarity itself as the threshold still matches
    again = await backend.find_similar(unit(basis(0)), similarity - 1e-6, partition=P1)
    assert again is not None and again[0] == found_key
    assert await backend.find_similar(unit(basis(0)), min(1.0, similarity + 1e-3), partition=P1) is None


async def test_find_nearest_orders_best_first_and_respects_k(backend: StorageBackend) -> None:
    for position, mix in enumerate([0.1, 0.3, 0.6, 0.9]):
        await backend.set(key(P1, f"k{position}"), make_entry(f"e{position}", basis(0, mix=mix), partition=P1))
    matches = await backend.find_nearest(unit(basis(0)), 0.0, 3, partition=P1)
    assert [m[0] for m in matches] == [key(P1, "k0"), key(P1, "k1"), key(P1, "k2")]
    similarities = [m[2] for m in matches]
    assert similarities == sorted(similarities, reverse=True)


async def test_partition_is_a_hard_wall(backend: StorageBackend) -> None:
    await backend.set(key(P2, "exact-twin"), make_entry("twin", basis(0), partition=P2))
    await backend.set(key(P1, "weaker"), make_entry("weaker", basis(0, mix=1.0), partition=P1))
    match = await backend.find_similar(unit(basis(0)), 0.5, partition=P1)
    assert match is not None and match[1].partition_id == P1 and match[0] == key(P1, "weaker")
    assert await backend.find_similar(unit(basis(0)), 0.9, partition=P1) is None


async def test_namespace_filters_iterate_search_and_clear(backend: StorageBackend) -> None:
    await backend.set(key(P1, "a"), make_entry("a", basis(0), partition=P1, namespace="tenant-a"))
    await backend.set(key(P2, "b"), make_entry("b", basis(0), partition=P2, namespace="tenant-b"))
    assert [k for k, _ in await backend.iterate("tenant-a")] == [key(P1, "a")]
    match = await backend.find_similar(unit(basis(0)), 0.9, "tenant-b")
    assert match is not None and match[1].namespace == "tenant-b"
    await backend.clear("tenant-a")
    assert await backend.get(key(P1, "a")) is None
    assert await backend.get(key(P2, "b")) is not None
    await backend.clear()
    assert await backend.iterate() == []


async def test_expired_entries_are_never_returned(backend: StorageBackend) -> None:
    await backend.set(key(P1, "short"), make_entry("short", basis(0), partition=P1, expires_in=1.0))
    await backend.set(key(P1, "long"), make_entry("long", basis(0, mix=0.5), partition=P1))
    assert await backend.get(key(P1, "short")) is not None
    await asyncio.sleep(1.3)
    assert await backend.get(key(P1, "short")) is None
    match = await backend.find_similar(unit(basis(0)), 0.1, partition=P1)
    assert match is not None and match[0] == key(P1, "long")
    assert [k for k, _ in await backend.iterate()] == [key(P1, "long")]


async def test_vectors_of_another_dimension_are_never_compared(backend: StorageBackend) -> None:
    await backend.set(key(P2, "wide"), make_entry("wide", basis(0, dimension=16), partition=P2))
    assert await backend.find_similar(unit(basis(0)), 0.0) is None


async def test_feedback_threshold_survives_an_update_and_a_search(backend: StorageBackend) -> None:
    entry = make_entry("k", basis(0), partition=P1)
    await backend.set(key(P1, "k"), entry)
    entry.min_similarity = 1.5
    await backend.set(key(P1, "k"), entry)
    match = await backend.find_similar(unit(basis(0)), 0.5, partition=P1)
    assert match is not None and match[1].min_similarity == pytest.approx(1.5)


async def test_record_hit_counts_hits(backend: StorageBackend) -> None:
    await backend.set(key(P1, "k"), make_entry("k", basis(0), partition=P1))
    await backend.record_hit(key(P1, "k"))
    await backend.record_hit(key(P1, "k"))
    got = await backend.get(key(P1, "k"))
    assert got is not None and got.hits == 2 and got.last_hit_at is not None


async def test_stats_report_backend_and_size(backend: StorageBackend) -> None:
    await backend.set(key(P1, "k"), make_entry("k", basis(0), partition=P1))
    stats = await backend.get_stats()
    assert isinstance(stats["backend"], str) and stats["size"] == 1


async def test_concurrent_writes_are_all_kept(backend: StorageBackend) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((200, DIMENSION))
    await asyncio.gather(
        *(backend.set(key(P1, f"k{i}"), make_entry(f"p{i}", list(vectors[i]), partition=P1)) for i in range(200))
    )
    assert len(await backend.iterate()) == 200
    for i in (0, 57, 199):
        match = await backend.find_similar(unit(list(vectors[i])), 0.999, partition=P1)
        assert match is not None and match[0] == key(P1, f"k{i}")
