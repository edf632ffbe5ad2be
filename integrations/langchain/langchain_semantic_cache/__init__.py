"""LangChain integration of async-semantic-llm-cache: a semantic `BaseCache` and a caching chat-model wrapper."""

from langchain_semantic_cache._convert import CACHE_METADATA_KEY
from langchain_semantic_cache.cache import SemanticCache
from langchain_semantic_cache.chat_model import SemanticCacheChatModel

__all__ = ["CACHE_METADATA_KEY", "SemanticCache", "SemanticCacheChatModel"]
