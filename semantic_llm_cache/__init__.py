"""async-semantic-llm-cache: serve a stored LLM answer when a new prompt means the same as an answered one."""

from semantic_llm_cache._sync import run_sync
from semantic_llm_cache.backends.memory import MemoryBackend
from semantic_llm_cache.cache import ResolvedStream, ResolvedSyncStream, SemanticCache
from semantic_llm_cache.config import DEFAULT_THRESHOLD, CacheConfig, CacheEntry
from semantic_llm_cache.decorators import cached
from semantic_llm_cache.embeddings import CallableEmbedder, Embedder, LocalEmbedder, as_embedder
from semantic_llm_cache.error_budget import AnswerSimilarity, ErrorBudget, same_text
from semantic_llm_cache.errors import (
    CacheBackendError,
    ConfigurationError,
    EmbeddingError,
    InvalidInputError,
    SemanticCacheError,
    VerifierError,
)
from semantic_llm_cache.results import CacheHit, Computed, Resolution
from semantic_llm_cache.scope import Scope
from semantic_llm_cache.storage import StorageBackend
from semantic_llm_cache.temperature import NeverAbove, ServeAlways, SkipByTemperature, TemperaturePolicy
from semantic_llm_cache.verifiers import CallableVerifier, Candidate, Verdict, Verifier

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_THRESHOLD",
    "AnswerSimilarity",
    "CacheBackendError",
    "CacheConfig",
    "CacheEntry",
    "CacheHit",
    "CallableEmbedder",
    "CallableVerifier",
    "Candidate",
    "Computed",
    "ConfigurationError",
    "Embedder",
    "EmbeddingError",
    "ErrorBudget",
    "InvalidInputError",
    "LocalEmbedder",
    "MemoryBackend",
    "NeverAbove",
    "Resolution",
    "ResolvedStream",
    "ResolvedSyncStream",
    "Scope",
    "SemanticCache",
    "SemanticCacheError",
    "ServeAlways",
    "SkipByTemperature",
    "StorageBackend",
    "TemperaturePolicy",
    "Verdict",
    "Verifier",
    "VerifierError",
    "__version__",
    "as_embedder",
    "cached",
    "run_sync",
    "same_text",
]
