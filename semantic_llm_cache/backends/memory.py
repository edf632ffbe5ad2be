"""In-process backend: a dict in LRU order, a vector index per partition (flat, HNSW when large), TTL by heap."""

from __future__ import annotations

import heapq
import json
import threading
import time
from collections import OrderedDict
from typing import Any

from semantic_llm_cache.config import CacheEntry, Vector, validate_max_entries
from semantic_llm_cache.errors import InvalidInputError
from semantic_llm_cache.index import VectorIndex
from semantic_llm_cache.index.auto import DEFAULT_HNSW_THRESHOLD, partition_index_factory
from semantic_llm_cache.storage import Match, StorageBackend

_ENTRY_OVERHEAD_BYTES = 400  # dataclass, dict slots and index bookkeeping, measured roughly with tracemalloc


class MemoryBackend(StorageBackend):
    """The embedded default: fast, bounded by `max_entries` (LRU, O(1) per operation), lost on exit.

    Thread-safe: every method runs under one lock and never awaits while holding it, so the backend can be
    shared by several event loops (e.g. a sync wrapper's loop thread and the application's loop).

    hnsw_threshold: a partition holding more vectors than this moves from the exact flat index to an HNSW
        graph, built in the background (needs the `hnsw` extra); None keeps every partition exact.
    """

    def __init__(self, max_entries: int | None = None, *, hnsw_threshold: int | None = DEFAULT_HNSW_THRESHOLD) -> None:
        self.max_entries = validate_max_entries(max_entries)
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._entry_bytes: dict[str, int] = {}
        self._index_factory = partition_index_factory(hnsw_threshold)
        self._indexes: dict[str, VectorIndex] = {}
        self._partition_namespace: dict[str, str] = {}
        self._expiry_heap: list[tuple[float, str]] = []
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
        index = self._indexes.get(entry.partition_id)
        if index is not None:
            index.remove(key)
            if len(index) == 0:
                del self._indexes[entry.partition_id]
                self._partition_namespace.pop(entry.partition_id, None)
        return entry

    def _purge_expired(self, now: float) -> None:
        heap = self._expiry_heap
        while heap and heap[0][0] <= now:
            expires_at, key = heapq.heappop(heap)
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at == expires_at:
                self._remove(key)
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
            index = self._indexes.get(entry.partition_id)
            if index is not None and entry.embedding is not None and index.dimension != entry.embedding.size:
                raise InvalidInputError(
                    f"partition {entry.partition_id} holds {index.dimension}-dimension vectors, got "
                    f"{entry.embedding.size}: an embedder change must change the partition (see Scope)"
                )
            now = time.time()
            self._purge_expired(now)
            self._remove(key)
            if entry.is_expired(now):
                return
            self._entries[key] = entry
            self._entry_bytes[key] = size
            self._bytes += size
            if entry.embedding is not None:
                index = self._indexes.get(entry.partition_id)
                if index is None:
                    index = self._indexes[entry.partition_id] = self._index_factory(int(entry.embedding.size))
                    self._partition_namespace[entry.partition_id] = entry.namespace
                index.add(key, entry.embedding)
            if entry.expires_at is not None:
                heapq.heappush(self._expiry_heap, (entry.expires_at, key))
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
                self._partition_namespace.clear()
                self._expiry_heap.clear()
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
            if partition is not None:
                partitions = [partition] if partition in self._indexes else []
            else:
                partitions = [p for p, ns in self._partition_namespace.items() if namespace is None or ns == namespace]
            matches: list[Match] = []
            for partition_id in partitions:
                index = self._indexes[partition_id]
                if index.dimension != query.size:
                    continue
                if namespace is not None and self._partition_namespace.get(partition_id) != namespace:
                    continue
                while True:
                    found = index.search(query, k, threshold)
                    live = [(key, score) for key, score in found if self._live(key, now) is not None]
                    if len(live) == len(found) or partition_id not in self._indexes:
                        break  # no expired entry among them, or the partition emptied: nothing more to find
                matches.extend((key, self._entries[key], score) for key, score in live)
            return matches

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
                "approx_bytes": self._bytes + sum(index.nbytes for index in self._indexes.values()),
                "evictions": self.evictions,
                "expirations": self.expirations,
            }
