"""The package's exceptions: one base class, one subclass per kind of failure a user can meet."""

from __future__ import annotations


class SemanticCacheError(Exception):
    """Base class of every error raised by semantic_llm_cache."""


class InvalidInputError(SemanticCacheError, ValueError):
    """A prompt, response, vector or option was rejected before anything was written."""


class ConfigurationError(SemanticCacheError, ValueError):
    """A configuration value is out of range or inconsistent."""


class CacheBackendError(SemanticCacheError):
    """A storage backend failed (connection lost, timeout, corrupt data)."""


class EmbeddingError(SemanticCacheError):
    """The embedder failed or returned vectors of the wrong shape or with non-finite values."""


class VerifierError(SemanticCacheError):
    """A verifier failed or ran out of time (raised only with on_error="raise"; otherwise the call misses)."""
