"""@cached: async and sync functions, partitioned by their other arguments, safe inside a running loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from semantic_llm_cache import InvalidInputError, Scope, SemanticCache, cached
from tests.fakes import BagOfWordsEmbedder

STORED = "how do i reset my password"
NEAR = "how do i reset my password please"


def new_cache() -> SemanticCache:
    return SemanticCache(embedder=BagOfWordsEmbedder(), threshold=0.8, on_error="raise")


async def test_async_function_is_served_from_the_cache(cache: SemanticCache) -> None:
    calls: list[tuple[str, float]] = []

    @cached(cache)
    async def answer(prompt: str, temperature: float = 0.0) -> str:
        calls.append((prompt, temperature))
        await asyncio.sleep(0.01)
        return f"answer to {prompt!r} at {temperature}"

    assert answer.__name__ == "answer"
    first = await answer(STORED)
    assert await answer(STORED) == first
    assert await answer(NEAR) == first  # a near prompt, same other arguments: served semantically
    assert len(calls) == 1
    hotter = await answer(STORED, temperature=1.0)  # other arguments partition the cache
    assert hotter != first
    assert await answer(STORED, 1.0) == hotter  # positional or keyword, same partition
    assert calls == [(STORED, 0.0), (STORED, 1.0)]


async def test_concurrent_async_calls_run_once(cache: SemanticCache) -> None:
    calls = 0

    @cached(cache)
    async def answer(prompt: str) -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "shared"

    assert await asyncio.gather(*(answer(STORED) for _ in range(20))) == ["shared"] * 20
    assert calls == 1


async def test_prompt_arg_names_the_prompt(cache: SemanticCache) -> None:
    calls: list[str] = []

    @cached(cache, prompt_arg="question", scope=Scope(namespace="docs"), ttl=60)
    async def ask(model: str, question: str) -> str:
        calls.append(model)
        return f"{model}: {question}"

    assert await ask("small", STORED) == f"small: {STORED}"
    assert await ask("small", question=STORED) == f"small: {STORED}"
    assert await ask("large", STORED) == f"large: {STORED}"
    assert calls == ["small", "large"]
    stored = await cache.backend.iterate("docs")
    assert len(stored) == 2 and {entry.prompt for _, entry in stored} == {STORED}
    assert all(entry.expires_at is not None for _, entry in stored)


def test_decorating_without_a_prompt_is_rejected() -> None:
    cache = new_cache()
    with pytest.raises(InvalidInputError, match="no arguments"):

        @cached(cache)
        async def nothing() -> str:
            return "x"

    with pytest.raises(InvalidInputError, match="question"):

        @cached(cache, prompt_arg="question")
        def ask(prompt: str) -> str:
            return prompt


def test_sync_function_from_plain_sync_code() -> None:
    cache = new_cache()
    calls: list[str] = []

    @cached(cache)
    def answer(prompt: str, style: str = "short") -> str:
        calls.append(prompt)
        return f"{style} answer"

    assert answer(STORED) == "short answer"
    assert answer(STORED) == "short answer"
    assert answer(NEAR) == "short answer"
    assert answer(STORED, style="long") == "long answer"
    assert calls == [STORED, STORED]
    assert cache.stats["exact_hits"] == 1 and cache.stats["semantic_hits"] == 1


@pytest.mark.timeout(30)
async def test_sync_function_called_inside_a_running_event_loop(cache: SemanticCache) -> None:
    calls = 0

    @cached(cache)
    def answer(prompt: str) -> str:
        nonlocal calls
        calls += 1
        return "from the sync function"

    assert answer(STORED) == "from the sync function"  # a plain call from a coroutine: must not deadlock
    assert answer(STORED) == "from the sync function"
    assert calls == 1
    stored = await cache.backend.iterate()  # the async side sees what the sync wrapper stored
    assert [(entry.prompt, entry.response) for _, entry in stored] == [(STORED, "from the sync function")]
    assert await cache.lookup(STORED) is None  # the function's identity is part of its partition


@pytest.mark.timeout(30)
def test_sync_function_from_several_threads_runs_once() -> None:
    cache = new_cache()
    calls = 0
    lock = threading.Lock()
    barrier = threading.Barrier(6)
    answers: list[str] = []

    @cached(cache)
    def answer(prompt: str) -> str:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.2)
        return "computed once"

    def worker() -> None:
        barrier.wait()
        result = answer(STORED)
        with lock:
            answers.append(result)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert answers == ["computed once"] * 6
    assert calls == 1


def test_sync_function_exceptions_propagate_and_are_not_cached() -> None:
    cache = new_cache()
    attempts = 0

    @cached(cache)
    def flaky(prompt: str) -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise TimeoutError("model timed out")
        return "second attempt"

    with pytest.raises(TimeoutError):
        flaky(STORED)
    assert flaky(STORED) == "second attempt"
    assert flaky(STORED) == "second attempt"
    assert attempts == 2
