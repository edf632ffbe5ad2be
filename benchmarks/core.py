"""Core engine speed: exact-hit lookup, semantic search without embedding, embedding throughput.

Run: `make bench` or `.venv/bin/python benchmarks/core.py [--sizes 1000,10000,100000]`. Prints markdown tables.
Targets (issue #2): exact hit <= 20 µs p50; 10k-entry semantic search <= 0.5 ms p50; micro-batching >= 3x the
one-at-a-time embedding throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _tables import markdown_table, percentiles_us

from semantic_llm_cache import MemoryBackend, SemanticCache
from semantic_llm_cache.embeddings import LocalEmbedder, OnnxEmbedder
from semantic_llm_cache.errors import ConfigurationError, EmbeddingError

DIMENSION = 384


class TableEmbedder:
    """Looks vectors up in a dict: an embedder that costs nothing, to time everything but the model."""

    name = "benchmark-table"
    dimension = DIMENSION

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.vectors[text] for text in texts])


def random_unit(rng: np.random.Generator, count: int) -> np.ndarray:
    matrix = rng.standard_normal((count, DIMENSION)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


async def exact_hits(iterations: int) -> list[object]:
    rng = np.random.default_rng(0)
    vectors = {f"question {i}?": vector for i, vector in enumerate(random_unit(rng, 1000))}
    cache = SemanticCache(embedder=TableEmbedder(vectors))
    for prompt in vectors:
        await cache.store(prompt, {"answer": prompt})
    prompts = list(vectors)
    durations = []
    for i in range(iterations):
        prompt = prompts[i % len(prompts)]
        started = time.perf_counter()
        hit = await cache.lookup(prompt)
        durations.append(time.perf_counter() - started)
        assert hit is not None and hit.kind == "exact"
    p50, p99 = percentiles_us(durations)
    return ["exact hit via `lookup` (1k entries)", f"{p50:.1f} µs", f"{p99:.1f} µs", "<= 20 µs p50"]


async def semantic_search(size: int, queries: int) -> list[list[object]]:
    rng = np.random.default_rng(size)
    stored = random_unit(rng, size)
    backend = MemoryBackend(hnsw_min_entries=None)  # exact search: benchmarks/hnsw.py measures the graph
    prompts = {f"stored {i}": vector for i, vector in enumerate(stored)}
    # queries close to stored vectors, so every search finds a match above the threshold
    targets = rng.integers(0, size, queries)
    noisy = stored[targets] + 0.01 * rng.standard_normal((queries, DIMENSION)).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    query_prompts = {f"query {i}": vector for i, vector in enumerate(noisy)}
    cache = SemanticCache(backend=backend, embedder=TableEmbedder({**prompts, **query_prompts}), answer_guard=False)
    partition = cache.partition_for(None)
    from semantic_llm_cache.config import CacheEntry
    from semantic_llm_cache.scope import exact_key

    for prompt, vector in prompts.items():
        entry = CacheEntry(prompt=prompt, response=prompt, partition_id=partition, embedding=vector, embedder="b")
        await backend.set(exact_key(partition, prompt), entry)
    backend_times, lookup_times = [], []
    for prompt, vector in query_prompts.items():
        started = time.perf_counter()
        await backend.find_nearest(vector, 0.9, 4, partition=partition)
        backend_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        hit = await cache.lookup(prompt)
        lookup_times.append(time.perf_counter() - started)
        assert hit is not None
    rows: list[list[object]] = []
    for label, times in (("backend.find_nearest", backend_times), ("`lookup`, embedding excluded", lookup_times)):
        p50, p99 = percentiles_us(times)
        target = "<= 0.5 ms p50" if size == 10_000 else ""
        rows.append(
            [f"semantic {label} ({size:,} entries, flat)", f"{p50 / 1000:.3f} ms", f"{p99 / 1000:.3f} ms", target]
        )
    return rows


async def embedding_throughput(label: str, embedder: LocalEmbedder, count: int) -> list[list[object]]:
    await embedder.embed(["warm up the model"])
    texts = [f"How do I fix problem number {i} with my account settings?" for i in range(count)]
    started = time.perf_counter()
    for text in texts:
        await embedder.embed([text])
    sequential = count / (time.perf_counter() - started)
    texts = [f"What is the best way to learn topic {i} quickly?" for i in range(count)]
    batches_before = embedder.batches
    started = time.perf_counter()
    await asyncio.gather(*(embedder.embed([text]) for text in texts))
    concurrent = count / (time.perf_counter() - started)
    passes = embedder.batches - batches_before
    embedder.close()
    return [
        [f"{label}, one caller at a time", f"{sequential:.0f} texts/s", f"{1000 / sequential:.1f} ms/text", ""],
        [
            f"{label}, {count} concurrent callers ({passes} forward passes)",
            f"{concurrent:.0f} texts/s",
            f"{concurrent / sequential:.1f}x",
            ">= 3x",
        ],
    ]


async def main(sizes: Sequence[int], skip_model: bool) -> None:
    rows: list[list[object]] = [await exact_hits(20_000)]
    for size in sizes:
        rows += await semantic_search(size, 300 if size <= 10_000 else 100)
    print(markdown_table(["operation", "p50", "p99", "target"], rows))
    if not skip_model:
        print()
        headers = ["embedding (all-MiniLM-L6-v2, CPU)", "throughput", "per text / speed-up", "target"]
        rows = await embedding_throughput("default (ONNX, no torch)", OnnxEmbedder(), 64)
        try:
            rows += await embedding_throughput("torch, 1 thread", LocalEmbedder(), 64)
        except (ConfigurationError, EmbeddingError) as missing:  # the [torch] extra is not installed
            print(f"(torch rows skipped: {missing})")
        print(markdown_table(headers, rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated entry counts")
    parser.add_argument("--skip-model", action="store_true", help="skip the embedding-throughput table")
    arguments = parser.parse_args()
    asyncio.run(main([int(size) for size in arguments.sizes.split(",")], arguments.skip_model))
