"""Storage backends. Optional ones (SQLite, Redis) are imported on first use, with their dependencies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from semantic_llm_cache.backends.memory import MemoryBackend

if TYPE_CHECKING:
    from semantic_llm_cache.backends.redis import RedisBackend
    from semantic_llm_cache.backends.sqlite import SQLiteBackend
    from semantic_llm_cache.backends.url import backend_from_url

_LAZY = {
    "RedisBackend": "semantic_llm_cache.backends.redis",
    "SQLiteBackend": "semantic_llm_cache.backends.sqlite",
    "backend_from_url": "semantic_llm_cache.backends.url",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MemoryBackend", "RedisBackend", "SQLiteBackend", "backend_from_url"]
