"""MemoryBackend: LRU eviction, TTL purging, partitions as walls, and its statistics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from semantic_llm_cache import CacheEntry, ConfigurationError, InvalidInputError, MemoryBackend
from tests.fakes import unit


def entry(
    prompt: str, vector: Any = None, partition: str = "p1", namespace: str = "default", **fields: Any
) -> CacheEntry:
    embedding = None if vector is None else unit(vector)
    return CacheEntry(prompt=prompt, response=f"answer to {prompt}", partition_id=partition, namespace=namespace,
                      embedding=embedding, **fields)  # fmt: skip


async def keys_of(backend: MemoryBackend) -> list[str]:
    return [key for key, _ in await backend.iterate()]


async def test_lru_evicts_the_least_recently_used() -> None:
    backend = MemoryBackend(max_entries=3)
    for name in "abc":
        await backend.set(name, entry(name, [1.0, ord(name)]))
    assert await backend.get("a") is not None  # a is now the most recent
    await backend.set("d", entry("d", [1.0, 4.0]))
    assert sorted(await keys_of(backend)) == ["a", "c", "d"]  # b was the least recent

    await backend.record_hit("c")  # a served hit refreshes recency too
    await backend.set("e", entry("e", [1.0, 5.0]))
    assert sorted(await keys_of(backend)) == ["c", "d", "e"]

    await backend.set("c", entry("c", [1.0, 3.0]))  # overwriting refreshes
    await backend.set("f", entry("f", [1.0, 6.0]))
    assert sorted(await keys_of(backend)) == ["c", "e", "f"]

    stats = await backend.get_stats()
    assert stats["evictions"] == 3
    assert stats["size"] == 3
    assert stats["max_entries"] == 3
    # the evicted ones are gone from the vector index as well
    found = await backend.find_nearest(unit([1.0, 2.0]), 0.0, 10, partition="p1")
    assert sorted(key for key, _, _ in found) == ["c", "e", "f"]


async def test_a_missed_get_does_not_disturb_lru_order() -> None:
    backend = MemoryBackend(max_entries=2)
    await backend.set("a", entry("a"))
    await backend.set("b", entry("b"))
    assert await backend.get("zzz") is None
    await backend.set("c", entry("c"))
    assert sorted(await keys_of(backend)) == ["b", "c"]


async def test_record_hit_counts_hits() -> None:
    backend = MemoryBackend()
    await backend.set("a", entry("a"))
    before = time.time()
    await backend.record_hit("a")
    await backend.record_hit("a")
    await backend.record_hit("missing")
    stored = await backend.get("a")
    assert stored is not None and stored.hits == 2
    assert stored.last_hit_at is not None and stored.last_hit_at >= before


async def test_approx_bytes_grows_with_entries_and_shrinks_on_delete() -> None:
    backend = MemoryBackend()
    sizes = [(await backend.get_stats())["approx_bytes"]]
    for number in range(5):
        await backend.set(f"k{number}", entry(f"prompt {number} " * 20, np.ones(32)))
        sizes.append((await backend.get_stats())["approx_bytes"])
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert sizes[-1] > 5 * (32 * 4 + 100)
    await backend.delete("k0")
    assert (await backend.get_stats())["approx_bytes"] < sizes[-1]
    await backend.clear()
    assert (await backend.get_stats())["approx_bytes"] == 0


async def test_expired_entries_are_never_returned_and_are_purged() -> None:
    backend = MemoryBackend()
    now = time.time()
    await backend.set("short", entry("short", [1.0, 0.0], expires_at=now + 0.3))
    await backend.set("long", entry("long", [0.9, 0.1], expires_at=now + 60))
    await backend.set("forever", entry("forever", [0.8, 0.2]))
    assert (await backend.get_stats())["size"] == 3
    await asyncio.sleep(0.45)
    stats = await backend.get_stats()  # purges through the expiry heap
    assert stats["size"] == 2
    assert stats["expirations"] == 1
    assert await backend.get("short") is None
    assert "short" not in await keys_of(backend)
    found = await backend.find_nearest(unit([1.0, 0.0]), 0.0, 5, partition="p1")
    assert [key for key, _, _ in found] == ["long", "forever"]
    best = await backend.find_similar(unit([1.0, 0.0]), 0.0, partition="p1")
    assert best is not None and best[0] == "long"


async def test_expired_entry_is_not_found_before_any_purge() -> None:
    backend = MemoryBackend()
    await backend.set("short", entry("short", [1.0, 0.0], expires_at=time.time() + 0.2))
    await asyncio.sleep(0.3)
    assert await backend.find_similar(unit([1.0, 0.0]), 0.0, partition="p1") is None
    assert await backend.get("short") is None


async def test_an_entry_set_already_expired_is_not_stored() -> None:
    backend = MemoryBackend()
    await backend.set("old", entry("old", [1.0], expires_at=time.time() - 1))
    assert await backend.get("old") is None
    assert (await backend.get_stats())["size"] == 0


async def test_a_stale_heap_record_does_not_delete_a_rewritten_entry() -> None:
    backend = MemoryBackend()
    await backend.set("k", entry("k", [1.0, 0.0], expires_at=time.time() + 0.2))
    await backend.set("k", entry("k", [1.0, 0.0]))  # rewritten without expiry
    await asyncio.sleep(0.3)
    await backend.get_stats()
    assert await backend.get("k") is not None
    assert (await backend.get_stats())["expirations"] == 0


async def test_dimension_mismatch_within_a_partition_is_rejected() -> None:
    backend = MemoryBackend()
    await backend.set("a", entry("a", np.ones(4), partition="p1"))
    with pytest.raises(InvalidInputError, match="dimension"):
        await backend.set("b", entry("b", np.ones(8), partition="p1"))
    assert await backend.get("b") is None
    assert (await backend.get_stats())["size"] == 1
    await backend.set("c", entry("c", np.ones(8), partition="p2"))  # another partition may differ
    assert (await backend.get_stats())["partitions"] == 2
    assert await backend.find_similar(np.ones(8), 0.0, partition="p1") is None  # never compared across sizes
    match = await backend.find_similar(np.ones(8), 0.0)
    assert match is not None and match[0] == "c"


async def test_search_stays_inside_the_partition_and_namespace() -> None:
    backend = MemoryBackend()
    await backend.set("mine", entry("mine", [0.8, 0.6], partition="p1", namespace="tenant-a"))
    await backend.set("closer", entry("closer", [1.0, 0.0], partition="p2", namespace="tenant-b"))
    query = unit([1.0, 0.0])
    match = await backend.find_similar(query, 0.5, partition="p1")
    assert match is not None and match[0] == "mine" and match[2] == pytest.approx(0.8)
    assert await backend.find_similar(query, 0.5, partition="nowhere") is None
    tenant_a = await backend.find_similar(query, 0.5, "tenant-a")
    assert tenant_a is not None and tenant_a[0] == "mine"
    anywhere = await backend.find_similar(query, 0.5)
    assert anywhere is not None and anywhere[0] == "closer"


async def test_find_nearest_orders_and_thresholds_inclusively() -> None:
    backend = MemoryBackend()
    for name, similarity in (("a", 0.5), ("b", 0.9), ("c", 0.7)):
        await backend.set(name, entry(name, [similarity, np.sqrt(1 - similarity**2)]))
    found = await backend.find_nearest(unit([1.0, 0.0]), 0.0, 2, partition="p1")
    assert [key for key, _, _ in found] == ["b", "c"]
    assert [score for _, _, score in found] == pytest.approx([0.9, 0.7], abs=1e-6)
    exact_similarity = found[1][2]
    at = await backend.find_nearest(unit([1.0, 0.0]), exact_similarity, 5, partition="p1")
    assert [key for key, _, _ in at] == ["b", "c"]
    with pytest.raises(Exception, match="threshold"):
        await backend.find_nearest(unit([1.0, 0.0]), 1.5, 2, partition="p1")


async def test_replacing_an_entry_replaces_its_vector() -> None:
    backend = MemoryBackend()
    await backend.set("k", entry("k", [1.0, 0.0]))
    await backend.set("k", entry("k", [0.0, 1.0]))
    assert await backend.find_similar(unit([1.0, 0.0]), 0.5, partition="p1") is None
    match = await backend.find_similar(unit([0.0, 1.0]), 0.5, partition="p1")
    assert match is not None and match[0] == "k"


async def test_exact_only_entries_are_stored_but_not_searched() -> None:
    backend = MemoryBackend()
    await backend.set("k", entry("k"))
    assert await backend.get("k") is not None
    assert await backend.find_similar(unit([1.0, 0.0]), 0.0) is None


async def test_delete_and_clear_by_namespace() -> None:
    backend = MemoryBackend()
    await backend.set("a1", entry("a1", [1.0, 0.0], partition="pa", namespace="a"))
    await backend.set("a2", entry("a2", [1.0, 0.1], partition="pa", namespace="a"))
    await backend.set("b1", entry("b1", [1.0, 0.0], partition="pb", namespace="b"))
    assert await backend.delete("a2") is True
    assert await backend.delete("a2") is False
    await backend.clear("a")
    assert await keys_of(backend) == ["b1"]
    assert [key for key, _ in await backend.iterate("b")] == ["b1"]
    assert await backend.iterate("a") == []
    assert await backend.find_similar(unit([1.0, 0.0]), 0.0, partition="pa") is None
    await backend.clear()
    assert (await backend.get_stats())["size"] == 0


@pytest.mark.parametrize("bad", [0, -1, True])
def test_max_entries_must_be_positive(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_entries"):
        MemoryBackend(max_entries=bad)


async def test_stats_shape() -> None:
    async with MemoryBackend() as backend:
        stats = await backend.get_stats()
    assert stats == {"backend": "memory", "size": 0, "partitions": 0, "max_entries": None, "approx_bytes": 0,
                     "evictions": 0, "expirations": 0}  # fmt: skip
