"""A semantic lookup against its floor, measured interleaved in one run (embedding excluded).

    .venv/bin/python benchmarks/lookup_floor.py redis     # search mode vs one bare FT.SEARCH KNN 1 round trip
    .venv/bin/python benchmarks/lookup_floor.py memory    # MemoryBackend vs one bare numpy scan of the matrix
    .venv/bin/python benchmarks/lookup_floor.py redis --entries 50000 --rounds 1000   # questions + random filler

Both store N entries through SemanticCache (one partition: the default scope), with an async embedder that looks
precomputed vectors up: by default the first N distinct Quora questions with the bundled model's vectors (peers.py's
workload, cached in ~/.cache/semantic-llm-cache), looked up with their paired questions (hits and misses); with
`--data random`, random unit vectors (the hard case for a graph index). Then they time, round-robin so that a busy
machine slows all alike:

- redis: a bare ``FT.SEARCH <our index> "*=>[KNN 1 @v384 $x]"`` (what RedisVL sends), `backend.find_nearest`,
  a full `cache.lookup` (its exact read in the search's pipeline: one round trip) and one with
  ``overlap_reads=False`` (the exact read, then the search: two); plus the commands each lookup sends (INFO
  commandstats). Starts a Redis 8 + search server (tests/plugins/redis_servers.py), stops it.
- memory: a bare single-thread ``matrix @ query`` + argmax over the same vectors, `backend.find_nearest`, and a
  full `cache.lookup`.

Prints p50/p99 (ms) and each one's ratio to the floor's p50.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from semantic_llm_cache import SemanticCache  # noqa: E402
from semantic_llm_cache.scope import normalize_prompt  # noqa: E402

DIMENSION = 384


class TableEmbedder:
    """An async embedder that looks vectors up (the model's time is not what is measured)."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    @property
    def name(self) -> str:
        return "table"

    @property
    def dimension(self) -> int:
        return DIMENSION

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.vectors[text] for text in texts])


def qqp_workload(entries: int, queries: int) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """The first `entries` distinct questions of the Quora pairs (peers.py's workload and cached vectors of the
    bundled model), and the paired questions as queries (a real mix of hits and misses)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from peers import DEFAULT_DATA, build_workload

    data, embedder = asyncio.run(build_workload(DEFAULT_DATA, None))
    embedder.close()
    stored = data.stored_texts[:entries]
    kept = set(stored)
    asked = [pair_query for pair, pair_query in zip(data.pairs, data.queries, strict=True)
             if normalize_prompt(pair.text_a) in kept and pair_query not in kept][:queries]  # fmt: skip
    vectors = {text: data.table.vector(text) for text in [*stored, *asked]}
    if len(stored) < entries:  # more than the sample holds: random unit vectors (far from every question) fill up
        filler, _, filler_vectors = random_workload(entries - len(stored), 0, seed=11)
        print(f"{len(stored):,} questions and {len(filler):,} random-vector filler entries", file=sys.stderr)
        stored = [*stored, *filler]
        vectors |= filler_vectors
    return stored, asked, vectors


def random_workload(entries: int, queries: int, seed: int = 7) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """Random unit vectors, each query a stored vector plus noise (cos ~0.98): every lookup is a hit. Random
    384-d data is the hard case for a graph index (no structure)."""
    rng = np.random.default_rng(seed)
    stored = rng.standard_normal((entries, DIMENSION)).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    picks = rng.integers(0, entries, queries)
    asked = stored[picks] + 0.01 * rng.standard_normal((queries, DIMENSION)).astype(np.float32)
    asked /= np.linalg.norm(asked, axis=1, keepdims=True)
    stored_texts = [f"stored question {row}" for row in range(entries)]
    asked_texts = [f"asked question {row}" for row in range(queries)]
    vectors = dict(zip(stored_texts, stored, strict=True)) | dict(zip(asked_texts, asked, strict=True))
    return stored_texts, asked_texts, vectors


async def interleaved(
    contenders: dict[str, Callable[[int], Awaitable[Any]]], rounds: int, warmup: int = 50
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for step in range(warmup + rounds):
        for name, call in contenders.items():
            started = time.perf_counter()
            await call(step)
            if step >= warmup:
                samples[name].append(time.perf_counter() - started)
    return samples


def report(title: str, samples: dict[str, list[float]], floor: str) -> None:
    base = float(np.percentile(samples[floor], 50))
    print(f"\n{title}")
    print(f"| {'what':<40} | p50 ms | p99 ms | p50 / floor |")
    print(f"|{'-' * 42}|--------|--------|-------------|")
    for name, values in samples.items():
        p50, p99 = float(np.percentile(values, 50)) * 1000, float(np.percentile(values, 99)) * 1000
        print(f"| {name:<40} | {p50:6.3f} | {p99:6.3f} | {p50 / 1000 / base:10.2f}x |")


async def store_all(cache: SemanticCache, texts: Sequence[str]) -> float:
    started = time.perf_counter()
    for start in range(0, len(texts), 200):
        await asyncio.gather(
            *(cache.store(text, {"row": row}) for row, text in enumerate(texts[start : start + 200], start))
        )
    return (time.perf_counter() - started) / len(texts)


async def bench_memory(arguments: argparse.Namespace) -> None:
    from semantic_llm_cache.backends.memory import MemoryBackend

    stored, asked, vectors = arguments.workload
    embedder = TableEmbedder(vectors)
    try:
        backend = MemoryBackend(hnsw_min_entries=None)  # exact: the floor is an exact scan
    except TypeError:  # a version from before the rename
        backend = MemoryBackend(hnsw_threshold=None)
    cache = SemanticCache(backend=backend, embedder=embedder, threshold=0.9, never_cache=False, answer_guard=False)
    await store_all(cache, stored)
    matrix = np.stack([vectors[text] for text in stored])

    misses = [0]

    async def bare(step: int) -> None:
        int(np.argmax(matrix @ vectors[asked[step]]))  # single-threaded: OPENBLAS_NUM_THREADS=1 above

    async def nearest(step: int) -> None:
        await cache.backend.find_nearest(vectors[asked[step]], 0.9, cache.config.candidates)

    async def lookup(step: int) -> None:
        misses[0] += await cache.lookup(asked[step]) is None

    samples = await interleaved(
        {
            "bare numpy scan (matrix @ q, argmax)": bare,
            "backend.find_nearest": nearest,
            "cache.lookup": lookup,
        },
        arguments.rounds,
    )
    print(f"lookups that missed: {misses[0]}")
    report(
        f"memory, {arguments.entries} x {DIMENSION}-d, {arguments.rounds} rounds",
        samples,
        "bare numpy scan (matrix @ q, argmax)",
    )


async def bench_redis(arguments: argparse.Namespace) -> None:
    import redis.asyncio as aioredis

    from semantic_llm_cache.backends.redis import RedisBackend
    from tests.plugins.redis_servers import start_search_server

    server = start_search_server(Path(tempfile.mkdtemp(prefix="lookup-floor-")))
    try:
        stored, asked, vectors = arguments.workload
        backend = RedisBackend(server.url, index="search", prefix="floor:")
        cache = SemanticCache(
            backend=backend, embedder=TableEmbedder(vectors), threshold=0.9, never_cache=False, answer_guard=False
        )
        store_seconds = await store_all(cache, stored)
        print(f"store: {store_seconds * 1e3:.3f} ms per entry (200 concurrent)")
        raw = aioredis.Redis.from_url(server.url, protocol=2)  # RESP2, as the backend: the faster parser
        index = f"floor:idx:1:{DIMENSION}"
        misses = [0]

        async def bare(step: int) -> None:
            blob = vectors[asked[step]].astype("<f4").tobytes()
            await raw.execute_command("FT.SEARCH", index, f"*=>[KNN 1 @v{DIMENSION} $x]", "PARAMS", "2", "x", blob,
                                      "DIALECT", "2")  # fmt: skip

        async def nearest(step: int) -> None:
            await backend.find_nearest(vectors[asked[step]], 0.9, cache.config.candidates, partition=partition)

        async def lookup(step: int) -> None:
            misses[0] += await cache.lookup(asked[step]) is None

        sequential = SemanticCache(backend=backend, embedder=cache.embedder, config=dataclasses.replace(
            cache.config, overlap_reads=False), never_cache=False)  # fmt: skip

        async def lookup_sequential(step: int) -> None:
            await sequential.lookup(asked[step])

        partition = (await cache.backend.iterate())[0][1].partition_id
        before = await raw.info("commandstats")
        await lookup(0)
        await asyncio.sleep(0.1)  # a hit's counter is written in the background
        after = await raw.info("commandstats")
        sent = {name: after[name]["calls"] - before.get(name, {"calls": 0})["calls"] for name in after}
        print(
            "commands one lookup sends:",
            {name: count for name, count in sent.items() if count and name != "cmdstat_info"},
        )
        samples = await interleaved(
            {
                "bare FT.SEARCH KNN 1 (one round trip)": bare,
                "backend.find_nearest": nearest,
                "cache.lookup": lookup,
                "cache.lookup, overlap_reads=False": lookup_sequential,
            },
            arguments.rounds,
        )
        print(f"lookups that missed: {misses[0]}")
        report(f"redis search, {arguments.entries} x {DIMENSION}-d, {arguments.rounds} rounds", samples,
               "bare FT.SEARCH KNN 1 (one round trip)")  # fmt: skip
        stats = await backend.get_stats()
        print("backend counters:", {name: stats.get(name) for name in ("errors", "corrupt_skipped")})
        await raw.aclose()
        await backend.close()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backend", choices=["redis", "memory"])
    parser.add_argument("--entries", type=int, default=None, help="entries stored (redis 5000, memory 10000)")
    parser.add_argument("--rounds", type=int, default=2000, help="timed rounds of each contender")
    parser.add_argument(
        "--data", choices=["qqp", "random"], default="qqp", help="qqp: Quora questions (cached vectors); random"
    )
    arguments = parser.parse_args()
    if arguments.entries is None:
        arguments.entries = 5000 if arguments.backend == "redis" else 10_000
    make = qqp_workload if arguments.data == "qqp" else random_workload
    arguments.workload = make(arguments.entries, arguments.rounds + 50)
    asyncio.run(bench_redis(arguments) if arguments.backend == "redis" else bench_memory(arguments))


if __name__ == "__main__":
    main()
