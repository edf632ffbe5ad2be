"""LlamaIndex integration of async-semantic-llm-cache: `Settings.llm = SemanticCacheLLM(llm=...)`."""

from llama_index.llms.semantic_cache.base import SemanticCacheLLM
from llama_index.llms.semantic_cache.events import CACHE_INFO_KEY, SemanticCacheEvent

__all__ = ["CACHE_INFO_KEY", "SemanticCacheEvent", "SemanticCacheLLM"]
