"""The async storage contract every backend implements (the seed's seven methods, plus close and top-k).

Like aiocache's `BaseCache`, the public search methods hold the policy once and call one small primitive that
each backend implements: `find_similar` is the first of `find_nearest`, and `find_nearest` checks the threshold,
normalises the vector, answers `k <= 0`, then sorts and trims what the backend's `_find_nearest` found.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import numpy as np

from semantic_llm_cache.config import CacheEntry, Vector, as_unit_vector, validate_threshold

Match = tuple[str, CacheEntry, float]
"""(key, entry, similarity) as returned by similarity search."""


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
    ) -> list[Match]:
        """Return up to `k` live entries with similarity >= threshold, most similar first."""
        threshold = validate_threshold(threshold)
        query = as_unit_vector(embedding)
        if k <= 0:
            return []
        return best_first(await self._find_nearest(query, threshold, k, namespace, partition), k)

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
