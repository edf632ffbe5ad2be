"""SQLiteBackend beyond the shared contract: persistence, WAL, one connection, schema migrations, SQL-side TTL and
LRU eviction, corrupt rows, several connections on one file, and the engine on top of it."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import semantic_llm_cache.backends.sqlite as sqlite_module
from semantic_llm_cache import SemanticCache
from semantic_llm_cache._sync import run_sync
from semantic_llm_cache.backends.sqlite import SCHEMA_VERSION, SQLiteBackend
from semantic_llm_cache.config import CacheEntry
from semantic_llm_cache.errors import CacheBackendError, ConfigurationError, InvalidInputError
from tests.fakes import BagOfWordsEmbedder, unit

P1, P2 = "a" * 32, "b" * 32


def basis(position: int, dimension: int = 8, mix: float = 0.0) -> np.ndarray:
    vector = np.zeros(dimension, dtype=np.float32)
    vector[position] = 1.0
    vector[(position + 1) % dimension] += mix
    return unit(list(vector))


def entry(prompt: str, vector: np.ndarray | None, partition: str = P1, **fields: Any) -> CacheEntry:
    return CacheEntry(prompt=prompt, response={"answer": prompt}, partition_id=partition, embedding=vector,
                      embedder="test", **fields)  # fmt: skip


def key(partition: str, name: str) -> str:
    return f"{partition}:{name}"


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "cache.db"


async def test_entries_survive_close_and_reopen_with_every_field(db_path: Path) -> None:
    original = entry(
        "persist me", basis(0), namespace="tenant", metadata={"source": "faq", "n": [1, 2]}, compute_seconds=2.5,
        tokens=99, min_similarity=0.93, expires_at=time.time() + 3600,
    )  # fmt: skip
    async with SQLiteBackend(db_path) as backend:
        await backend.set(key(P1, "k"), original)
        await backend.record_hit(key(P1, "k"))
    async with SQLiteBackend(db_path) as reopened:
        got = await reopened.get(key(P1, "k"))
        assert got is not None
        assert (got.prompt, got.response, got.namespace, got.metadata) == (
            "persist me", {"answer": "persist me"}, "tenant", {"source": "faq", "n": [1, 2]},
        )  # fmt: skip
        assert (got.compute_seconds, got.tokens, got.min_similarity) == (2.5, 99, 0.93)
        assert got.expires_at == pytest.approx(original.expires_at)
        assert got.hits == 1 and got.last_hit_at is not None
        assert got.embedding is not None
        np.testing.assert_array_equal(got.embedding, original.embedding)
        match = await reopened.find_similar(basis(0), 0.99, partition=P1)
        assert match is not None and match[0] == key(P1, "k")


async def test_file_is_in_wal_mode_with_a_schema_version_and_float32_blobs(db_path: Path) -> None:
    vector = basis(2, dimension=16)
    async with SQLiteBackend(db_path) as backend:
        await backend.set(key(P1, "k"), entry("blob", vector))
        assert (await backend.get_stats())["journal_mode"] == "wal"
    connection = raw(db_path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        blob, dimension = connection.execute("SELECT embedding, dimension FROM entries").fetchone()
    finally:
        connection.close()
    assert dimension == 16 and isinstance(blob, bytes) and len(blob) == 16 * 4
    np.testing.assert_array_equal(np.frombuffer(blob, dtype="<f4"), vector)


async def test_connection_is_opened_once_when_many_tasks_start_together(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_connect = sqlite3.connect

    def counting_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(threading.current_thread().name)
        connection: sqlite3.Connection = real_connect(*args, **kwargs)
        return connection

    monkeypatch.setattr(sqlite3, "connect", counting_connect)
    async with SQLiteBackend(db_path) as backend:
        await asyncio.gather(
            *(backend.set(key(P1, f"k{i}"), entry(f"p{i}", basis(i % 8))) for i in range(40)),
            *(backend.get(key(P1, f"k{i}")) for i in range(40)),
            *(backend.find_similar(basis(i % 8), 0.5, partition=P1) for i in range(20)),
            backend.get_stats(),
        )
        assert len(await backend.iterate()) == 40
    assert len(opened) == 1 and opened[0].startswith("semantic-cache-sqlite")


async def test_waiting_for_a_locked_file_does_not_block_the_event_loop(db_path: Path) -> None:
    async with SQLiteBackend(db_path, timeout=5.0) as backend:
        await backend.set(key(P1, "first"), entry("first", basis(0)))
        blocker = raw(db_path)
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        asyncio.get_running_loop().call_later(0.4, blocker.execute, "COMMIT")
        started = time.perf_counter()
        await backend.set(key(P1, "second"), entry("second", basis(1)))
        waited = time.perf_counter() - started
        ticker.cancel()
        blocker.close()
        assert waited >= 0.35, "the write should have waited for the lock"
        assert ticks >= 15, f"the event loop ran only {ticks} times while the write waited {waited:.2f}s"
        assert await backend.get(key(P1, "second")) is not None


async def test_a_lock_held_past_the_timeout_is_a_backend_error_and_the_backend_recovers(db_path: Path) -> None:
    async with SQLiteBackend(db_path, timeout=0.2) as backend:
        await backend.set(key(P1, "before"), entry("before", basis(0)))
        assert await backend.find_similar(basis(0), 0.9, partition=P1) is not None  # index loaded
        blocker = raw(db_path)
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(CacheBackendError, match="locked"):
            await backend.set(key(P1, "during"), entry("during", basis(1)))
        blocker.execute("COMMIT")
        blocker.close()
        assert await backend.get(key(P1, "during")) is None
        await backend.set(key(P1, "after"), entry("after", basis(2)))
        match = await backend.find_similar(basis(2), 0.9, partition=P1)
        assert match is not None and match[0] == key(P1, "after")
        assert await backend.find_similar(basis(1), 0.9, partition=P1) is None


async def test_migrations_bring_an_old_file_forward_and_keep_its_rows(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteBackend(db_path) as backend:
        await backend.set(key(P1, "old"), entry("old row", basis(0)))
    step = ("ALTER TABLE entries ADD COLUMN note TEXT", "UPDATE entries SET note = 'migrated'")
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", {**sqlite_module.MIGRATIONS, SCHEMA_VERSION + 1: step})
    monkeypatch.setattr(sqlite_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    async with SQLiteBackend(db_path) as backend:
        got = await backend.get(key(P1, "old"))
        assert got is not None and got.prompt == "old row"
    connection = raw(db_path)
    try:
        versions = [row[0] for row in connection.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, SCHEMA_VERSION + 2))
        assert connection.execute("SELECT note FROM entries").fetchone()[0] == "migrated"
    finally:
        connection.close()


async def test_a_file_from_a_newer_version_is_refused(db_path: Path) -> None:
    async with SQLiteBackend(db_path) as backend:
        await backend.set(key(P1, "k"), entry("k", basis(0)))
    connection = raw(db_path)
    connection.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION + 5,))
    connection.close()
    backend = SQLiteBackend(db_path)
    with pytest.raises(CacheBackendError, match="newer"):
        await backend.get(key(P1, "k"))
    await backend.close()


async def test_files_that_are_not_caches_or_do_not_exist_are_clear_errors(tmp_path: Path) -> None:
    not_a_database = tmp_path / "notes.db"
    not_a_database.write_text("this is not a database " * 100)
    for backend, message in (
        (SQLiteBackend(not_a_database), "not a usable SQLite cache"),
        (SQLiteBackend(tmp_path / "missing.db", create=False), "no SQLite cache at"),
        (SQLiteBackend(tmp_path / "no-such-dir" / "c.db"), "directory does not exist"),
    ):
        with pytest.raises(CacheBackendError, match=message):
            await backend.get_stats()
        await backend.close()
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(ConfigurationError):
        SQLiteBackend(tmp_path / "c.db", max_entries=0)
    with pytest.raises(ConfigurationError):
        SQLiteBackend(tmp_path / "c.db", synchronous="SOMETIMES")


async def test_expired_rows_are_deleted_in_sql(db_path: Path) -> None:
    async with SQLiteBackend(db_path, purge_interval=0.0) as backend:
        await backend.set(key(P1, "short"), entry("short", basis(0), expires_at=time.time() + 0.3))
        await backend.set(key(P1, "long"), entry("long", basis(1)))
        await backend.set(key(P1, "dead"), entry("dead", basis(2), expires_at=time.time() - 1))  # never stored
        await asyncio.sleep(0.4)
        assert await backend.find_similar(basis(0), 0.9, partition=P1) is None
        stats = await backend.get_stats()
        assert stats["size"] == 1 and stats["expirations"] == 1
    connection = raw(db_path)
    try:
        assert [row[0] for row in connection.execute("SELECT key FROM entries")] == [key(P1, "long")]
    finally:
        connection.close()


async def test_max_entries_evicts_the_least_recently_used_in_sql(db_path: Path) -> None:
    async with SQLiteBackend(db_path, max_entries=3) as backend:
        for name in ("a", "b", "c"):
            await backend.set(key(P1, name), entry(name, basis("abc".index(name))))
            await asyncio.sleep(0.01)
        assert await backend.find_similar(basis(1), 0.9, partition=P1) is not None  # index loaded
        await backend.record_hit(key(P1, "a"))  # a is now more recent than b
        await asyncio.sleep(0.01)
        await backend.set(key(P1, "d"), entry("d", basis(3)))
        assert await backend.get(key(P1, "b")) is None
        assert {k for k, _ in await backend.iterate()} == {key(P1, name) for name in "acd"}
        assert await backend.find_similar(basis(1), 0.9, partition=P1) is None  # evicted from the index too
        await backend.set(key(P1, "a"), entry("a again", basis(0)))  # replacing does not evict
        assert len(await backend.iterate()) == 3
        assert (await backend.get_stats())["evictions"] == 1
    connection = raw(db_path)
    try:
        assert connection.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 3
    finally:
        connection.close()


async def test_corrupt_rows_are_skipped_and_counted_never_crash(db_path: Path) -> None:
    async with SQLiteBackend(db_path) as backend:
        await backend.set(key(P1, "good"), entry("good", basis(0, mix=0.5)))
        await backend.set(key(P1, "bad-json"), entry("bad json", basis(0, mix=0.1)))
        await backend.set(key(P1, "bad-vector"), entry("bad vector", basis(0)))
        await backend.set(key(P1, "bad-response"), entry("bad response", basis(3)))
    connection = raw(db_path)
    connection.execute("UPDATE entries SET document = '{not json' WHERE key = ?", (key(P1, "bad-json"),))
    connection.execute("UPDATE entries SET embedding = x'00ff00' WHERE key = ?", (key(P1, "bad-vector"),))
    connection.execute("UPDATE entries SET document = '[1, 2]' WHERE key = ?", (key(P1, "bad-response"),))
    connection.close()
    async with SQLiteBackend(db_path) as backend:
        assert [k for k, _ in await backend.iterate()] == [key(P1, "good")]
        assert await backend.get(key(P1, "bad-json")) is None
        match = await backend.find_similar(basis(0), 0.5, partition=P1)
        assert match is not None and match[0] == key(P1, "good")
        assert [m[0] for m in await backend.find_nearest(basis(0), 0.0, 10, partition=P1)] == [key(P1, "good")]
        stats = await backend.get_stats()
        assert stats["corrupt_rows"] == 3 and stats["size"] == 4
        await backend.set(key(P1, "bad-json"), entry("repaired", basis(5)))  # overwriting repairs a row
        assert (await backend.get_stats())["corrupt_rows"] == 2
        assert (await backend.get(key(P1, "bad-json"))) is not None


async def test_the_loaded_index_follows_every_write(db_path: Path) -> None:
    async with SQLiteBackend(db_path) as backend:
        await backend.set(key(P1, "a"), entry("a", basis(0)))
        assert (await backend.find_similar(basis(0), 0.9, partition=P1)) is not None
        await backend.set(key(P1, "b"), entry("b", basis(1)))
        match = await backend.find_similar(basis(1), 0.9, partition=P1)
        assert match is not None and match[0] == key(P1, "b")
        await backend.set(key(P1, "b"), entry("b moved", basis(2)))
        assert await backend.find_similar(basis(1), 0.9, partition=P1) is None
        assert await backend.delete(key(P1, "a"))
        assert await backend.find_similar(basis(0), 0.9, partition=P1) is None
        await backend.set(key(P1, "b"), entry("b exact only", None))
        assert await backend.find_similar(basis(2), 0.0, partition=P1) is None
        await backend.clear()
        await backend.set(key(P1, "c"), entry("c", basis(4)))
        assert (await backend.find_nearest(basis(4), 0.0, 5, partition=P1))[0][0] == key(P1, "c")
        assert (await backend.get_stats())["loaded_partitions"] == 1


async def test_a_dimension_change_inside_a_partition_is_refused(db_path: Path) -> None:
    async with SQLiteBackend(db_path) as backend:
        await backend.set(key(P1, "a"), entry("a", basis(0)))
        with pytest.raises(InvalidInputError, match="dimension"):
            await backend.set(key(P1, "wide"), entry("wide", basis(0, dimension=16)))
        await backend.set(key(P2, "wide"), entry("wide", basis(0, dimension=16), partition=P2))
        assert len(await backend.iterate()) == 2
        match = await backend.find_similar(basis(0), 0.9, partition=P1)
        assert match is not None and match[0] == key(P1, "a")


async def test_two_connections_on_one_file_see_each_others_writes(db_path: Path) -> None:
    async with SQLiteBackend(db_path) as first, SQLiteBackend(db_path) as second:
        await first.set(key(P1, "a"), entry("a", basis(0)))
        assert await first.find_similar(basis(1), 0.9, partition=P1) is None  # first's index is loaded now
        await second.set(key(P1, "b"), entry("b", basis(1)))
        match = await first.find_similar(basis(1), 0.9, partition=P1)
        assert match is not None and match[0] == key(P1, "b")
        await second.delete(key(P1, "a"))
        assert await first.find_similar(basis(0), 0.9, partition=P1) is None
        await second.record_hit(key(P1, "b"))
        got = await first.get(key(P1, "b"))
        assert got is not None and got.hits == 1
        await second.clear()
        assert await first.find_similar(basis(1), 0.0, partition=P1) is None
        assert (await first.get_stats())["size"] == 0


async def test_usable_from_two_event_loops(db_path: Path) -> None:
    async with SQLiteBackend(db_path) as backend:
        await asyncio.to_thread(run_sync, backend.set(key(P1, "sync"), entry("from the sync loop", basis(0))))
        await backend.set(key(P1, "async"), entry("from this loop", basis(1)))
        found = await asyncio.to_thread(run_sync, backend.find_similar(basis(1), 0.9, partition=P1))
        assert found is not None and found[0] == key(P1, "async")
        assert len(await backend.iterate()) == 2


async def test_closed_backend_raises_and_close_is_idempotent(db_path: Path) -> None:
    backend = SQLiteBackend(db_path)
    await backend.set(key(P1, "k"), entry("k", basis(0)))
    pending = asyncio.ensure_future(backend.get(key(P1, "k")))
    await asyncio.sleep(0)  # the get is now queued on the worker
    await backend.close()
    assert (await pending) is not None  # calls started before close finish first
    await backend.close()
    with pytest.raises(CacheBackendError, match="closed"):
        await backend.get(key(P1, "k"))


async def test_in_memory_database(tmp_path: Path) -> None:
    async with SQLiteBackend(":memory:") as backend:
        await backend.set(key(P1, "k"), entry("k", basis(0)))
        assert (await backend.find_similar(basis(0), 0.9, partition=P1)) is not None
        assert (await backend.get_stats())["size"] == 1
    assert os.listdir(tmp_path) == []


async def test_engine_answers_from_the_file_after_a_restart(db_path: Path) -> None:
    embedder = BagOfWordsEmbedder()
    async with SemanticCache(SQLiteBackend(db_path), embedder=embedder, threshold=0.8, on_error="raise") as cache:
        await cache.store("how do I reset my password", "Settings > Security")
        await cache.store("what are your opening hours", "9 to 5")
    async with SemanticCache(SQLiteBackend(db_path), embedder=embedder, threshold=0.8, on_error="raise") as cache:
        exact = await cache.lookup("how do I reset my password")
        assert exact is not None and exact.kind == "exact"
        semantic = await cache.lookup("how do I reset my password please")
        assert semantic is not None and semantic.kind == "semantic" and semantic.response == "Settings > Security"
        await cache.feedback(semantic, correct=False)
    async with SemanticCache(SQLiteBackend(db_path), embedder=embedder, threshold=0.8, on_error="raise") as cache:
        assert await cache.lookup("how do I reset my password please") is None  # the feedback persisted
        hit = await cache.lookup("how do I reset my password")
        assert hit is not None
        stored = await cache.backend.get(hit.key)
        assert stored is not None and stored.hits == 3 and stored.min_similarity > 0.8


@pytest.mark.parametrize("bad_dimension", [7, 0, -3, "abc", None, 10**6])
async def test_one_bad_dimension_value_does_not_block_stores_from_a_fresh_process(
    db_path: Path, bad_dimension: Any
) -> None:
    async with SQLiteBackend(db_path) as backend:
        for position in range(3):
            await backend.set(key(P1, f"k{position}"), entry(f"stored {position}", basis(position)))
    with raw(db_path) as connection:  # the oldest row's column now disagrees with its own vector
        connection.execute("UPDATE entries SET dimension = ? WHERE key = ?", (bad_dimension, key(P1, "k0")))
    async with SQLiteBackend(db_path) as fresh:  # a new process: nothing of the partition is loaded yet
        await fresh.set(key(P1, "new"), entry("new one", basis(5)))
        found = await fresh.find_nearest(basis(5), 0.99, 1, partition=P1)
        assert [match_key for match_key, _, _ in found] == [key(P1, "new")]
        assert [k for k, _, _ in await fresh.find_nearest(basis(1), 0.99, 1, partition=P1)] == [key(P1, "k1")]
