"""LangChain integration of async-semantic-llm-cache: a semantic `BaseCache`, a caching chat-model wrapper, and
`SemanticCacheRunnable`, a chain cached on its question."""

from langchain_semantic_cache._convert import CACHE_METADATA_KEY
from langchain_semantic_cache.cache import SemanticCache
from langchain_semantic_cache.chat_model import SemanticCacheChatModel
from langchain_semantic_cache.runnable import SemanticCacheRunnable, with_semantic_cache

__all__ = [
    "CACHE_METADATA_KEY",
    "SemanticCache",
    "SemanticCacheChatModel",
    "SemanticCacheRunnable",
    "with_semantic_cache",
]
