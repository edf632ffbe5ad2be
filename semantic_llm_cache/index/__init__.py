"""Vector indexes used by backends that do not search on a server."""

from __future__ import annotations

from typing import Protocol

from semantic_llm_cache.config import Vector
from semantic_llm_cache.index.auto import DEFAULT_HNSW_THRESHOLD, AutoIndex, partition_index_factory
from semantic_llm_cache.index.flat import FlatIndex
from semantic_llm_cache.index.hnsw import HNSWIndex


class VectorIndex(Protocol):
    """What a backend needs of an index over one partition's unit vectors (inner product = cosine)."""

    dimension: int

    def __len__(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...

    @property
    def nbytes(self) -> int: ...

    def add(self, key: str, vector: Vector) -> None: ...

    def remove(self, key: str) -> bool: ...

    def search(self, query: Vector, k: int = 1, threshold: float = -1.0) -> list[tuple[str, float]]: ...


__all__ = ["DEFAULT_HNSW_THRESHOLD", "AutoIndex", "FlatIndex", "HNSWIndex", "VectorIndex", "partition_index_factory"]
