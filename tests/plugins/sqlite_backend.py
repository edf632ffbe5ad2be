"""The SQLite backend's contract factory (issue #6)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from semantic_llm_cache.backends.sqlite import SQLiteBackend
from semantic_llm_cache.storage import StorageBackend
from tests.plugins.backends import register_backend


@register_backend("sqlite")
@asynccontextmanager
async def sqlite_backend(request: Any) -> AsyncIterator[StorageBackend]:
    """A fresh SQLite file in the test's temporary directory."""
    backend = SQLiteBackend(request.getfixturevalue("tmp_path") / "contract.db")
    try:
        yield backend
    finally:
        await backend.close()
