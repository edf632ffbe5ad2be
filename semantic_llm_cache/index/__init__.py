"""Vector indexes used by backends that do not search on a server."""

from semantic_llm_cache.index.flat import FlatIndex

__all__ = ["FlatIndex"]
