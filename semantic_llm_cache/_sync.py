"""Run the async API from sync code: one shared event loop in a daemon thread, never a loop per call."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_lock = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="semantic-llm-cache-sync", daemon=True)
            thread.start()
            _loop, _thread = loop, thread
        return _loop


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to completion from sync code, also from inside a running loop (e.g. a Jupyter cell).

    The coroutine runs on the shared background loop, so sync callers from many threads share one loop.
    """
    loop = _background_loop()
    if threading.current_thread() is _thread:
        coroutine.close()
        raise RuntimeError("run_sync was called from the cache's own loop thread; await the async API instead")
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result()


def submit(coroutine: Coroutine[Any, Any, T]) -> Future[T]:
    """Start `coroutine` on the shared background loop without waiting for it (from sync code)."""
    return asyncio.run_coroutine_threadsafe(coroutine, _background_loop())
