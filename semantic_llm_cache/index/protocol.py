"""What a backend needs of a partition's vector index, and of what builds one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from semantic_llm_cache.config import Vector


class VectorIndex(Protocol):
    """An index over one partition's unit vectors (inner product = cosine): FlatIndex, HNSWIndex or AutoIndex."""

    dimension: int

    def __len__(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...

    @property
    def nbytes(self) -> int: ...

    def add(self, key: str, vector: Vector) -> None: ...

    def remove(self, key: str) -> bool: ...

    def search(self, query: Vector, k: int = 1, threshold: float = -1.0) -> list[tuple[str, float]]: ...


IndexFactory = Callable[[int], VectorIndex]
"""Builds a partition's index from the dimension of its vectors."""
