"""The search index's HNSW build parameters: what a write costs and what the cache's range query still finds.

    .venv/bin/python benchmarks/redis_index_build.py                       # 5,000 and 50,000 entries, Quora
    .venv/bin/python benchmarks/redis_index_build.py --entries 50000 --data random --configs 16/200,16/64

For each (M, EF_CONSTRUCTION) a fresh Redis 8.2 + search server (tests/plugins/redis_servers.py) gets an HNSW
cosine index like `index="search"` creates; all but the last 1,000 entries are written in pipelined batches
(bulk: the server's time per insert), the last 1,000 one HSET at a time (single: what one `store` waits for).
Then every query with a stored entry at cosine >= 0.94 (computed exactly with numpy) sends the range query
`index="search"` sends (VECTOR_RANGE to the threshold, EPSILON 0.3); "lost" counts queries whose exact nearest
entry did not come back. Data: stored = the Quora questions of qqp_dev that are never asked (bundled model's
vectors, cached by peers.py), then perturbed copies of them as filler up to --entries; queries = the asked
questions. `--data random`: random unit vectors, queries a stored vector plus noise (the hard case for a graph).
Prints a table (ms, p50).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

THRESHOLD = 0.94
SINGLE = 1000
DIMENSION = 384


def quora(entries: int, queries: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    from peers import DEFAULT_DATA, build_workload

    data, embedder = asyncio.run(build_workload(DEFAULT_DATA, None))
    embedder.close()
    asked = list(dict.fromkeys(data.queries))
    never_asked = [text for text in dict.fromkeys(data.stored_texts) if text not in set(asked)]
    stored = np.stack([data.table.vector(text) for text in never_asked]).astype(np.float32)
    rng = np.random.default_rng(seed)
    if len(stored) < entries:  # perturbed copies keep the data's structure (random filler would not)
        noise = rng.standard_normal((entries - len(stored), DIMENSION)).astype(np.float32) * (0.6 / DIMENSION**0.5)
        filler = stored[rng.integers(0, len(stored), len(noise))] + noise
        stored = np.concatenate([stored, filler / np.linalg.norm(filler, axis=1, keepdims=True)])
    return stored[:entries], np.stack([data.table.vector(text) for text in asked[:queries]]).astype(np.float32)


def random_data(entries: int, queries: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    stored = rng.standard_normal((entries, DIMENSION)).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    asked = stored[rng.integers(0, entries, queries)] + 0.012 * rng.standard_normal((queries, DIMENSION))
    return stored, (asked / np.linalg.norm(asked, axis=1, keepdims=True)).astype(np.float32)


def measure(stored: np.ndarray, asked: np.ndarray, m: int, ef_construction: int) -> dict[str, float]:
    from tests.plugins.redis_servers import start_search_server

    scores = asked @ stored.T
    nearest = [int(np.argmax(row)) if row.max() >= THRESHOLD else None for row in scores]
    server = start_search_server(Path(tempfile.mkdtemp(prefix="index-build-")))
    try:
        with server.client() as client:
            client.execute_command(
                "FT.CREATE", "i", "ON", "HASH", "PREFIX", "1", "e:", "SCHEMA", "s", "TAG",
                "v", "VECTOR", "HNSW", "10", "TYPE", "FLOAT32", "DIM", str(DIMENSION), "DISTANCE_METRIC", "COSINE",
                "M", str(m), "EF_CONSTRUCTION", str(ef_construction),
            )  # fmt: skip
            bulk_count = len(stored) - SINGLE
            started = time.perf_counter()
            pipe = client.pipeline(transaction=False)
            for row in range(bulk_count):
                pipe.hset(f"e:{row}", mapping={"s": "p", "v": stored[row].tobytes()})
                if len(pipe) == 500:
                    pipe.execute()
            pipe.execute()
            bulk = (time.perf_counter() - started) / max(1, bulk_count)
            single = []
            for row in range(bulk_count, len(stored)):
                started = time.perf_counter()
                client.hset(f"e:{row}", mapping={"s": "p", "v": stored[row].tobytes()})
                single.append(time.perf_counter() - started)
            radius = repr(1 - THRESHOLD + 1e-5)
            lost = found = 0
            searches = []
            for query, best in zip(asked, nearest, strict=True):
                if best is None:
                    continue
                started = time.perf_counter()
                reply = client.execute_command(
                    "FT.SEARCH", "i", "@s:{p} @v:[VECTOR_RANGE $r $x]=>{$EPSILON: 0.3; $YIELD_DISTANCE_AS: d}",
                    "PARAMS", "4", "r", radius, "x", query.tobytes(), "SORTBY", "d", "ASC", "LIMIT", "0", "3",
                    "RETURN", "1", "d", "DIALECT", "2",
                )  # fmt: skip
                searches.append(time.perf_counter() - started)
                ids = [result[b"id"] for result in reply[b"results"]] if isinstance(reply, dict) else reply[1::2]
                if f"e:{best}".encode() in ids:
                    found += 1
                else:
                    lost += 1
    finally:
        server.stop()
    return {
        "single": statistics.median(single) * 1000,
        "bulk": bulk * 1000,
        "search": statistics.median(searches) * 1000 if searches else float("nan"),
        "found": found,
        "lost": lost,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", default="5000,50000", help="comma-separated entry counts")
    parser.add_argument("--configs", default="16/200,16/100,16/64,16/40", help="comma-separated M/EF_CONSTRUCTION")
    parser.add_argument("--data", choices=("quora", "random"), default="quora")
    parser.add_argument("--queries", type=int, default=3000)
    arguments = parser.parse_args()
    print("| data | entries | M | EF_CONSTRUCTION | one HSET p50 ms | bulk ms/insert | range query p50 ms | "
          "nearest found | lost |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for entries in (int(text) for text in arguments.entries.split(",")):
        load = quora if arguments.data == "quora" else random_data
        stored, asked = load(entries, arguments.queries)
        for config in arguments.configs.split(","):
            m, ef_construction = (int(part) for part in config.split("/"))
            row = measure(stored, asked, m, ef_construction)
            cells = [arguments.data, f"{len(stored):,}", m, ef_construction, f"{row['single']:.3f}",
                     f"{row['bulk']:.3f}", f"{row['search']:.3f}", f"{row['found']:,}", f"{row['lost']:,}"]  # fmt: skip
            print("| " + " | ".join(str(cell) for cell in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
