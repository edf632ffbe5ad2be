"""One single-flight per cache across threads and event loops, cancellation, decoding and streaming (#11)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from typing import Any

import pytest

from semantic_llm_cache import Computed, SemanticCache
from semantic_llm_cache.backends.memory import MemoryBackend
from semantic_llm_cache.cache import _deadline as deadline
from semantic_llm_cache.config import CacheEntry
from tests.fakes import BagOfWordsEmbedder

PROMPT = "How do I reset my password?"


def new_cache(**options: Any) -> SemanticCache:
    return SemanticCache(embedder=BagOfWordsEmbedder(), threshold=0.8, on_error="raise", **options)


def test_threads_and_tasks_on_other_loops_share_one_compute() -> None:
    cache = new_cache()
    calls = 0
    lock = threading.Lock()
    gate = threading.Event()

    def compute() -> str:
        nonlocal calls
        with lock:
            calls += 1
        gate.wait(5)  # hold the flight open until every caller has joined
        return "Settings > Security"

    results: list[Any] = []

    def thread_caller() -> None:
        results.append(cache.resolve_sync(PROMPT, compute))

    def loop_caller() -> None:
        async def tasks() -> list[Any]:
            return list(await asyncio.gather(*(cache.resolve(PROMPT, compute) for _ in range(4))))

        results.extend(asyncio.run(tasks()))

    workers = [threading.Thread(target=thread_caller) for _ in range(4)]
    workers += [threading.Thread(target=loop_caller) for _ in range(2)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 5
    while len(cache._flights) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # the other callers reach the flight and wait on it
    gate.set()
    for worker in workers:
        worker.join(10)
    assert calls == 1
    assert len(results) == 12 and {result.response for result in results} == {"Settings > Security"}
    assert sum(result.computed for result in results) == 1
    stats = cache.stats.snapshot()
    assert stats["misses"] == 1 and stats["shared_hits"] + stats["exact_hits"] == 11 and stats["hit_rate"] > 0.9


STALE_READS: ContextVar[bool] = ContextVar("stale_reads", default=False)


class StaleReadBackend(MemoryBackend):
    """A slow replica for the callers that set STALE_READS: their reads answer `delay` seconds late with what
    was there when they began (nothing yet)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def get(self, key: str) -> CacheEntry | None:
        if STALE_READS.get():
            await asyncio.sleep(self.delay)
            return None
        return await super().get(key)

    async def find_nearest(self, *args: Any, **kwargs: Any) -> Any:
        if STALE_READS.get():
            await asyncio.sleep(self.delay)
            return []
        return await super().find_nearest(*args, **kwargs)


async def test_a_lookup_that_read_before_the_store_and_returned_after_the_flight_joins_it() -> None:
    cache = SemanticCache(backend=StaleReadBackend(0.08), embedder=BagOfWordsEmbedder(), threshold=0.8)
    calls = 0

    async def compute() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return "answer"

    async def late_caller() -> Any:
        STALE_READS.set(True)  # this task's reads are slow and see the backend from before the store
        return await cache.resolve(PROMPT, compute)

    late = asyncio.ensure_future(late_caller())
    await asyncio.sleep(0.01)  # its lookup is under way, no flight yet
    first = await cache.resolve(PROMPT, compute)  # looks up, computes, stores and leaves meanwhile
    assert first.computed and len(cache._flights) == 0 and not late.done()
    second = await late
    assert calls == 1
    assert second.response == "answer" and second.shared


async def test_a_cancelled_leader_hands_over_to_a_waiter_which_computes() -> None:
    cache = new_cache()
    started = asyncio.Event()
    calls = 0

    async def compute() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.sleep(0.2)
        return f"answer {calls}"

    leader = asyncio.ensure_future(cache.resolve(PROMPT, compute))
    await started.wait()
    waiter = asyncio.ensure_future(cache.resolve(PROMPT, compute))
    await asyncio.sleep(0.02)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    result = await waiter
    assert result.computed and result.response == "answer 2" and calls == 2
    assert (await cache.lookup(PROMPT) or object()).response == "answer 2"


async def test_a_cancelled_waiter_is_cancelled_and_the_flight_goes_on() -> None:
    cache = new_cache()
    started = asyncio.Event()

    async def compute() -> str:
        started.set()
        await asyncio.sleep(0.1)
        return "answer"

    leader = asyncio.ensure_future(cache.resolve(PROMPT, compute))
    await started.wait()
    waiter = asyncio.ensure_future(cache.resolve(PROMPT, compute))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (await leader).response == "answer"


async def test_an_answer_that_cannot_be_decoded_is_a_miss_recomputed_once_and_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = SemanticCache(embedder=BagOfWordsEmbedder(), threshold=0.8)  # on_error="log"
    await cache.store(PROMPT, {"format": "old"})
    calls = 0

    def decode(value: Any) -> str:
        if value.get("format") != "new":
            raise ValueError("not this adapter's format")
        return str(value["text"])

    async def compute() -> dict[str, str]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return {"format": "new", "text": "fresh"}

    results = await asyncio.gather(*(cache.resolve(PROMPT, compute, decode=decode) for _ in range(5)))
    assert calls == 1
    assert sum(result.computed for result in results) == 1
    assert {result.response if not result.computed else decode(result.response) for result in results} == {"fresh"}
    again = await cache.resolve(PROMPT, compute, decode=decode)
    assert again.hit is not None and again.response == "fresh" and calls == 1
    assert cache.stats["undecodable_entries"] >= 1
    assert sum("could not be decoded" in record.getMessage() for record in caplog.records) == 1


def test_resolution_info_is_one_vocabulary() -> None:
    from semantic_llm_cache import CacheHit, Resolution

    hit = CacheHit("a", 0.97, "semantic", "stored prompt", 12.3456, "p:k", {})
    fields = {"hit", "kind", "similarity", "matched_prompt", "age_seconds", "key", "shared"}
    for resolution, kind in (
        (Resolution("a", hit, computed=False), "semantic"),
        (Resolution("a", None, computed=False, shared=True), "shared"),
        (Resolution("a", None, computed=True), "miss"),
    ):
        info = resolution.info()
        assert set(info) == fields and info["kind"] == kind and info["hit"] == (kind != "miss")
    assert Resolution("a", hit, computed=False).info("q")["prompt"] == "q"
    assert Resolution("a", hit, computed=False).info()["age_seconds"] == 12.346


# -- streaming ---------------------------------------------------------------------------------------------


def assemble(chunks: list[str]) -> Computed | None:
    return Computed("".join(chunks), tokens=len(chunks)) if chunks else None


def replay(value: Any) -> list[str]:
    if not isinstance(value, str):
        raise TypeError("not a streamed answer")
    return [value[index : index + 4] for index in range(0, len(value), 4)]


class Model:
    """A streaming model: counts streams, can fail or hold its last chunk until released."""

    def __init__(self, text: str = "Open Settings, then Security.") -> None:
        self.text = text
        self.streams = 0
        self.release = asyncio.Event()
        self.hold = False
        self.fail_after: int | None = None

    async def astream(self) -> AsyncIterator[str]:
        self.streams += 1
        for index, word in enumerate(self.text.split(" ")):
            if self.fail_after is not None and index == self.fail_after:
                raise RuntimeError("the model's connection dropped")
            if self.hold and index == 1:
                await self.release.wait()
            yield word if index == 0 else " " + word


async def test_the_computing_caller_streams_live_joiners_and_hits_get_a_replay_stored_once() -> None:
    cache = new_cache()
    model = Model()
    model.hold = True
    leader = await cache.resolve_stream(PROMPT, model.astream, assemble=assemble, replay=replay)
    assert leader.resolution.computed
    live = aiter(leader)
    assert await anext(live) == "Open"  # live: the first chunk arrives while the model is still streaming

    async def join() -> tuple[Any, list[str]]:
        stream = await cache.resolve_stream(PROMPT, model.astream, assemble=assemble, replay=replay)
        return stream.resolution, [chunk async for chunk in stream]

    joiner = asyncio.ensure_future(join())
    await asyncio.sleep(0.02)
    assert not joiner.done()
    model.release.set()
    rest = [chunk async for chunk in live]
    resolution, replayed = await joiner
    assert "Open" + "".join(rest) == model.text and "".join(replayed) == model.text
    assert resolution.shared and model.streams == 1 and cache.stats["stores"] == 1
    hit_stream = await cache.resolve_stream(PROMPT, model.astream, assemble=assemble, replay=replay)
    assert hit_stream.resolution.hit is not None and "".join([c async for c in hit_stream]) == model.text
    assert model.streams == 1


async def test_an_abandoned_or_failed_stream_stores_nothing_and_a_waiter_takes_over() -> None:
    cache = new_cache()
    model = Model()
    model.hold = True
    leader = await cache.resolve_stream(PROMPT, model.astream, assemble=assemble, replay=replay)
    live = aiter(leader)
    await anext(live)

    async def join() -> list[str]:
        stream = await cache.resolve_stream(PROMPT, model.astream, assemble=assemble, replay=replay)
        return [chunk async for chunk in stream]

    joiner = asyncio.ensure_future(join())
    await asyncio.sleep(0.02)
    await leader.aclose()  # the consumer stopped reading
    model.hold = False
    assert "".join(await joiner) == model.text  # it streamed the model itself
    assert model.streams == 2 and cache.stats["stores"] == 1

    failing = new_cache()
    broken = Model()
    broken.fail_after = 2
    stream = await failing.resolve_stream(PROMPT, broken.astream, assemble=assemble, replay=replay)
    with pytest.raises(RuntimeError, match="dropped"):
        _ = [chunk async for chunk in stream]
    assert await failing.lookup(PROMPT) is None and failing.stats["stores"] == 0


async def test_a_stream_dropped_before_it_was_read_lets_others_go_on() -> None:
    cache = new_cache()
    model = Model()
    stream = await cache.resolve_stream(PROMPT, model.astream, assemble=assemble, replay=replay)
    del stream
    gc.collect()
    again = await asyncio.wait_for(
        cache.resolve_stream(PROMPT, model.astream, assemble=assemble, replay=replay), timeout=2
    )
    assert "".join([chunk async for chunk in again]) == model.text


def test_sync_streams_share_with_async_ones_and_replay_hits() -> None:
    cache = new_cache()
    streams = 0

    def sync_stream() -> Iterator[str]:
        nonlocal streams
        streams += 1
        yield from ["Open", " Settings,", " then", " Security."]

    first = cache.resolve_stream_sync(PROMPT, sync_stream, assemble=assemble, replay=replay)
    assert first.resolution.computed and "".join(first) == "Open Settings, then Security."
    second = cache.resolve_stream_sync(PROMPT, sync_stream, assemble=assemble, replay=replay)
    assert second.resolution.hit is not None and "".join(second) == "Open Settings, then Security."

    async def from_a_loop() -> str:
        stream = await cache.resolve_stream(PROMPT, Model().astream, assemble=assemble, replay=replay)
        return "".join([chunk async for chunk in stream])

    assert asyncio.run(from_a_loop()) == "Open Settings, then Security." and streams == 1


async def test_a_second_identical_stream_in_the_same_task_does_not_wait_for_the_unread_first() -> None:
    cache = new_cache()
    model = Model()
    first = await cache.resolve_stream(PROMPT, model.astream, assemble=assemble, replay=replay)
    async with deadline(2):  # in this task (asyncio.wait_for would run them in another, which may wait)
        second = await cache.resolve_stream(PROMPT, model.astream, assemble=assemble, replay=replay)
        plain = await cache.resolve(PROMPT, lambda: "plain")
    assert second.resolution.computed and plain.computed
    assert "".join([chunk async for chunk in second]) == model.text
    assert "".join([chunk async for chunk in first]) == model.text


async def test_closing_an_unread_leader_stream_lets_its_waiters_take_over() -> None:
    cache = new_cache()
    model = Model()
    leader = await cache.resolve_stream(PROMPT, model.astream, assemble=assemble, replay=replay)
    list(leader.resolution.info())  # resolution is known before reading

    async def wait_then_stream() -> str:
        await asyncio.sleep(0.01)
        cache._flights.started(next(iter(cache._flights._unstarted)))  # another thread is reading it, say
        stream = await cache.resolve_stream(PROMPT, model.astream, assemble=assemble, replay=replay)
        return "".join([chunk async for chunk in stream])

    waiter = asyncio.ensure_future(wait_then_stream())
    await asyncio.sleep(0.05)
    await leader.aclose()  # never read: the waiter must not wait for it
    assert await asyncio.wait_for(waiter, timeout=2) == model.text


async def test_the_stream_opens_in_the_callers_context() -> None:
    cache = new_cache()
    marker: ContextVar[str] = ContextVar("marker", default="reader")
    seen: list[str] = []

    async def chunks() -> AsyncIterator[str]:
        yield "chunk"

    async def opened() -> AsyncIterator[str]:  # like LlamaIndex's `await llm.astream_complete(...)`
        seen.append(marker.get())
        return chunks()

    marker.set("caller")
    stream = await cache.resolve_stream(PROMPT, opened, assemble=assemble, replay=replay)

    async def read_elsewhere() -> list[str]:
        marker.set("reader")
        return [chunk async for chunk in stream]

    assert await asyncio.ensure_future(read_elsewhere()) == ["chunk"]
    assert seen == ["caller"]
    assert stream.resolution.key is not None and stream.resolution.info()["key"] == stream.resolution.key
