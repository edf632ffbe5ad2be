"""A partition's index past `hnsw_min_entries`: the sketched flat index against the HNSW graph, on real vectors.

    .venv/bin/python benchmarks/sketched_flat.py                    # 10,000 / 20,000 / 35,000 entries
    .venv/bin/python benchmarks/sketched_flat.py --sizes 20000 --queries 500

Vectors: every distinct question of qqp_dev (the bundled model's vectors, cached by peers.py in
~/.cache/semantic-llm-cache), shuffled; the first N are stored, 1,000 held-out questions are the queries. Both
indexes get the same entries; their `search(query, k=4, threshold=0.94)` (a lookup's call) is timed round-robin
(one BLAS thread). Printed per size: p50 / p99 of each, the share of rows the flat search scored exactly, whether
`FlatIndex.sketch_narrows` holds (AutoIndex then keeps the partition flat up to SKETCHED_FLAT_FACTOR x
`hnsw_min_entries`), and how many queries' best match above the threshold the graph missed; then the six slowest
adds while the largest flat index was filled (what a write can stall its caller, the event loop, for).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _tables import markdown_table, percentiles_us  # noqa: E402

from semantic_llm_cache.index.flat import FlatIndex  # noqa: E402
from semantic_llm_cache.index.hnsw import HNSWIndex  # noqa: E402

THRESHOLD = 0.94
K = 4


def quora_vectors() -> np.ndarray:
    """Every distinct question's vector, shuffled (fixed seed)."""
    from peers import DEFAULT_DATA, build_workload

    data, embedder = asyncio.run(build_workload(DEFAULT_DATA, None))
    embedder.close()
    matrix = np.stack(list(data.table.vectors.values())).astype(np.float32)
    return matrix[np.random.default_rng(5).permutation(len(matrix))]


def milliseconds(samples: list[float]) -> str:
    p50, p99 = percentiles_us(samples)
    return f"{p50 / 1000:.3f} / {p99 / 1000:.3f}"


def measure(stored: np.ndarray, queries: np.ndarray, slowest: list[tuple[float, int]]) -> list[object]:
    keys = [f"k{row}" for row in range(len(stored))]
    flat = FlatIndex(stored.shape[1])
    adds: list[tuple[float, int]] = []
    for row, (key, vector) in enumerate(zip(keys, stored, strict=True)):
        started = time.perf_counter()
        flat.add(key, vector)
        adds.append((time.perf_counter() - started, row))
    slowest.extend(sorted(adds, reverse=True)[:6])
    graph = HNSWIndex(stored.shape[1], initial_capacity=len(stored))
    graph.add_many(keys, stored)
    flat_times: list[float] = []
    graph_times: list[float] = []
    scored: list[float] = []
    missed = 0
    for query in queries:
        started = time.perf_counter()
        exact = flat.search(query, K, THRESHOLD)
        flat_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        approximate = graph.search(query, K, THRESHOLD)
        graph_times.append(time.perf_counter() - started)
        if flat._sketch is not None:
            scored.append(len(flat._sketch.candidates(query, len(flat), THRESHOLD)) / len(flat))
        if exact and (not approximate or approximate[0][0] != exact[0][0]):
            missed += 1
    share = f"{np.mean(scored):.4f}" if scored else "-"
    return [f"{len(stored):,}", milliseconds(flat_times), milliseconds(graph_times), share, flat.sketch_narrows, missed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,20000,35000", help="comma-separated entry counts")
    parser.add_argument("--queries", type=int, default=1000)
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    vectors = quora_vectors()
    if max(sizes) + arguments.queries > len(vectors):
        parser.error(f"only {len(vectors):,} distinct questions: sizes + queries must not exceed that")
    queries = vectors[len(vectors) - arguments.queries :]
    print(f"k={K}, threshold {THRESHOLD}, {arguments.queries:,} held-out questions; ms, p50 / p99")
    slowest: list[tuple[float, int]] = []
    rows = []
    for size in sizes:
        slowest.clear()
        rows.append(measure(vectors[:size], queries, slowest))
    headers = ["entries", "sketched flat", "HNSW (M 16, ef_search 256)", "share scored exactly", "sketch_narrows",
               "best match the graph missed"]  # fmt: skip
    print(markdown_table(headers, rows))
    ordered = sorted(slowest, key=lambda item: item[1])
    shown = ", ".join(f"row {row:,}: {seconds * 1000:.1f}" for seconds, row in ordered)
    print(f"\nslowest adds filling the flat index of {sizes[-1]:,} (ms; the sketch is fitted at 1,024, 8,192): {shown}")


if __name__ == "__main__":
    main()
