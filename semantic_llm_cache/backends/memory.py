"""In-process backend: a dict in LRU order, a vector index per partition (flat, HNSW when large), TTL by heap."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from typing import Any

from semantic_llm_cache.config import CacheEntry, Vector, validate_max_entries
from semantic_llm_cache.index.auto import DEFAULT_HNSW_MIN_ENTRIES, renamed_min_entries
from semantic_llm_cache.index.partitions import ExpiryHeap, Found, PartitionIndex, PartitionIndexes
from semantic_llm_cache.storage import Match, StorageBackend

_ENTRY_OVERHEAD_BYTES = 400  # dataclass, dict slots and index bookkeeping, measured roughly with tracemalloc


class MemoryBackend(StorageBackend):
    """The embedded default: fast, bounded by `max_entries` (LRU, O(1) per operation), lost on exit.

    Thread-safe: every method runs under one lock and never awaits while holding it, so the backend can be
    shared by several event loops (e.g. a sync wrapper's loop thread and the application's loop).

    hnsw_min_entries: a partition holding more vectors than this moves from the exact flat index to an HNSW
        graph, built in the background (needs the `hnsw` extra), or past 3x that while its exact searches stay
        narrow (AutoIndex); None keeps every partition exact.
    """

    def __init__(
        self, max_entries: int | None = None, *, hnsw_min_entries: int | None = DEFAULT_HNSW_MIN_ENTRIES, **renamed: Any
    ) -> None:
        hnsw_min_entries = renamed_min_entries(hnsw_min_entries, renamed)
        self.max_entries = validate_max_entries(max_entries)
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._entry_bytes: dict[str, int] = {}
        self._indexes: PartitionIndexes[str, PartitionIndex] = PartitionIndexes(PartitionIndex, hnsw_min_entries)
        self._expiry = ExpiryHeap()
        self._lock = threading.Lock()
        self._bytes = 0
        self.evictions = 0
        self.expirations = 0

    # -- internal helpers (call with the lock held) -------------------------------------------------------

    def _remove(self, key: str) -> CacheEntry | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self._bytes -= self._entry_bytes.pop(key, 0)
        self._expiry.cancel(key)
        if entry.embedding is not None:
            self._indexes.discard(entry.partition_id, key)
        return entry

    def _purge_expired(self, now: float) -> None:
        for key in self._expiry.pop_due(now):
            if self._remove(key) is not None:
                self.expirations += 1

    def _live(self, key: str, now: float) -> CacheEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.is_expired(now):
            self._remove(key)
            self.expirations += 1
            return None
        return entry

    # -- the contract -----------------------------------------------------------------------------------

    async def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._live(key, time.time())
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    async def set(self, key: str, entry: CacheEntry) -> None:
        size = _ENTRY_OVERHEAD_BYTES + len(entry.prompt.encode()) + len(json.dumps(entry.response, default=str))
        if entry.embedding is not None:
            size += entry.embedding.nbytes
        with self._lock:
            if entry.embedding is not None:
                self._indexes.check_dimension(entry.partition_id, entry.embedding.size)
            now = time.time()
            self._purge_expired(now)
            self._remove(key)
            if entry.is_expired(now):
                return
            self._entries[key] = entry
            self._entry_bytes[key] = size
            self._bytes += size
            if entry.embedding is not None:
                self._indexes.put(entry.partition_id, entry.namespace, key, entry.embedding)
            self._expiry.schedule(key, entry.expires_at)
            if self.max_entries is not None:
                while len(self._entries) > self.max_entries:
                    oldest_key = next(iter(self._entries))
                    self._remove(oldest_key)
                    self.evictions += 1

    async def delete(self, key: str) -> bool:
        with self._lock:
            return self._remove(key) is not None

    async def clear(self, namespace: str | None = None) -> None:
        with self._lock:
            if namespace is None:
                self._entries.clear()
                self._entry_bytes.clear()
                self._indexes.clear()
                self._expiry.clear()
                self._bytes = 0
                return
            for key in [k for k, e in self._entries.items() if e.namespace == namespace]:
                self._remove(key)

    async def iterate(self, namespace: str | None = None) -> list[tuple[str, CacheEntry]]:
        with self._lock:
            now = time.time()
            self._purge_expired(now)
            return [
                (key, entry)
                for key, entry in self._entries.items()
                if not entry.is_expired(now) and (namespace is None or entry.namespace == namespace)
            ]

    async def _find_nearest(
        self, query: Vector, threshold: float, k: int, namespace: str | None, partition: str | None
    ) -> list[Match]:
        with self._lock:
            now = time.time()
            matches: list[Match] = []
            for partition_id in [partition] if partition is not None else list(self._indexes):
                index = self._indexes.get(partition_id)
                if index is None or (namespace is not None and index.namespace != namespace):
                    continue
                matches.extend(self._indexes.search(partition_id, query, k, threshold, self._check, now=now))
            return matches

    def _check(self, _index: PartitionIndex, found: Found) -> list[CacheEntry | None]:
        now = time.time()
        return [self._live(key, now) for key, _ in found]

    async def record_hit(self, key: str) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.hits += 1
                entry.last_hit_at = time.time()
                self._entries.move_to_end(key)

    async def get_stats(self) -> dict[str, Any]:
        with self._lock:
            self._purge_expired(time.time())
            return {
                "backend": "memory",
                "size": len(self._entries),
                "partitions": len(self._indexes),
                "max_entries": self.max_entries,
                "approx_bytes": self._bytes + self._indexes.nbytes,
                "evictions": self.evictions,
                "expirations": self.expirations,
            }
