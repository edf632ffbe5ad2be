"""Versioned JSON codec for entries and responses. Never pickle: data read back is only ever JSON."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from semantic_llm_cache.config import CacheEntry, Vector, as_unit_vector
from semantic_llm_cache.errors import InvalidInputError
from semantic_llm_cache.values import check_json_value

FORMAT_VERSION = 1


def vector_to_bytes(vector: np.ndarray) -> bytes:
    """Little-endian float32 bytes of a vector."""
    return np.asarray(vector, dtype="<f4").tobytes()


def vector_from_bytes(data: bytes, dimension: int | None = None) -> np.ndarray:
    """Inverse of vector_to_bytes; raises InvalidInputError for a length that is not `dimension` floats."""
    if not isinstance(data, bytes) or len(data) % 4 or not data:
        raise InvalidInputError(
            f"vector blob of {len(data) if isinstance(data, bytes) else '?'} bytes is not float32 data"
        )
    vector = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if dimension is not None and vector.size != dimension:
        raise InvalidInputError(f"vector has {vector.size} dimensions, expected {dimension}")
    return vector


def unit_vector_from_bytes(data: bytes, dimension: int | None = None) -> Vector:
    """A stored vector, checked (float32, `dimension` long, finite, non-zero) and L2-normalised.

    The one check of vectors read back from storage: every failure is an InvalidInputError.
    """
    return as_unit_vector(vector_from_bytes(data, dimension))


def entry_to_dict(entry: CacheEntry, *, include_vector: bool = True) -> dict[str, Any]:
    """A JSON-able dict of `entry` (the vector as base64 float32 when included)."""
    data: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "prompt": entry.prompt,
        "response": entry.response,
        "partition_id": entry.partition_id,
        "namespace": entry.namespace,
        "embedder": entry.embedder,
        "created_at": entry.created_at,
        "expires_at": entry.expires_at,
        "hits": entry.hits,
        "last_hit_at": entry.last_hit_at,
        "metadata": entry.metadata,
        "compute_seconds": entry.compute_seconds,
        "tokens": entry.tokens,
        "min_similarity": entry.min_similarity,
        "evidence": entry.evidence,
    }
    if include_vector and entry.embedding is not None:
        data["embedding"] = base64.b64encode(vector_to_bytes(entry.embedding)).decode("ascii")
    return data


def entry_from_dict(data: Any, embedding: np.ndarray | None = None) -> CacheEntry:
    """Rebuild an entry from `entry_to_dict` output; raises InvalidInputError for anything malformed."""
    if not isinstance(data, dict):
        raise InvalidInputError(f"an entry must be a JSON object, got {type(data).__name__}")
    version = data.get("format", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise InvalidInputError(f"entry format {version!r} is not supported (this version reads {FORMAT_VERSION})")
    try:
        if embedding is None and data.get("embedding") is not None:
            embedding = vector_from_bytes(base64.b64decode(data["embedding"], validate=True))
        return CacheEntry(
            prompt=data["prompt"],
            response=data["response"],
            partition_id=data["partition_id"],
            namespace=data.get("namespace", "default"),
            embedding=embedding,
            embedder=data.get("embedder"),
            created_at=float(data["created_at"]),
            expires_at=None if data.get("expires_at") is None else float(data["expires_at"]),
            hits=int(data.get("hits", 0)),
            last_hit_at=None if data.get("last_hit_at") is None else float(data["last_hit_at"]),
            metadata=data.get("metadata") or {},
            compute_seconds=None if data.get("compute_seconds") is None else float(data["compute_seconds"]),
            tokens=None if data.get("tokens") is None else int(data["tokens"]),
            min_similarity=float(data.get("min_similarity", 0.0)),
            evidence=data.get("evidence") or {},
        )
    except InvalidInputError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise InvalidInputError(f"malformed entry: {type(exc).__name__}: {exc}") from exc


def dumps_entry(entry: CacheEntry, *, include_vector: bool = True) -> str:
    """Entry as one line of JSON."""
    return json.dumps(entry_to_dict(entry, include_vector=include_vector), ensure_ascii=False, allow_nan=False)


def loads_entry(text: str | bytes, embedding: np.ndarray | None = None) -> CacheEntry:
    """Inverse of dumps_entry."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"entry is not valid JSON: {exc}") from exc
    return entry_from_dict(data, embedding)


__all__ = [
    "FORMAT_VERSION",
    "check_json_value",
    "dumps_entry",
    "entry_from_dict",
    "entry_to_dict",
    "loads_entry",
    "unit_vector_from_bytes",
    "vector_from_bytes",
    "vector_to_bytes",
]
