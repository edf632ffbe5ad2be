"""The async storage contract every backend implements (the seed's seven methods, plus close and top-k).

Like aiocache's `BaseCache`, the public search methods hold the policy once and call one small primitive that
each backend implements: `find_similar` is the first of `find_nearest`, and `find_nearest` checks the threshold,
normalises the vector, answers `k <= 0`, then sorts and trims what the backend's `_find_nearest` found.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import numpy as np

from semantic_llm_cache.call_options import WHERE_CANDIDATE_FACTOR, CallOptions
from semantic_llm_cache.config import CacheEntry, Vector, as_unit_vector, validate_threshold
from semantic_llm_cache.encryption import is_sealed

Match = tuple[str, CacheEntry, float]
"""(key, entry, similarity) as returned by similarity search."""


def filter_where(matches: list[Match], wanted: CallOptions | None) -> list[Match]:
    """The matches whose entry's metadata holds every `where` value (encrypted entries pass: the cache checks);
    all of them when nothing is wanted."""
    if wanted is None:
        return matches
    return [match for match in matches if is_sealed(match[1]) or wanted.matches(match[1].metadata)]


def best_first(matches: list[Match], k: int) -> list[Match]:
    """The `k` most similar of `matches`, most similar first."""
    matches.sort(key=lambda match: match[2], reverse=True)
    return matches[:k]


class StorageBackend(ABC):
    """Abstract base class for async cache storage backends.

    Rules every backend keeps:
    - an expired entry is never returned, by any method;
    - similarity is cosine similarity of L2-normalised vectors, compared inclusively (``>= threshold``);
    - `partition` is a hard wall: a search given one never looks at another partition's entries;
    - entries whose vector has a different dimension from the query are never compared.
    Failures are raised as `CacheBackendError`; the engine decides whether to fail open.
    """

    @abstractmethod
    async def get(self, key: str) -> CacheEntry | None:
        """Return the entry stored under `key`, or None if there is none or it has expired."""

    @abstractmethod
    async def set(self, key: str, entry: CacheEntry) -> None:
        """Store `entry` under `key`, replacing any entry there (its `expires_at` is the entry's own)."""

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Delete the entry under `key`; True if one was there."""

    @abstractmethod
    async def clear(self, namespace: str | None = None) -> None:
        """Delete every entry, or only those of `namespace`."""

    @abstractmethod
    async def iterate(self, namespace: str | None = None) -> list[tuple[str, CacheEntry]]:
        """Return (key, entry) for every live entry, optionally only those of `namespace`."""

    async def find_similar(
        self,
        embedding: Sequence[float] | np.ndarray,
        threshold: float,
        namespace: str | None = None,
        *,
        partition: str | None = None,
    ) -> Match | None:
        """Return the most similar live entry with similarity >= threshold, or None.

        `namespace` restricts the search to one tenant; `partition` to one partition (the engine always
        passes it). Ties are broken arbitrarily.
        """
        matches = await self.find_nearest(embedding, threshold, 1, namespace, partition=partition)
        return matches[0] if matches else None

    @abstractmethod
    async def get_stats(self) -> dict[str, Any]:
        """Return backend statistics: at least `backend` (its name) and `size` (live entries)."""

    async def find_nearest(
        self,
        embedding: Sequence[float] | np.ndarray,
        threshold: float,
        k: int,
        namespace: str | None = None,
        *,
        partition: str | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> list[Match]:
        """Return up to `k` live entries with similarity >= threshold, most similar first.

        `where` (metadata field -> value, exact match) keeps only entries whose metadata holds those values; a
        backend that can filter in its index does (`_find_nearest_where`), the others are searched for
        `WHERE_CANDIDATE_FACTOR` times `k` candidates that are then filtered here. An encrypted entry (whose
        metadata only the cache can read) is passed on for the cache to check.
        """
        threshold = validate_threshold(threshold)
        query = as_unit_vector(embedding)
        if k <= 0:
            return []
        wanted = CallOptions(where=where) if where else None  # checks it
        found = await self._candidates(query, threshold, k, namespace, partition, where)
        return best_first(filter_where(found, wanted), k)

    async def get_and_find_nearest(
        self,
        key: str,
        embedding: Sequence[float] | np.ndarray,
        threshold: float,
        k: int,
        *,
        partition: str | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> tuple[CacheEntry | None, list[Match]]:
        """`get(key)` and `find_nearest(...)` in one call (a lookup whose vector was ready at once): a backend
        whose reads are round trips sends the two together (`_get_and_candidates`)."""
        threshold = validate_threshold(threshold)
        query = as_unit_vector(embedding)
        if k <= 0:
            return await self.get(key), []
        wanted = CallOptions(where=where) if where else None  # checks it
        entry, found = await self._get_and_candidates(key, query, threshold, k, partition, where)
        return entry, best_first(filter_where(found, wanted), k)

    async def _candidates(
        self,
        query: Vector,
        threshold: float,
        k: int,
        namespace: str | None,
        partition: str | None,
        where: Mapping[str, Any] | None,
    ) -> list[Match]:
        """The search's candidates, unsorted, `where` not yet checked: through the index's own filter when the
        backend has one, else `WHERE_CANDIDATE_FACTOR` times `k` of them for `find_nearest` to filter."""
        if not where:
            return await self._find_nearest(query, threshold, k, namespace, partition)
        if self.filters_where:
            return await self._find_nearest_where(query, threshold, k, namespace, partition, where)
        return await self._find_nearest(query, threshold, k * WHERE_CANDIDATE_FACTOR, namespace, partition)

    async def _get_and_candidates(
        self,
        key: str,
        query: Vector,
        threshold: float,
        k: int,
        partition: str | None,
        where: Mapping[str, Any] | None,
    ) -> tuple[CacheEntry | None, list[Match]]:
        """`get(key)` and `_candidates(...)`; a backend whose reads are round trips sends them together."""
        return await self.get(key), await self._candidates(query, threshold, k, None, partition, where)

    #: True for a backend whose index filters on metadata itself (it then implements `_find_nearest_where`)
    filters_where = False

    #: True for a backend whose reads are network round trips: the engine then overlaps a lookup's exact read
    #: with its embedding and search (CacheConfig.overlap_reads)
    remote_reads = False

    async def _find_nearest_where(
        self,
        query: Vector,
        threshold: float,
        k: int,
        namespace: str | None,
        partition: str | None,
        where: Mapping[str, Any],
    ) -> list[Match]:
        """The backend's search restricted to entries whose metadata holds `where` (only if `filters_where`)."""
        raise NotImplementedError

    @abstractmethod
    async def _find_nearest(
        self, query: Vector, threshold: float, k: int, namespace: str | None, partition: str | None
    ) -> list[Match]:
        """The backend's search: live entries with similarity >= threshold, at least the `k` best of them (in any
        order; more are trimmed). `query` is a unit vector, `threshold` checked, `k` >= 1."""

    async def record_hit(self, key: str) -> None:  # noqa: B027 - optional hook, no-op by default
        """Count one served hit for `key` (hits, last_hit_at; LRU recency where the backend has it)."""

    async def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release connections and threads. The backend must not be used afterwards."""

    async def __aenter__(self) -> StorageBackend:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
