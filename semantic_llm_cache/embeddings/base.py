"""The Embedder protocol and the checks every embedder's output goes through."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from semantic_llm_cache.errors import EmbeddingError

Matrix = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors, asynchronously.

    `name` is stable across processes and identifies the model: it is part of every partition, so vectors of
    two embedders are never compared. `dimension` is the vector size (None until known, for embedders that
    learn it from their first call).

    An embedder may also state its window: `max_tokens` (int, or None when unknown) and `count_tokens(text)
    -> int` in its own tokens. The engine then serves a longer prompt by exact match only: a vector of a
    truncated text says nothing about the part the model did not read.
    """

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int | None: ...

    async def embed(self, texts: Sequence[str]) -> Matrix:
        """Return an (len(texts), dimension) float32 array of unit vectors."""
        ...


def normalized_matrix(vectors: Any, count: int, dimension: int | None = None) -> Matrix:
    """Validate raw embedder output (count rows, finite, non-zero) and return it as unit float32 rows."""
    try:
        matrix = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise EmbeddingError(f"embedder returned something that is not a matrix of numbers: {exc}") from exc
    if matrix.ndim != 2 or matrix.shape[0] != count or matrix.shape[1] == 0:
        raise EmbeddingError(f"embedder returned shape {matrix.shape} for {count} texts; expected ({count}, d)")
    if dimension is not None and matrix.shape[1] != dimension:
        raise EmbeddingError(f"embedder returned dimension {matrix.shape[1]}, expected {dimension}")
    if count == 1:  # a lookup's one vector: one dot product checks it (NaN or infinite when a component is)
        with np.errstate(over="ignore", invalid="ignore"):  # huge components: checked below in float64
            squared = float(np.dot(matrix[0], matrix[0]))
        if math.isfinite(squared) and squared > 0.0:
            return np.ascontiguousarray(matrix / np.float32(math.sqrt(squared)), dtype=np.float32)
    if not np.all(np.isfinite(matrix)):
        raise EmbeddingError("embedder returned NaN or infinite values")
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1, keepdims=True)  # float64: no overflow to inf
    if np.any(norms == 0):
        raise EmbeddingError("embedder returned a zero vector, which has no direction to compare")
    return np.ascontiguousarray(matrix / norms, dtype=np.float32)
