"""The backends the contract suite runs against. Each backend's own plugin registers a factory here.

A factory is an async context manager function taking the pytest `request` and yielding a fresh, empty
StorageBackend; it may call pytest.skip only for a reason outside the project (never for a missing server:
the suite starts its own servers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from semantic_llm_cache.backends.memory import MemoryBackend
from semantic_llm_cache.storage import StorageBackend

BackendFactory = Callable[[Any], AbstractAsyncContextManager[StorageBackend]]
BACKEND_FACTORIES: dict[str, BackendFactory] = {}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator: add a backend factory to the contract suite under `name`."""

    def add(factory: BackendFactory) -> BackendFactory:
        BACKEND_FACTORIES[name] = factory
        return factory

    return add


@register_backend("memory")
@asynccontextmanager
async def memory_backend(request: Any) -> AsyncIterator[StorageBackend]:
    backend = MemoryBackend()
    try:
        yield backend
    finally:
        await backend.close()
