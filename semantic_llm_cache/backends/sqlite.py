"""Persistent embedded backend: one SQLite file (WAL), vectors as float32 blobs, a flat index per partition.

Every SQL statement and every vector search runs in one worker thread that owns the connection, so the event
loop never blocks, the connection is opened exactly once (by the first call, however many tasks start at the
same moment) and no lock is needed around the in-memory indexes. The backend can be awaited from several event
loops (the sync wrapper's and the application's): each call is a future of that one thread.

Several processes may share a file. Each keeps its own in-memory indexes and notices other processes' writes
through a generation counter that every transaction adding or deleting rows bumps (a recorded hit does not); it
then reloads its indexes lazily.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from semantic_llm_cache.config import CacheEntry, Vector, validate_max_entries
from semantic_llm_cache.errors import CacheBackendError, ConfigurationError, InvalidInputError
from semantic_llm_cache.index.auto import DEFAULT_HNSW_MIN_ENTRIES, renamed_min_entries
from semantic_llm_cache.index.partitions import Found, PartitionIndex, PartitionIndexes
from semantic_llm_cache.index.protocol import IndexFactory
from semantic_llm_cache.serialization import (
    entry_from_dict,
    entry_to_dict,
    unit_vector_from_bytes,
    vector_from_bytes,
    vector_to_bytes,
)
from semantic_llm_cache.storage import Match, StorageBackend

logger = logging.getLogger(__name__)
T = TypeVar("T")

MEMORY_PATH = ":memory:"
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

#: Schema migrations: version -> statements that bring a file from version-1 to version. Append, never edit.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE entries (
            key TEXT PRIMARY KEY NOT NULL,
            partition_id TEXT NOT NULL,
            namespace TEXT NOT NULL,
            dimension INTEGER,
            embedding BLOB,
            expires_at REAL,
            hits INTEGER NOT NULL DEFAULT 0,
            last_hit_at REAL,
            last_access REAL NOT NULL,
            document TEXT NOT NULL
        )""",
        "CREATE INDEX entries_by_partition ON entries (partition_id)",
        "CREATE INDEX entries_by_namespace ON entries (namespace)",
        "CREATE INDEX entries_by_expiry ON entries (expires_at)",
        "CREATE INDEX entries_by_access ON entries (last_access)",
        "CREATE TABLE state (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL)",
        "INSERT INTO state (name, value) VALUES ('generation', 0)",
    ),
}
SCHEMA_VERSION = max(MIGRATIONS)

_COLUMNS = "key, partition_id, namespace, dimension, embedding, expires_at, hits, last_hit_at, document"
_LIVE = "(expires_at IS NULL OR expires_at > ?)"


class SQLiteBackend(StorageBackend):
    """Entries in a SQLite file that survives restarts; similarity search in memory, per partition.

    path: the database file (created with its schema unless `create=False`), or ":memory:".
    max_entries: bound on live entries; the least recently used (stored or hit) are evicted, in SQL.
    synchronous: SQLite's `synchronous` pragma. "NORMAL" (default) keeps every committed write across a crash
        of the process; "FULL" also across power loss, at the cost of an fsync per write.
    timeout: seconds to wait for another process's write lock before failing.
    purge_interval: expired rows are deleted at most this often (they are never returned in between).
    index_factory: builds a partition's vector index from its dimension (default: from `hnsw_min_entries`).
    hnsw_min_entries: a partition holding more vectors than this moves from the exact flat index to an HNSW
        graph, built in the background (needs the `hnsw` extra), or past 3x that while its exact searches stay
        narrow (AutoIndex); None keeps every partition exact.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_entries: int | None = None,
        create: bool = True,
        synchronous: str = "NORMAL",
        timeout: float = 5.0,
        purge_interval: float = 1.0,
        index_factory: IndexFactory | None = None,
        hnsw_min_entries: int | None = DEFAULT_HNSW_MIN_ENTRIES,
        **renamed: Any,
    ) -> None:
        hnsw_min_entries = renamed_min_entries(hnsw_min_entries, renamed)
        if not isinstance(synchronous, str) or synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ConfigurationError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, got {synchronous!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ConfigurationError(f"timeout must be a non-negative number of seconds, got {timeout!r}")
        self.path = str(path) if str(path) == MEMORY_PATH else str(Path(path).expanduser().absolute())
        self.max_entries = validate_max_entries(max_entries)
        self.create = create
        self.synchronous = synchronous.upper()
        self.timeout = float(timeout)
        self.purge_interval = float(purge_interval)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semantic-cache-sqlite")
        self._closed = False
        # Everything below is touched only by the worker thread.
        self._connection: sqlite3.Connection | None = None
        self._shut_down = False
        self._journal_mode = ""
        # The partitions whose vectors are loaded (an empty one: loaded, and holds none).
        self._indexes: PartitionIndexes[str, PartitionIndex] = PartitionIndexes(
            PartitionIndex, hnsw_min_entries, index_factory=index_factory, keep_empty=True
        )
        self._generation = -1
        self._size: int | None = None
        self._last_purge = 0.0
        self._corrupt_keys: set[str] = set()
        self.evictions = 0
        self.expirations = 0

    # -- the worker thread ------------------------------------------------------------------------------

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise CacheBackendError(f"the SQLite backend for {self.path} is closed")
        try:
            future = self._executor.submit(self._call, function, *args)
        except RuntimeError as exc:  # the executor shut down between the check and the submit
            raise CacheBackendError(f"the SQLite backend for {self.path} is closed") from exc
        return await asyncio.wrap_future(future)

    def _call(self, function: Callable[..., T], *args: Any) -> T:
        if self._shut_down:
            raise CacheBackendError(f"the SQLite backend for {self.path} is closed")
        try:
            if self._connection is None:
                self._open()
            return function(*args)
        except (CacheBackendError, InvalidInputError):
            raise
        except sqlite3.Error as exc:
            self._rollback()
            raise CacheBackendError(f"SQLite cache {self.path}: {type(exc).__name__}: {exc}") from exc

    def _rollback(self) -> None:
        if self._connection is not None and self._connection.in_transaction:
            with suppress(sqlite3.Error):  # nothing more to undo
                self._connection.execute("ROLLBACK")

    def _open(self) -> None:
        if self.path == MEMORY_PATH:
            target, uri = MEMORY_PATH, False
        elif self.create:
            if not Path(self.path).parent.is_dir():
                raise CacheBackendError(f"cannot create SQLite cache {self.path}: its directory does not exist")
            target, uri = self.path, False
        else:
            if not Path(self.path).is_file():
                raise CacheBackendError(f"no SQLite cache at {self.path}")
            target, uri = Path(self.path).as_uri() + "?mode=rw", True
        connection = sqlite3.connect(target, timeout=self.timeout, isolation_level=None, uri=uri)
        try:
            self._journal_mode = str(connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
            connection.execute(f"PRAGMA synchronous={self.synchronous}")
            connection.execute("PRAGMA foreign_keys=ON")
            self._migrate(connection)
        except sqlite3.DatabaseError as exc:
            connection.close()
            raise CacheBackendError(f"{self.path} is not a usable SQLite cache: {exc}") from exc
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def _migrate(self, connection: sqlite3.Connection) -> None:
        """Bring the file to SCHEMA_VERSION, one migration per transaction; refuse a file from a newer version."""
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        while True:
            connection.execute("BEGIN IMMEDIATE")  # another process may be migrating the same file right now
            try:
                current = connection.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
                if current > SCHEMA_VERSION:
                    raise CacheBackendError(
                        f"{self.path} has cache schema version {current}, newer than this version of "
                        f"semantic_llm_cache reads ({SCHEMA_VERSION}); upgrade the package"
                    )
                if current == SCHEMA_VERSION:
                    connection.execute("COMMIT")
                    return
                for statement in MIGRATIONS[current + 1]:
                    connection.execute(statement)
                connection.execute("INSERT INTO schema_version (version) VALUES (?)", (current + 1,))
                connection.execute("COMMIT")
                logger.info("migrated SQLite cache %s to schema version %d", self.path, current + 1)
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._connection is not None
        return self._connection

    def _sync(self) -> None:
        """Drop what this process knows about the rows if another connection changed them since.

        Called inside a transaction, so the generation read here belongs to the snapshot the caller then uses.
        """
        generation = int(self._db.execute("SELECT value FROM state WHERE name = 'generation'").fetchone()[0])
        if generation != self._generation:
            self._generation = generation
            self._indexes.clear()
            self._size = None

    def _bump_generation(self) -> None:
        self._db.execute("UPDATE state SET value = value + 1 WHERE name = 'generation'")
        self._generation += 1

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction, taken with the file's write lock; on failure, forget what may be stale."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._sync()
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            self._generation = -1  # re-read everything on the next call
            self._size = None
            raise

    def _count(self) -> int:
        if self._size is None:
            self._size = int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
        return self._size

    def _forget(self, rows: Sequence[tuple[str, str]]) -> None:
        """Remove deleted (key, partition) rows from the loaded indexes."""
        for key, partition in rows:
            self._indexes.discard(partition, key)

    def _delete_rows(self, rows: Sequence[tuple[str, str]]) -> None:
        if rows:
            self._db.executemany("DELETE FROM entries WHERE key = ?", [(key,) for key, _ in rows])
            if self._size is not None:
                self._size -= len(rows)

    def _purge_expired(self, now: float, force: bool = False) -> list[tuple[str, str]]:
        """Delete expired rows (inside a write transaction); returns them for `_forget`."""
        if not force and now - self._last_purge < self.purge_interval:
            return []
        self._last_purge = now
        rows = self._db.execute(
            "SELECT key, partition_id FROM entries WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
        ).fetchall()
        self._delete_rows(rows)
        self.expirations += len(rows)
        return rows

    def _decode(self, row: Sequence[Any]) -> CacheEntry | None:
        """Rebuild an entry from a row; a corrupt row is logged, counted once and skipped (None)."""
        key, _partition, _namespace, dimension, blob, expires_at, hits, last_hit_at, document = row
        try:
            data = json.loads(document)
            if not isinstance(data, dict):
                raise InvalidInputError(f"document is a {type(data).__name__}, not an object")
            data.update(expires_at=expires_at, hits=hits, last_hit_at=last_hit_at)
            vector = None if blob is None else vector_from_bytes(bytes(blob), dimension)
            return entry_from_dict(data, vector)
        except (ValueError, TypeError) as exc:  # InvalidInputError is a ValueError
            if key not in self._corrupt_keys:
                self._corrupt_keys.add(key)
                logger.warning("skipping corrupt row %r in SQLite cache %s: %s", key, self.path, exc)
            return None

    def _load(self, partition: str, now: float) -> PartitionIndex:
        """The partition's index, loaded from the file on first use (a partition without vectors: empty)."""
        loaded = self._indexes.get(partition)
        if loaded is not None:
            return loaded
        rows = self._db.execute(
            f"SELECT key, namespace, dimension, embedding FROM entries "
            f"WHERE partition_id = ? AND embedding IS NOT NULL AND {_LIVE} ORDER BY rowid",
            (partition, now),
        ).fetchall()
        loaded = self._indexes.new(rows[0][1] if rows else "")
        for key, _namespace, dimension, blob in rows:
            try:
                vector = unit_vector_from_bytes(bytes(blob), dimension)
            except (InvalidInputError, TypeError) as exc:
                if key not in self._corrupt_keys:
                    self._corrupt_keys.add(key)
                    logger.warning("skipping corrupt vector %r in SQLite cache %s: %s", key, self.path, exc)
                continue
            if loaded.dimension in (None, vector.size):
                loaded.put(key, vector)
        self._indexes.install(partition, loaded)
        return loaded

    def _partition_dimension(self, partition: str, key: str) -> int | None:
        loaded = self._indexes.get(partition)
        if loaded is not None:  # loaded: its vectors are all in memory
            return loaded.dimension
        row = self._db.execute(  # only a row whose column agrees with its own vector: one bad value decides nothing
            "SELECT dimension FROM entries WHERE partition_id = ? AND key != ? AND typeof(dimension) = 'integer' "
            "AND dimension > 0 AND typeof(embedding) = 'blob' AND length(embedding) = 4 * dimension LIMIT 1",
            (partition, key),
        ).fetchone()
        return None if row is None else int(row[0])

    # -- operations (worker thread) ---------------------------------------------------------------------

    def _get(self, key: str) -> CacheEntry | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM entries WHERE key = ? AND {_LIVE}", (key, time.time()))
        found = row.fetchone()
        return None if found is None else self._decode(found)

    def _set(self, key: str, entry: CacheEntry) -> None:
        try:
            document = json.dumps(entry_to_dict(entry, include_vector=False), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"entry {key!r} cannot be stored as JSON: {exc}") from exc
        blob = None if entry.embedding is None else vector_to_bytes(entry.embedding)
        now = time.time()
        expired = entry.is_expired(now)
        with self._writing():
            if entry.embedding is not None:
                dimension = self._partition_dimension(entry.partition_id, key)
                if dimension is not None and dimension != entry.embedding.size:
                    raise InvalidInputError(
                        f"partition {entry.partition_id} holds {dimension}-dimension vectors, got "
                        f"{entry.embedding.size}: an embedder change must change the partition (see Scope)"
                    )
            removed = self._purge_expired(now)
            previous = self._db.execute("SELECT partition_id FROM entries WHERE key = ?", (key,)).fetchone()
            if previous is not None:
                removed.append((key, previous[0]))
            if expired:
                self._delete_rows([(key, previous[0])] if previous is not None else [])
            else:
                row = (key, entry.partition_id, entry.namespace, entry.dimension, blob, entry.expires_at)
                self._db.execute(
                    "INSERT OR REPLACE INTO entries (key, partition_id, namespace, dimension, embedding, expires_at,"
                    " hits, last_hit_at, last_access, document) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*row, entry.hits, entry.last_hit_at, now, document),
                )
                if previous is None and self._size is not None:
                    self._size += 1
                removed.extend(self._evict(key))
            self._bump_generation()
        self._corrupt_keys.discard(key)
        self._forget(removed)
        if not expired and entry.embedding is not None and entry.partition_id in self._indexes:
            self._indexes.put(entry.partition_id, entry.namespace, key, entry.embedding)

    def _evict(self, keep: str) -> list[tuple[str, str]]:
        """Delete the least recently used rows beyond max_entries (never `keep`, the row just written)."""
        if self.max_entries is None:
            return []
        excess = self._count() - self.max_entries
        if excess <= 0:
            return []
        victims = self._db.execute(
            "SELECT key, partition_id FROM entries WHERE key != ? ORDER BY last_access, rowid LIMIT ?", (keep, excess)
        ).fetchall()
        self._delete_rows(victims)
        self.evictions += len(victims)
        return victims

    def _delete(self, key: str) -> bool:
        with self._writing():
            row = self._db.execute("SELECT partition_id FROM entries WHERE key = ?", (key,)).fetchone()
            if row is not None:
                self._delete_rows([(key, row[0])])
                self._bump_generation()
        if row is None:
            return False
        self._corrupt_keys.discard(key)
        self._forget([(key, row[0])])
        return True

    def _clear(self, namespace: str | None) -> None:
        with self._writing():
            if namespace is None:
                self._db.execute("DELETE FROM entries")
            else:
                self._db.execute("DELETE FROM entries WHERE namespace = ?", (namespace,))
            self._bump_generation()
        self._indexes.clear()
        self._corrupt_keys.clear()
        self._size = None

    def _iterate(self, namespace: str | None) -> list[tuple[str, CacheEntry]]:
        now = time.time()
        if namespace is None:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM entries WHERE {_LIVE} ORDER BY rowid", (now,))
        else:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE namespace = ? AND {_LIVE} ORDER BY rowid", (namespace, now)
            )
        result = []
        for row in rows:
            entry = self._decode(row)
            if entry is not None:
                result.append((str(row[0]), entry))
        return result

    def _search(self, query: Vector, threshold: float, k: int, namespace: str | None,
                partition: str | None) -> list[Match]:  # fmt: skip
        self._db.execute("BEGIN")  # one snapshot for loading, searching and fetching
        try:
            self._sync()
            now = time.time()
            if partition is not None:
                partitions = [partition]
            elif namespace is None:
                sql = "SELECT DISTINCT partition_id FROM entries WHERE dimension = ?"
                partitions = [row[0] for row in self._db.execute(sql, (query.size,))]
            else:
                sql = "SELECT DISTINCT partition_id FROM entries WHERE dimension = ? AND namespace = ?"
                partitions = [row[0] for row in self._db.execute(sql, (query.size, namespace))]
            matches: list[Match] = []
            for partition_id in partitions:
                loaded = self._load(partition_id, now)
                if namespace is not None and loaded.namespace != namespace:
                    continue
                matches.extend(self._indexes.search(partition_id, query, k, threshold, self._check, now=now))
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return matches

    def _check(self, _index: PartitionIndex, found: Found) -> list[CacheEntry | None]:
        """The candidates' live entries, read in the search's snapshot (None: expired, deleted or corrupt)."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE key IN ({', '.join('?' * len(found))}) AND {_LIVE}",
            (*(key for key, _ in found), time.time()),
        ).fetchall()
        entries = {str(row[0]): self._decode(row) for row in rows}
        return [entries.get(key) for key, _ in found]

    def _record_hit(self, key: str) -> None:
        now = time.time()
        self._db.execute(
            "UPDATE entries SET hits = hits + 1, last_hit_at = ?, last_access = ? WHERE key = ?", (now, now, key)
        )

    def _stats(self) -> dict[str, Any]:
        now = time.time()
        with self._writing():
            removed = self._purge_expired(now, force=True)
            if removed:
                self._bump_generation()
        self._forget(removed)
        size, partitions = self._db.execute(
            f"SELECT COUNT(*), COUNT(DISTINCT partition_id) FROM entries WHERE {_LIVE}", (now,)
        ).fetchone()
        page_count = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        return {
            "backend": "sqlite",
            "size": int(size),
            "path": self.path,
            "schema_version": SCHEMA_VERSION,
            "journal_mode": self._journal_mode,
            "partitions": int(partitions),
            "loaded_partitions": sum(1 for index in self._indexes.values() if len(index)),
            "index_bytes": self._indexes.nbytes,
            "file_bytes": page_count * page_size,
            "max_entries": self.max_entries,
            "evictions": self.evictions,
            "expirations": self.expirations,
            "corrupt_rows": len(self._corrupt_keys),
        }

    def _close_connection(self) -> None:
        self._shut_down = True
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self._indexes.clear()

    # -- the contract -----------------------------------------------------------------------------------

    async def get(self, key: str) -> CacheEntry | None:
        return await self._run(self._get, key)

    async def set(self, key: str, entry: CacheEntry) -> None:
        await self._run(self._set, key, entry)

    async def delete(self, key: str) -> bool:
        return await self._run(self._delete, key)

    async def clear(self, namespace: str | None = None) -> None:
        await self._run(self._clear, namespace)

    async def iterate(self, namespace: str | None = None) -> list[tuple[str, CacheEntry]]:
        return await self._run(self._iterate, namespace)

    async def _find_nearest(
        self, query: Vector, threshold: float, k: int, namespace: str | None, partition: str | None
    ) -> list[Match]:
        return await self._run(self._search, query, threshold, k, namespace, partition)

    async def record_hit(self, key: str) -> None:
        await self._run(self._record_hit, key)

    async def get_stats(self) -> dict[str, Any]:
        return await self._run(self._stats)

    async def close(self) -> None:
        """Close the connection and stop the worker thread; later calls raise CacheBackendError.

        Calls already started finish first (the worker runs them in order).
        """
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wrap_future(self._executor.submit(self._close_connection))
        finally:
            self._executor.shutdown(wait=False)
