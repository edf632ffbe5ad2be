"""Storage backends. Optional ones (SQLite, Redis) import their dependencies only when used."""

from semantic_llm_cache.backends.memory import MemoryBackend

__all__ = ["MemoryBackend"]
