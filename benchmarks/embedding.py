"""Embedding paths for all-MiniLM-L6-v2: the default (ONNX, no torch) vs torch vs other ONNX paths, speed and agreement.

Run: `.venv/bin/python benchmarks/embedding.py [--pairs 3000|all] [--rounds 3] [--only speed|quality] [--paths ...]`.
Prints markdown tables: single-query latency and 64-caller throughput of each path, a paraphrase lookup through
`SemanticCache` with embedding included, and on ../shared/data/qqp_dev.jsonl how far each path's pair
similarities are from torch's (mean/max |Δ cosine|, pair decisions that flip at the usual thresholds, precision
and hit rate). Target (issue #17): a paraphrase lookup over 2,000 entries, embedding included, <= 5 ms p50.
Latencies are measured in interleaved rounds (the machine is shared) with the load average printed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _tables import markdown_table

from semantic_llm_cache import SemanticCache
from semantic_llm_cache.embeddings import LocalEmbedder, OnnxEmbedder, bundled_model_path

QQP = Path(__file__).resolve().parents[2] / "shared" / "data" / "qqp_dev.jsonl"
REFERENCE = "torch (1 thread)"
THRESHOLDS = (0.90, 0.935, 0.94, 0.95)
CONCURRENT_CALLERS = 64
# the shift in threshold that the similarity curves may show for two paths to count as interchangeable
THRESHOLD_TOLERANCE = 0.001


def load_pairs(limit: int | None) -> tuple[list[str], list[str], np.ndarray]:
    rows = [json.loads(line) for line in QQP.read_text().splitlines() if line.strip()]
    if limit is not None and limit < len(rows):
        chosen = np.random.default_rng(7).choice(len(rows), size=limit, replace=False)
        rows = [rows[index] for index in sorted(chosen)]
    return [row["text_a"] for row in rows], [row["text_b"] for row in rows], np.array([row["label"] for row in rows])


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def ms(seconds: Sequence[float], quantile: float) -> float:
    return float(np.percentile(np.asarray(seconds), quantile) * 1000)


async def load_time(embedder: Any) -> float:
    started = time.perf_counter()
    await embedder.embed(["warm up the model"])
    return time.perf_counter() - started


async def single_query_times(embedder: Any, texts: Sequence[str]) -> list[float]:
    durations = []
    for text in texts:
        started = time.perf_counter()
        await embedder.embed([text])
        durations.append(time.perf_counter() - started)
    return durations


async def concurrent_throughput(embedder: Any, texts: Sequence[str]) -> float:
    pending = iter(texts)

    async def caller() -> None:
        for text in pending:
            await embedder.embed([text])

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CONCURRENT_CALLERS)))
    return len(texts) / (time.perf_counter() - started)


async def embed_all(embedder: Any, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    blocks = [await embedder.embed(texts[start : start + batch_size]) for start in range(0, len(texts), batch_size)]
    return np.concatenate(blocks)


async def filled_cache(embedder: Any, stored: Sequence[str]) -> SemanticCache:
    cache = SemanticCache(embedder=embedder)
    for start in range(0, len(stored), 64):  # concurrent stores share forward passes
        await asyncio.gather(*(cache.store(prompt, f"answer to {prompt}") for prompt in stored[start : start + 64]))
    return cache


async def lookup_times(cache: SemanticCache, queries: Sequence[str]) -> tuple[list[float], int]:
    """Time `lookup` of each paraphrase (none is an exact hit, so each one embeds); also count the hits."""
    durations, hits = [], 0
    for query in queries:
        started = time.perf_counter()
        hit = await cache.lookup(query)
        durations.append(time.perf_counter() - started)
        hits += hit is not None
    return durations, hits


def in_thread_times(embedder: Any, texts: Sequence[str]) -> list[float]:
    """The model's own encode in this thread: the single-query cost without the hop to the worker and back."""
    durations = []
    for text in texts:
        started = time.perf_counter()
        embedder._model.encode(
            [text], batch_size=1, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        durations.append(time.perf_counter() - started)
    return durations


def agreement_rows(
    similarities: dict[str, np.ndarray], labels: np.ndarray, reference: str
) -> tuple[list[list[object]], list[list[object]]]:
    base = similarities[reference]
    agreement: list[list[object]] = []
    curve: list[list[object]] = []
    for path, values in similarities.items():
        difference = np.abs(values - base)
        flips = [int(np.sum((values >= threshold) != (base >= threshold))) for threshold in THRESHOLDS]
        holds = "n/a (reference)" if path == reference else ("yes" if difference.max() <= THRESHOLD_TOLERANCE else "no")
        agreement.append(
            [path, f"{difference.mean():.2e}", f"{difference.max():.2e}", *(str(flip) for flip in flips), holds]
        )
        for threshold in THRESHOLDS:
            hits = values >= threshold
            precision = float(labels[hits].mean()) if hits.any() else float("nan")
            curve.append([path, f"{threshold:.3f}", f"{hits.mean():.4f}", f"{precision:.4f}"])
    return agreement, curve


async def speed(
    embedders: dict[str, Any], pairs: tuple[list[str], list[str], np.ndarray], rounds: int, queries: int
) -> None:
    first_texts, second_texts, labels = pairs
    load_seconds = {path: await load_time(embedder) for path, embedder in embedders.items()}
    duplicates = [index for index, label in enumerate(labels) if label == 1]
    stored_count = min(2000, len(duplicates))
    caches = {
        path: await filled_cache(embedder, [first_texts[i] for i in duplicates[:stored_count]])
        for path, embedder in embedders.items()
    }
    paraphrases = [second_texts[index] for index in duplicates[:stored_count]]
    # interleaved rounds, so a burst of load from a neighbour hits every path alike
    samples: dict[str, dict[str, list[float]]] = {path: {"embed": [], "direct": [], "lookup": []} for path in embedders}
    round_p50s: dict[str, list[float]] = {path: [] for path in embedders}
    throughputs: dict[str, list[float]] = {path: [] for path in embedders}
    hits = dict.fromkeys(embedders, 0)
    loads = []
    for round_index in range(rounds):
        window = slice(round_index * queries, (round_index + 1) * queries)
        # questions no cache holds, so no path has seen them before this round
        texts = second_texts[len(second_texts) - (round_index + 1) * queries :][:queries]
        burst = first_texts[round_index * 640 : (round_index + 1) * 640]
        for path, embedder in embedders.items():
            durations = await single_query_times(embedder, texts)
            samples[path]["embed"] += durations
            round_p50s[path].append(ms(durations, 50))
            samples[path]["direct"] += in_thread_times(embedder, texts)
            throughputs[path].append(await concurrent_throughput(embedder, burst))
            lookups, found = await lookup_times(caches[path], paraphrases[window])
            samples[path]["lookup"] += lookups
            hits[path] += found
        loads.append(load_average())
    rows = []
    for path in embedders:
        embed, direct, lookup = samples[path]["embed"], samples[path]["direct"], samples[path]["lookup"]
        rows.append(
            [
                path,
                f"{ms(embed, 50):.2f} / {ms(embed, 99):.2f}",
                " / ".join(f"{value:.2f}" for value in round_p50s[path]),
                f"{ms(direct, 50):.2f}",
                f"{np.median(throughputs[path]):.0f}",
                f"{ms(lookup, 50):.2f} / {ms(lookup, 99):.2f}",
                f"{hits[path]}/{len(lookup)}",
                f"{load_seconds[path]:.2f}",
            ]
        )
    headers = [
        "path",
        "single query p50 / p99 ms",
        "p50 per round ms",
        "in-thread encode p50 ms",
        f"{CONCURRENT_CALLERS} callers texts/s",
        "paraphrase lookup p50 / p99 ms",
        "lookup hits",
        "first call s",
    ]
    print(
        f"## Speed ({rounds} interleaved rounds × {queries} queries; load avg 1/5 min after each: {', '.join(loads)})\n"
    )
    print(markdown_table(headers, rows))
    print(
        f"\nSingle query: `await embedder.embed([text])` (worker thread + micro-batching queue). In-thread encode: the"
        f" model's forward pass alone, no thread hop. Lookup: `SemanticCache(embedder=...).lookup(paraphrase)` over"
        f" {stored_count} stored QQP questions (memory backend), embedding included; target <= 5 ms p50."
    )
    for cache in caches.values():
        await cache.close()


async def quality(embedders: dict[str, Any], pairs: tuple[list[str], list[str], np.ndarray]) -> None:
    first_texts, second_texts, labels = pairs
    similarities = {}
    for path, embedder in embedders.items():
        vectors_a = await embed_all(embedder, first_texts)
        vectors_b = await embed_all(embedder, second_texts)
        similarities[path] = np.einsum("ij,ij->i", vectors_a, vectors_b)
    agreement, curve = agreement_rows(similarities, labels, reference=REFERENCE)
    print(
        f"\n## Agreement with torch on {len(labels):,} QQP pairs ({int(labels.sum()):,} duplicates): "
        f"|Δ cosine| of each pair, decisions that flip at each threshold\n"
    )
    flip_headers = [f"flips @ {threshold}" for threshold in THRESHOLDS]
    headers = ["path", "mean |Δ|", "max |Δ|", *flip_headers, f"thresholds within {THRESHOLD_TOLERANCE}"]
    print(markdown_table(headers, agreement))
    print(
        f"\n'Thresholds within {THRESHOLD_TOLERANCE}' holds when no pair's similarity moved more than that: then a"
        " path's hits at threshold t include all of torch's hits at t + 0.001 and none of its misses at t - 0.001,"
        " so its precision / hit-rate curve is torch's shifted by at most 0.001."
    )
    print("\n## Hit rate and precision (share of pairs at or above the threshold; duplicates among them)\n")
    print(markdown_table(["path", "threshold", "hit rate", "precision"], curve))


PATHS = {
    REFERENCE: lambda: LocalEmbedder(torch_threads=1),
    "default (ONNX, 2 threads)": lambda: OnnxEmbedder(),
    "default, 1 thread": lambda: OnnxEmbedder(threads=1),
    "default, dynamic int8": lambda: OnnxEmbedder(precision="int8"),
    "ONNX fp32 export of the torch weights": lambda: OnnxEmbedder(bundled_model_path()),
}


async def main(pair_limit: int | None, rounds: int, queries: int, sections: str, paths: list[str]) -> None:
    pairs = load_pairs(pair_limit)
    print(f"# Embedding paths, all-MiniLM-L6-v2 ({os.cpu_count()} cores, load avg 1/5 min {load_average()})\n")
    embedders: dict[str, Any] = {path: PATHS[path]() for path in [REFERENCE, *paths] if path in PATHS}
    if sections in ("all", "speed"):
        await speed(embedders, pairs, rounds, queries)
    if sections in ("all", "quality"):
        await quality(embedders, pairs)
    for embedder in embedders.values():
        embedder.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="3000", help="QQP pairs for the agreement table, or 'all' (20,198)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds")
    parser.add_argument("--queries", type=int, default=200, help="single queries and lookups per path per round")
    parser.add_argument("--only", choices=("all", "speed", "quality"), default="all", help="which tables to print")
    parser.add_argument("--paths", nargs="*", default=list(PATHS)[1:], help=f"besides torch, any of {list(PATHS)[1:]}")
    arguments = parser.parse_args()
    limit = None if arguments.pairs == "all" else int(arguments.pairs)
    asyncio.run(main(limit, arguments.rounds, arguments.queries, arguments.only, arguments.paths))
