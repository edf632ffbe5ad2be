"""What encryption at rest costs: store and lookup latency with `encryption_key` off and on.

Run: `.venv/bin/python benchmarks/encryption.py [--entries 2000] [--answer-chars 1000]`.
Memory and SQLite backends, vectors precomputed (embedding excluded: it is the same either way), each lookup an
exact hit or a semantic hit of the stored prompts. Prints a markdown table of p50 / p99 in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tables import markdown_table

from semantic_llm_cache import SemanticCache
from semantic_llm_cache.backends.memory import MemoryBackend
from semantic_llm_cache.backends.sqlite import SQLiteBackend
from semantic_llm_cache.storage import StorageBackend


class TableEmbedder:
    """Vectors looked up in a table: embedding costs nothing, so the table shows only storage and crypto."""

    name = "bench-table"
    dimension = 384

    def __init__(self, texts: Sequence[str]) -> None:
        rng = np.random.default_rng(7)
        self.vectors = {text: rng.standard_normal(384).astype(np.float32) for text in texts}

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.vectors[text] for text in texts])


def percentiles(samples: list[float]) -> tuple[str, str]:
    values = np.array(samples) * 1e6
    return f"{np.percentile(values, 50):.0f}", f"{np.percentile(values, 99):.0f}"


async def measure(backend: StorageBackend, encrypted: bool, entries: int, answer: str) -> list[str]:
    prompts = [f"question number {number} about the refund policy" for number in range(entries)]
    variants = [prompt + " please" for prompt in prompts]
    embedder = TableEmbedder(prompts + variants)
    for prompt, variant in zip(prompts, variants, strict=True):  # each variant is a close neighbour
        embedder.vectors[variant] = embedder.vectors[prompt] + 0.05 * embedder.vectors[variant]
    key = secrets.token_urlsafe(32) if encrypted else None
    cache = SemanticCache(backend=backend, embedder=embedder, threshold=0.9, encryption_key=key)
    stores, exact, semantic = [], [], []
    for prompt in prompts:
        started = time.perf_counter()
        await cache.store(prompt, answer, metadata={"source": "bench"})
        stores.append(time.perf_counter() - started)
    for prompt, variant in zip(prompts, variants, strict=True):
        started = time.perf_counter()
        assert await cache.lookup(prompt) is not None
        exact.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert await cache.lookup(variant) is not None
        semantic.append(time.perf_counter() - started)
    await cache.close()
    return [*percentiles(stores), *percentiles(exact), *percentiles(semantic)]


async def main(entries: int, answer_chars: int) -> None:
    answer = ("The refund policy allows returns within thirty days. " * 40)[:answer_chars]
    rows = []
    for backend_name in ("memory", "sqlite"):
        for encrypted in (False, True):
            with tempfile.TemporaryDirectory() as folder:
                backend: StorageBackend = (
                    MemoryBackend() if backend_name == "memory" else SQLiteBackend(Path(folder) / "bench.db")
                )
                figures = await measure(backend, encrypted, entries, answer)
            rows.append([backend_name, "on" if encrypted else "off", *figures])
    print(f"{entries} entries, {answer_chars}-character answers, embedding excluded; microseconds\n")
    print(markdown_table(["backend", "encryption", "store p50", "store p99", "exact lookup p50", "exact p99",
                          "semantic lookup p50", "semantic p99"], rows))  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--answer-chars", type=int, default=1000)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.entries, arguments.answer_chars))
