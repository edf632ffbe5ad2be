"""CacheEntry (one stored answer) and CacheConfig (the engine's options), both validated on construction."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from semantic_llm_cache.errors import ConfigurationError, InvalidInputError
from semantic_llm_cache.values import check_json_value, check_text, shown

#: Cosine similarity at or above which a stored prompt may answer a new one. Calibrated on the Quora
#: question pairs in ../shared/data/qqp_dev.jsonl with the default embedder and the answer guard on (re-measured
#: for the light default: the same hit rate, 0.146, and precision, 0.913, as the torch model)
#: (`python benchmarks/quality.py` reproduces it; the README states its precision and hit rate).
DEFAULT_THRESHOLD = 0.94

#: The longest TTL an entry may be given: 100 years. Longer ones overflow some backends' expiry clocks (Redis
#: PEXPIREAT), so every backend refuses them alike; use None for an entry that never expires.
MAX_TTL = 100 * 365.25 * 24 * 3600.0
#: The latest expiry timestamp an entry may carry (9999-12-31T23:59:59Z).
MAX_TIMESTAMP = 253_402_300_799.0

Vector = npt.NDArray[np.float32]
OnError = Literal["log", "raise"]


def validate_threshold(value: float, name: str = "threshold") -> float:
    """Return `value` as a float if it is a cosine similarity in [0, 1], else raise ConfigurationError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigurationError(
            f"{name} must be a cosine similarity between 0 and 1 inclusive (higher = stricter), got {shown(value)}"
        )
    return float(value)


def validate_ttl(value: float | None, name: str = "ttl") -> float | None:
    """Return `value` if it is None (never expires) or a positive finite number of seconds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TTL:
        raise ConfigurationError(
            f"{name} must be a positive number of seconds up to {MAX_TTL:.0f} (100 years), or None (never expire); "
            f"got {shown(value)}"
        )
    return float(value)


def validate_max_entries(value: int | None, name: str = "max_entries") -> int | None:
    """Return `value` if it is None (unbounded) or a positive integer, else raise ConfigurationError."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ConfigurationError(f"{name} must be a positive integer or None, got {shown(value)}")
    return value


_UNIT_TOLERANCE = 1e-5  # float32 rounding of a normalised 384-d vector stays within ~1e-7 of norm 1


def as_unit_vector(values: Any, *, dimension: int | None = None) -> Vector:
    """Check a vector (finite, 1-D, non-zero, of the expected dimension) and return it L2-normalised as float32."""
    try:
        vector = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"embedding must be a sequence of numbers: {exc}") from exc
    if vector.ndim != 1 or vector.size == 0:
        raise InvalidInputError(f"embedding must be a non-empty 1-D vector, got shape {vector.shape}")
    if dimension is not None and vector.size != dimension:
        raise InvalidInputError(f"embedding has dimension {vector.size}, expected {dimension}")
    squared = float(np.dot(vector, vector))  # one call: NaN or infinite when a component is (or when it overflows)
    if not math.isfinite(squared):
        if not np.all(np.isfinite(vector)):
            raise InvalidInputError("embedding contains NaN or infinite values")
        squared = float(np.dot(vector.astype(np.float64), vector.astype(np.float64)))  # large, finite components
    norm = math.sqrt(squared)
    if norm == 0.0:
        raise InvalidInputError("embedding is the zero vector; it has no direction to compare")
    if abs(norm - 1.0) <= _UNIT_TOLERANCE:  # already unit: dividing again would change the last bits
        return np.ascontiguousarray(vector, dtype=np.float32)
    return np.ascontiguousarray(vector / norm, dtype=np.float32)


@dataclass
class CacheEntry:
    """One cached answer.

    `response` is any JSON value. `embedding` is the L2-normalised vector of the prompt text that was embedded
    (None for an exact-only entry). `embedder` names the model that made it: vectors of different embedders are
    never compared. `min_similarity` is raised by negative feedback so the entry stops serving a neighbourhood
    (above 1: the entry serves only exact hits). `evidence`: what the error budget learned about this entry's
    answer (bounded: two counters and the last few outcomes; see error_budget.read_evidence); empty otherwise.
    """

    prompt: str
    response: Any
    partition_id: str
    namespace: str = "default"
    embedding: Vector | None = None
    embedder: str | None = None
    created_at: float = field(default_factory=time.time)
    expires_at: float | None = None
    hits: int = 0
    last_hit_at: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    compute_seconds: float | None = None
    tokens: int | None = None
    min_similarity: float = 0.0
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise InvalidInputError(f"prompt must be a string, got {type(self.prompt).__name__}")
        check_text(self.prompt, "prompt")
        if not isinstance(self.partition_id, str) or not self.partition_id:
            raise InvalidInputError("partition_id must be a non-empty string")
        check_text(self.partition_id, "partition_id")
        if not isinstance(self.namespace, str) or not self.namespace:
            raise InvalidInputError("namespace must be a non-empty string")
        check_text(self.namespace, "namespace")
        if self.embedder is not None:
            if not isinstance(self.embedder, str):
                raise InvalidInputError(f"embedder must be a name (str) or None, got {type(self.embedder).__name__}")
            check_text(self.embedder, "embedder")
        check_json_value(self.response)
        if self.embedding is not None:
            self.embedding = as_unit_vector(self.embedding)
        if self.expires_at is not None and (
            isinstance(self.expires_at, bool)
            or not isinstance(self.expires_at, (int, float))
            or not 0 <= self.expires_at <= MAX_TIMESTAMP
        ):
            raise InvalidInputError(
                f"expires_at must be a Unix timestamp between 0 and {MAX_TIMESTAMP:.0f} (year 9999) or None, "
                f"got {shown(self.expires_at)}"
            )
        if not isinstance(self.metadata, dict):
            raise InvalidInputError("metadata must be a dict")
        check_json_value(self.metadata, "metadata")
        if not isinstance(self.evidence, dict):
            raise InvalidInputError("evidence must be a dict")
        check_json_value(self.evidence, "evidence")
        if (
            isinstance(self.min_similarity, bool)
            or not isinstance(self.min_similarity, (int, float))
            or not 0.0 <= self.min_similarity <= 2.0
        ):
            raise InvalidInputError(
                f"min_similarity must be between 0 and 2 (above 1: exact hits only), got {shown(self.min_similarity)}"
            )
        self.min_similarity = float(self.min_similarity)
        for name in ("hits", "tokens"):
            count = getattr(self, name)
            if count is not None and (isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < 2**63):
                raise InvalidInputError(f"{name} must be a non-negative integer below 2**63, got {shown(count)}")
        for name in ("created_at", "last_hit_at", "compute_seconds"):
            seconds = getattr(self, name)
            if name != "created_at" and seconds is None:
                continue
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= MAX_TIMESTAMP:
                raise InvalidInputError(
                    f"{name} must be a number of seconds between 0 and {MAX_TIMESTAMP:.0f}, got {shown(seconds)}"
                )

    @property
    def dimension(self) -> int | None:
        """The embedding's dimension, or None for an entry without a vector."""
        return None if self.embedding is None else int(self.embedding.size)

    def is_expired(self, now: float | None = None) -> bool:
        """True once the entry's expiry time has passed."""
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at

    def ttl_remaining(self, now: float | None = None) -> float | None:
        """Seconds until expiry (None: never expires)."""
        if self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)


@dataclass(frozen=True)
class CacheConfig:
    """Options of a SemanticCache, checked when the object is built.

    threshold: cosine similarity in [0, 1]; a stored prompt answers when similarity >= threshold.
    ttl: default seconds an entry lives (None: until evicted or deleted).
    max_entries: bound for the default in-memory backend (LRU eviction); None for unbounded.
    namespace: tenant used when a call's Scope names none.
    answer_guard: refuse semantic hits whose prompts differ in numbers, negation, names or opposites.
    on_error: "log" (fail open: a backend or embedder failure is a miss) or "raise".
    timeout: seconds a backend or embedder call may take before it counts as a failure.
    candidates: how many nearest entries a semantic lookup considers (the guard may refuse the closest).
    max_prompt_chars: the longest prompt the cache takes (after whitespace is collapsed). A longer one is not
        cached: `lookup` misses, `resolve`/`get_or_compute` compute without storing, `store` raises
        InvalidInputError; each is counted as `prompt_too_long`.
    overlap_reads: start a lookup's embedding, then its semantic search, while its exact-key read is still in
        flight, so that a lookup that is not an exact hit waits for one backend round trip less. None (the
        default): when the backend's reads are round trips (`remote_reads`: Redis), not for memory or SQLite.
        The price: an exact hit that arrives while the embedding is under way has paid for that embedding.
    """

    threshold: float = DEFAULT_THRESHOLD
    ttl: float | None = None
    max_entries: int | None = 100_000
    namespace: str = "default"
    answer_guard: bool = True
    on_error: OnError = "log"
    timeout: float = 10.0
    candidates: int = 4
    max_prompt_chars: int = 1_000_000
    overlap_reads: bool | None = None

    def __post_init__(self) -> None:
        validate_threshold(self.threshold)
        validate_ttl(self.ttl)
        validate_max_entries(self.max_entries)
        if not isinstance(self.namespace, str) or not self.namespace.strip():
            raise ConfigurationError(f"namespace must be a non-empty string, got {shown(self.namespace)}")
        if self.on_error not in ("log", "raise"):
            raise ConfigurationError(f'on_error must be "log" or "raise", got {shown(self.on_error)}')
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or not 0 < self.timeout <= 3600:
            raise ConfigurationError(
                f"timeout must be a number of seconds above 0 and at most 3600, got {shown(self.timeout)}"
            )
        if isinstance(self.candidates, bool) or not isinstance(self.candidates, int) or self.candidates < 1:
            raise ConfigurationError(f"candidates must be an integer >= 1, got {shown(self.candidates)}")
        if (
            isinstance(self.max_prompt_chars, bool)
            or not isinstance(self.max_prompt_chars, int)
            or self.max_prompt_chars < 1
        ):
            raise ConfigurationError(f"max_prompt_chars must be an integer >= 1, got {shown(self.max_prompt_chars)}")
        if self.overlap_reads is not None and not isinstance(self.overlap_reads, bool):
            raise ConfigurationError(f"overlap_reads must be True, False or None, got {shown(self.overlap_reads)}")
