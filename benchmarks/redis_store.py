"""Where a search-mode store's time goes, against RedisVL's `astore` on the same Redis 8.2 + search server.

    .venv/bin/python benchmarks/redis_store.py                  # 3,000 stores each
    .venv/bin/python benchmarks/redis_store.py --entries 10000

Random 384-d unit vectors near 50 centres (embedding excluded: a table embedder). Timed round-robin in blocks of
50, one call at a time: `SemanticCache.store` (index="search"), `RedisBackend.set` alone, a bare redis-py HSET of
a vector into a prefix under an HNSW index (M 16, EF_CONSTRUCTION 64, ours), under a FLAT index (RedisVL's), under
none, and RedisVL `SemanticCache.astore`. Then the server's time per insert into a FLAT and an HNSW index of each
of `--insert-sizes` entries (INFO commandstats, 2,000 HSETs after those are in): the part of a store no client
code can remove.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._tables import markdown_table, percentiles_us  # noqa: E402
from benchmarks.core import TableEmbedder  # noqa: E402
from semantic_llm_cache import SemanticCache  # noqa: E402
from semantic_llm_cache.backends.redis import RedisBackend  # noqa: E402
from semantic_llm_cache.config import CacheEntry  # noqa: E402
from tests.plugins.redis_servers import start_search_server  # noqa: E402

DIMENSION = 384
BLOCK = 50


def vectors(count: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, DIMENSION))
    matrix = centres[np.arange(count) % 50] + 0.6 * rng.standard_normal((count, DIMENSION))
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


async def create_index(client: Any, name: str, prefix: str, kind: str, params: dict[str, int]) -> None:
    extra = [str(item) for pair in params.items() for item in pair]
    await client.execute_command(
        "FT.CREATE", name, "ON", "HASH", "PREFIX", "1", prefix, "SCHEMA", "v", "VECTOR", kind, str(6 + len(extra)),
        "TYPE", "FLOAT32", "DIM", str(DIMENSION), "DISTANCE_METRIC", "COSINE", *extra,
    )  # fmt: skip


async def timed_stores(url: str, count: int) -> dict[str, list[float]]:
    import redis.asyncio as aredis
    from redisvl.extensions.cache.llm import SemanticCache as RedisVLCache
    from redisvl.utils.vectorize import CustomVectorizer

    matrix = vectors(count * 3)
    table = {f"prompt {row}": matrix[row] for row in range(len(matrix))}
    cache = SemanticCache(backend=RedisBackend(url, prefix="store-a:", index="search"), embedder=TableEmbedder(table))
    backend = RedisBackend(url, prefix="store-b:", index="search")
    client = aredis.Redis.from_url(url)
    await create_index(client, "bare-hnsw", "bare-hnsw:", "HNSW", {"M": 16, "EF_CONSTRUCTION": 64})
    await create_index(client, "bare-flat", "bare-flat:", "FLAT", {})

    def embed(text: str, **_: Any) -> list[float]:
        return table.get(text, matrix[0]).tolist()  # type: ignore[no-any-return]

    async def aembed(text: str, **_: Any) -> list[float]:
        return embed(text)

    redisvl = RedisVLCache(name="store-rvl", redis_url=url, vectorizer=CustomVectorizer(embed=embed, aembed=aembed),
                           overwrite=True)  # fmt: skip

    def bare(prefix: str) -> Callable[[int], Awaitable[Any]]:
        return lambda row: client.hset(f"{prefix}{row}", mapping={"v": matrix[row].tobytes(), "j": "{}"})

    async def backend_set(row: int) -> None:
        entry = CacheEntry(prompt=f"prompt {row}", response=row, partition_id="p", embedding=matrix[count + row])
        await backend.set(f"p:{row}", entry)

    calls: dict[str, Callable[[int], Awaitable[Any]]] = {
        "SemanticCache.store (search)": lambda row: cache.store(f"prompt {row}", row),
        "RedisBackend.set alone": backend_set,
        "bare HSET, HNSW index": bare("bare-hnsw:"),
        "bare HSET, FLAT index": bare("bare-flat:"),
        "bare HSET, no index": bare("bare-none:"),
        "RedisVL astore": lambda row: redisvl.astore(prompt=f"prompt {2 * count + row}", response=str(row)),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # connect, create the indexes
        await call(count - 1)
    for start in range(0, count - 1, BLOCK):
        for name, call in calls.items():
            for row in range(start, min(count - 1, start + BLOCK)):
                started = time.perf_counter()
                await call(row)
                times[name].append(time.perf_counter() - started)
    await cache.close()
    await backend.close()
    await redisvl.adisconnect()
    await client.aclose()
    return times


async def server_insert_us(url: str, count: int, kind: str, params: dict[str, int]) -> float:
    """The server's time per HSET into an index of `count` entries (INFO commandstats)."""
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(url)
    await client.flushall()
    await create_index(client, "insert-cost", "insert:", kind, params)
    matrix = vectors(count + 2000, seed=3)
    for start in range(0, count, 1000):
        pipe = client.pipeline(transaction=False)
        for row in range(start, min(count, start + 1000)):
            pipe.hset(f"insert:{row}", "v", matrix[row].tobytes())
        await pipe.execute()
    await client.config_resetstat()
    for row in range(count, count + 2000):
        await client.hset(f"insert:{row}", "v", matrix[row].tobytes())
    stats = await client.info("commandstats")
    await client.aclose()
    return float(stats["cmdstat_hset"]["usec_per_call"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=3000, help="stores per row")
    parser.add_argument("--insert-sizes", default="3000,50000", help="index sizes for the server's time per insert")
    arguments = parser.parse_args()
    server = start_search_server(Path(tempfile.mkdtemp(prefix="redis-store-")))
    try:
        times = asyncio.run(timed_stores(server.url, arguments.entries))
        rows = []
        for name, samples in times.items():
            p50, p99 = percentiles_us(samples)
            rows.append([name, f"{p50 / 1000:.3f}", f"{np.mean(samples) * 1000:.3f}", f"{p99 / 1000:.3f}"])
        print(f"{arguments.entries:,} stores each, ms")
        print(markdown_table(["call", "p50", "mean", "p99"], rows))
        inserts = []
        for size in (int(size) for size in arguments.insert_sizes.split(",")):
            for kind, params in (("FLAT", {}), ("HNSW", {"M": 16, "EF_CONSTRUCTION": 64})):
                label = kind if not params else f"{kind} M {params['M']} EF_CONSTRUCTION {params['EF_CONSTRUCTION']}"
                usec = asyncio.run(server_insert_us(server.url, size, kind, params))
                inserts.append([label, f"{size:,}", f"{usec:.0f}"])
        print("\nserver time per insert (us), into an index of N entries")
        print(markdown_table(["index", "N", "us"], inserts))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
