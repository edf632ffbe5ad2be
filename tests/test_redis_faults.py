"""RedisBackend under faults and load: a killed or hung server, two OS processes, 1,000 concurrent tasks (#3).

Each runs on Redis (client mode on Redis 7, search mode on Redis 8) and on Valkey 9.1 (index="auto", the
default, which picks client mode there).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from semantic_llm_cache import SemanticCache
from semantic_llm_cache.backends.redis import RedisBackend
from tests.fakes import BagOfWordsEmbedder
from tests.plugins.redis_servers import (
    RedisServer,
    fresh_backend,
    start_plain_server,
    start_search_server,
    start_valkey_server,
    unique_prefix,
)

pytestmark = pytest.mark.redis
ROOT = Path(__file__).resolve().parent.parent
# Server kind -> (how to start one, the index mode asked for, the mode the backend must then use). "client" and
# "search" are named after their mode: Redis 7 without modules, Redis 8 with search. "valkey": Valkey without
# modules, with the default index="auto".
STARTERS: dict[str, tuple[Callable[[Path], RedisServer], str, str]] = {
    "client": (start_plain_server, "client", "client"),
    "search": (start_search_server, "search", "search"),
    "valkey": (start_valkey_server, "auto", "client"),
}
SERVER_FIXTURES = {"client": "redis_plain_server", "search": "redis_search_server", "valkey": "valkey_server"}


def quick_failing_backend(server: RedisServer, mode: str, **options: Any) -> RedisBackend:
    settings: dict[str, Any] = {"socket_timeout": 0.3, "connect_timeout": 0.3, **options}
    return RedisBackend(server.url, prefix=unique_prefix(), index=mode, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["client", "search", "valkey"])
async def test_killed_server_every_call_returns_and_the_cache_recovers(tmp_path: Path, kind: str) -> None:
    start, mode, used = STARTERS[kind]
    server = start(tmp_path / "server")
    try:
        backend = quick_failing_backend(server, mode)
        async with SemanticCache(backend=backend, embedder=BagOfWordsEmbedder(), threshold=0.8, timeout=5) as cache:
            for number in range(10):
                assert await cache.store(f"stored question number {number} about caching", {"n": number})
            outcomes: list[Any] = []
            durations: list[float] = []
            for step in range(200):
                if step == 50:
                    server.kill()  # mid-run, with pooled connections open
                started = time.perf_counter()
                if step % 2:
                    outcomes.append(await cache.lookup(f"stored question number {step % 10} about caching"))
                else:
                    outcomes.append(await cache.store(f"new question {step} about queues", {"step": step}))
                durations.append(time.perf_counter() - started)
            assert all(outcome is not None for outcome in outcomes[:50])
            assert all(outcome is None for outcome in outcomes[51:])  # misses, and stores that report failure
            counters = cache.stats.snapshot()
            assert counters["backend_errors"] > 0 and counters["errors"] >= counters["backend_errors"]
            assert counters["short_circuits"] > 0  # the engine's circuit opened and skips calls
            assert (await cache.get_stats())["circuits"]["backend"] != "closed"
            assert max(durations) < 2.0
            assert sum(durations[60:]) < 5.0  # with the circuit open, calls do not wait on the dead server

            server.start()  # same port, empty
            deadline = time.monotonic() + 15  # past the engine's cool-down the next call probes and closes it
            key = None
            while key is None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                key = await cache.store("what is the capital city of australia", {"answer": "Canberra"})
            assert key is not None
            hit = await cache.lookup("what is the capital of australia")
            assert hit is not None and hit.kind == "semantic" and hit.response == {"answer": "Canberra"}
            stats = await backend.get_stats()
            assert stats["index"] == used and stats["size"] == 1
            assert (await cache.get_stats())["circuits"]["backend"] == "closed"
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["client", "valkey"])
async def test_hung_server_costs_the_timeout_only_until_the_circuit_opens(tmp_path: Path, kind: str) -> None:
    start, mode, _ = STARTERS[kind]
    server = start(tmp_path / "server")
    try:
        backend = quick_failing_backend(server, mode)
        async with SemanticCache(backend=backend, embedder=BagOfWordsEmbedder(), threshold=0.8, timeout=5) as cache:
            assert await cache.store("which port does redis listen on by default", {"answer": 6379})
            server.pause()  # connections hang: every call would wait for its socket timeout
            started = time.perf_counter()
            for number in range(30):
                assert await cache.lookup(f"which port does redis listen on {number}") is None
            elapsed = time.perf_counter() - started
            # without the engine's breaker: 30 lookups x 2 backend calls x 2 attempts x 0.3 s = 36 s
            assert elapsed < 8.0, elapsed
            assert cache.stats.snapshot()["short_circuits"] > 0  # the engine's circuit is open
            started = time.perf_counter()
            assert await cache.store("another question", {"answer": 1}) is None
            assert time.perf_counter() - started < 0.2
            server.resume()
            deadline = time.monotonic() + 15  # the engine's own circuit probes again within its cool-down
            hit = None
            while hit is None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                hit = await cache.lookup("which port does redis listen on by default")
            assert hit is not None and hit.response == {"answer": 6379}
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["client", "search", "valkey"])
async def test_hung_server_never_costs_more_than_the_timeout_and_the_engine_circuit_opens(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The README's advice (socket_timeout 0.5 s under a 1 s cache timeout) against a SIGSTOPped server: each
    call, lookup and store together, stays within the timeout (it took 3 x before), the circuit opens within
    the first calls, and a few WARNING lines are written, not one per call."""
    start, mode, _ = STARTERS[kind]
    server = start(tmp_path / "server")
    try:
        backend = RedisBackend(server.url, prefix=unique_prefix(), index=mode, socket_timeout=0.5)  # type: ignore[arg-type]
        async with SemanticCache(backend=backend, embedder=BagOfWordsEmbedder(), threshold=0.8, timeout=1.0) as cache:
            assert await cache.store("which port does redis listen on by default", {"answer": 6379})
            server.pause()
            durations = []
            with caplog.at_level(logging.WARNING):
                for number in range(40):
                    started = time.perf_counter()
                    answer = await cache.get_or_compute(f"a question about queues {number}", lambda: "computed")
                    durations.append(time.perf_counter() - started)
                    assert answer == "computed"
                    if number == 3:
                        assert (await cache.get_stats())["circuits"]["backend"] == "open"
            assert max(durations) < 1.0 + 0.3, durations[:6]
            assert sum(durations[4:]) < 5.0  # open: the half-open probes alone wait on the server
            warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
            assert len(warnings) <= 8, warnings
            server.resume()
            deadline = time.monotonic() + 40
            hit = None
            while hit is None and time.monotonic() < deadline:
                hit = await cache.lookup("which port does redis listen on by default")
                await asyncio.sleep(0.2)
            assert hit is not None and hit.response == {"answer": 6379}
    finally:
        server.resume()
        server.stop()


CHILD = """
import asyncio, json, os, sys
from semantic_llm_cache import SemanticCache
from semantic_llm_cache.backends.redis import RedisBackend
from tests.fakes import BagOfWordsEmbedder

async def main(url, prefix, mode, action, prompt):
    backend = RedisBackend(url, prefix=prefix, index=mode)
    async with SemanticCache(backend=backend, embedder=BagOfWordsEmbedder(), threshold=0.8, on_error="raise") as cache:
        if action == "store":
            result = await cache.store(prompt, {"answer": "stored by", "pid": os.getpid()})
        else:
            hit = await cache.lookup(prompt)
            result = None if hit is None else {"response": hit.response, "kind": hit.kind}
        print(json.dumps({"result": result, "pid": os.getpid(), "index": (await backend.get_stats())["index"]}))

asyncio.run(main(*sys.argv[1:]))
"""


def run_child(*arguments: str) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["client", "search", "valkey"])
async def test_two_processes_share_answers_through_one_redis(request: Any, kind: str) -> None:
    server: RedisServer = request.getfixturevalue(SERVER_FIXTURES[kind])
    _, mode, used = STARTERS[kind]
    async with (
        fresh_backend(server.url, index=mode) as backend,
        SemanticCache(backend=backend, embedder=BagOfWordsEmbedder(), threshold=0.8) as cache,
    ):
        assert await cache.lookup("how can i reset my router password") is None  # this process syncs first
        child = run_child(server.url, backend.prefix, mode, "store", "how do i reset my router password")
        assert child["index"] == used and child["pid"] != os.getpid()
        hit = await cache.lookup("how can i reset my router password")  # a paraphrase, in this process
        assert hit is not None and hit.kind == "semantic"
        assert hit.response == {"answer": "stored by", "pid": child["pid"]}

        await cache.store("what is the capital city of australia", {"answer": "Canberra"})
        other = run_child(server.url, backend.prefix, mode, "lookup", "what is the capital of australia")
        assert other["result"] == {"response": {"answer": "Canberra"}, "kind": "semantic"}


@pytest.mark.parametrize("fixture", ["redis_plain_server", "redis_search_server", "redis_cluster", "valkey_server"])
async def test_thousand_concurrent_tasks_lose_no_write_and_raise_nothing(request: Any, fixture: str) -> None:
    server = request.getfixturevalue(fixture)
    async with (
        fresh_backend(server.url) as backend,
        SemanticCache(
            backend=backend, embedder=BagOfWordsEmbedder(), threshold=0.8, on_error="raise", timeout=60
        ) as cache,
    ):
        rng = random.Random(11)
        words = [f"w{number}" for number in range(5000)]
        prompts = [" ".join(rng.sample(words, 6)) for _ in range(500)]
        calls = [cache.store(prompt, {"number": number}) for number, prompt in enumerate(prompts)]
        calls += [cache.lookup(rng.choice(prompts)) for _ in range(500)]
        rng.shuffle(calls)
        results = await asyncio.gather(*calls)  # an exception in any task fails the test
        assert sum(isinstance(result, str) for result in results) == 500  # every store returned its key
        assert (await backend.get_stats())["size"] == 500
        for number, prompt in enumerate(prompts):
            hit = await cache.lookup(prompt)
            assert hit is not None and hit.kind == "exact" and hit.response == {"number": number}
