"""HNSW index benchmark: recall@1 against the exact flat index, search latency, build time, memory per entry.

    .venv/bin/python benchmarks/hnsw.py                   # both sets at 100k, clustered at 1M (~15 min)
    .venv/bin/python benchmarks/hnsw.py --sizes 100000,1000000 --datasets clustered,random   # all four (~35 min)
    .venv/bin/python benchmarks/hnsw.py --sizes 20000 --queries 200       # a quick run
    .venv/bin/python benchmarks/hnsw.py --sizes 100000 --ef 32,64,128,256  # an ef sweep

Two synthetic sets of 384-dimension unit vectors (the bundled model's dimension):
- "random": standard normal vectors. Nothing is near anything: the worst case for any graph index.
- "clustered": noisy copies of random cluster centres (about 100 entries per centre), so entries have close
  neighbours, as sentence embeddings of real prompts do.
Two kinds of query for each:
- "fresh": a new vector from the same distribution (its nearest entry is usually not very near);
- "paraphrase": a stored entry plus noise, at cosine ~0.95 to it: the lookup a cache hit is made of.
recall@1: share of queries whose HNSW best match is the exact best match (the same inner products FlatIndex
computes, batched; a tie within 1e-6 counts as found). Latency: one HNSWIndex.search(query, k=1) call, in ms;
the "flat" column times FlatIndex.search on the same entries for comparison. Memory: HNSWIndex.nbytes per entry,
and the growth of the process's resident memory during the build per entry (the vectors are part of both).
The churn rows delete 20% of the entries, insert as many new ones (reusing the deleted slots) and measure again.
"""

from __future__ import annotations

import os

# Single-threaded BLAS, as in the other benchmarks: the flat column then times one core, like the backends.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import gc
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _tables import markdown_table

from semantic_llm_cache.index.flat import FlatIndex
from semantic_llm_cache.index.hnsw import DEFAULT_EF_CONSTRUCTION, DEFAULT_EF_SEARCH, DEFAULT_M, HNSWIndex

DIMENSION = 384
BUILD_BATCH = 50_000
PARAPHRASE_NOISE = 0.33  # |noise| relative to the unit vector: cosine 1/sqrt(1 + 0.33^2) ~ 0.95
CLUSTER_NOISE = 0.75  # entry = centre + noise: cosine ~0.8 to the centre, ~0.64 between two of a cluster
CLUSTER_SIZE = 100


def normalise(matrix: np.ndarray) -> np.ndarray:
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


def noise(rng: np.random.Generator, count: int, scale: float) -> np.ndarray:
    """Random directions of length ~scale."""
    return rng.standard_normal((count, DIMENSION), dtype=np.float32) * np.float32(scale / np.sqrt(DIMENSION))


class DataSet:
    """Entries and fresh queries of one kind, generated in chunks (1M x 384 float32 = 1.5 GB)."""

    def __init__(self, kind: str, size: int, seed: int) -> None:
        self.kind = kind
        self.rng = np.random.default_rng(seed)
        clusters = max(1, size // CLUSTER_SIZE)
        self.centres = normalise(self.rng.standard_normal((clusters, DIMENSION), dtype=np.float32))

    def draw(self, count: int) -> np.ndarray:
        if self.kind == "random":
            return normalise(self.rng.standard_normal((count, DIMENSION), dtype=np.float32))
        which = self.rng.integers(0, len(self.centres), count)
        return normalise(self.centres[which] + noise(self.rng, count, CLUSTER_NOISE))

    def entries(self, size: int) -> np.ndarray:
        matrix = np.empty((size, DIMENSION), dtype=np.float32)
        for start in range(0, size, BUILD_BATCH):
            stop = min(size, start + BUILD_BATCH)
            matrix[start:stop] = self.draw(stop - start)
        return matrix


def rss_bytes() -> int | None:
    """Resident set size of this process (Linux /proc), or None where that is unavailable."""
    try:
        fields = Path("/proc/self/statm").read_text().split()
    except OSError:
        return None
    import resource

    return int(fields[1]) * resource.getpagesize()


def exact_best(entries: np.ndarray, live: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and similarity of each query's exact best match among the live rows (chunked matrix products)."""
    best_row = np.full(len(queries), -1, dtype=np.int64)
    best_score = np.full(len(queries), -np.inf, dtype=np.float32)
    for start in range(0, len(entries), 200_000):
        chunk = entries[start : start + 200_000] @ queries.T
        chunk[~live[start : start + 200_000]] = -np.inf
        rows = np.argmax(chunk, axis=0)
        scores = chunk[rows, np.arange(len(queries))]
        better = scores > best_score
        best_row[better] = rows[better] + start
        best_score[better] = scores[better]
    return best_row, best_score


def timed_searches(index: HNSWIndex | FlatIndex, queries: np.ndarray) -> Iterator[tuple[float, str | None, float]]:
    for query in queries:
        started = time.perf_counter()
        found = index.search(query, 1)
        elapsed = time.perf_counter() - started
        yield elapsed, (found[0][0] if found else None), (found[0][1] if found else -2.0)


def measure(
    index: HNSWIndex, keys: list[str], queries: dict[str, np.ndarray], truth: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, tuple[float, float, float]]:
    """Per query kind: recall@1, p50 ms, p99 ms."""
    results = {}
    for name, matrix in queries.items():
        truth_rows, truth_scores = truth[name]
        found_count = 0
        durations = []
        for (elapsed, key, score), truth_row, truth_score in zip(
            timed_searches(index, matrix), truth_rows, truth_scores, strict=True
        ):
            durations.append(elapsed)
            found_count += key == keys[truth_row] or score >= truth_score - 1e-6
        milliseconds = np.asarray(durations) * 1e3
        results[name] = (
            found_count / len(matrix),
            float(np.percentile(milliseconds, 50)),
            float(np.percentile(milliseconds, 99)),
        )
    return results


def paraphrases(rng: np.random.Generator, entries: np.ndarray, live: np.ndarray, count: int) -> np.ndarray:
    rows = rng.choice(np.flatnonzero(live), count, replace=False)
    return normalise(entries[rows] + noise(rng, count, PARAPHRASE_NOISE))


def flat_p50_ms(entries: np.ndarray, queries: np.ndarray) -> float:
    flat = FlatIndex(DIMENSION, initial_capacity=len(entries))
    for row, vector in enumerate(entries):
        flat.add(str(row), vector)
    durations = [elapsed for elapsed, _, _ in timed_searches(flat, queries)]
    return float(np.percentile(np.asarray(durations) * 1e3, 50))


def run(kind: str, size: int, args: argparse.Namespace) -> list[list[object]]:
    """Build and measure one data set."""
    rows: list[list[object]] = []
    print(f"# {kind}, {size:,} entries: generating", file=sys.stderr, flush=True)
    data = DataSet(kind, size, seed=size + (1 if kind == "clustered" else 0))
    entries = data.entries(size)
    keys = [f"entry-{row}" for row in range(size)]
    live = np.ones(size, dtype=bool)
    queries = {"fresh": data.draw(args.queries), "paraphrase": paraphrases(data.rng, entries, live, args.queries)}
    gc.collect()
    rss_before = rss_bytes()
    index = HNSWIndex(
        DIMENSION,
        initial_capacity=size,
        m=args.m,
        ef_construction=args.ef_construction,
        num_threads=args.threads,
    )
    started = time.perf_counter()
    for start in range(0, size, BUILD_BATCH):
        index.add_many(keys[start : start + BUILD_BATCH], entries[start : start + BUILD_BATCH])
        print(f"  built {start + BUILD_BATCH:,} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    build_seconds = time.perf_counter() - started
    rss_after = rss_bytes()
    rss_per_entry = "n/a" if rss_before is None or rss_after is None else f"{(rss_after - rss_before) / size:,.0f}"
    bytes_per_entry = f"{index.nbytes / size:,.0f}"
    flat_ms = f"{flat_p50_ms(entries, queries['fresh'][:50]):.1f}"
    gc.collect()

    def add_rows(label: str, build: str) -> None:
        truth = {name: exact_best(entries, live, matrix) for name, matrix in queries.items()}
        for ef in args.ef:
            index.ef_search = ef
            for query_kind, (recall, p50, p99) in measure(index, keys, queries, truth).items():
                rows.append(
                    [kind, f"{size:,}", label, query_kind, ef, f"{recall:.3f}", f"{p50:.2f}", f"{p99:.2f}",
                     flat_ms, build, bytes_per_entry, rss_per_entry]
                )  # fmt: skip
            print(f"  {label} ef={ef} measured", file=sys.stderr, flush=True)

    add_rows("built", f"{build_seconds:.0f}")
    if size <= args.churn_max_size:
        # Delete 20%, insert as many new entries (they take over the deleted slots), and measure again.
        churn = size // 5
        doomed = data.rng.choice(size, churn, replace=False)
        for row in doomed:
            index.remove(keys[row])
        live[doomed] = False
        fresh = data.entries(churn)
        new_rows = np.arange(size, size + churn)
        entries = np.concatenate([entries, fresh])
        live = np.concatenate([live, np.ones(churn, dtype=bool)])
        keys += [f"entry-{row}" for row in new_rows]
        started = time.perf_counter()
        index.add_many(keys[size:], fresh)
        churn_seconds = time.perf_counter() - started
        assert index.capacity == size, "deleted slots were not reused"
        queries["paraphrase"] = paraphrases(data.rng, entries, live, args.queries)
        add_rows("after 20% churn", f"{churn_seconds:.0f} (churn)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", help="comma-separated entry counts (default: 100000, and 1000000 clustered)")
    parser.add_argument("--datasets", default="clustered,random", help="clustered, random or both")
    parser.add_argument("--queries", type=int, default=1000, help="queries of each kind per size")
    parser.add_argument("--ef", default="64,128,256", help=f"ef_search values (default {DEFAULT_EF_SEARCH})")
    parser.add_argument("--m", type=int, default=DEFAULT_M)
    parser.add_argument("--ef-construction", type=int, default=DEFAULT_EF_CONSTRUCTION)
    parser.add_argument("--threads", type=int, default=2, help="build threads")
    parser.add_argument("--churn-max-size", type=int, default=100_000, help="run the churn rows up to this size")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # "kind:size": measure one data set, print JSON rows
    args = parser.parse_args()
    args.ef = [int(value) for value in args.ef.split(",")]
    if args.one:
        kind, size = args.one.split(":")
        print(json.dumps(run(kind, int(size), args)))
        return
    rows: list[list[object]] = []
    if args.sizes is None:  # 1M random vectors take ~15 minutes more to build on 2 cores: only when asked
        plan = [(kind, 100_000) for kind in args.datasets.split(",")] + [("clustered", 1_000_000)]
    else:
        plan = [(kind, int(size)) for size in args.sizes.split(",") for kind in args.datasets.split(",")]
    for kind, size in plan:  # one process per data set: its memory growth is its own, and is returned after
        command = [sys.executable, __file__, *sys.argv[1:], "--one", f"{kind}:{size}"]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
        rows += json.loads(done.stdout.strip().splitlines()[-1])
    print(f"HNSW (hnswlib, M={args.m}, ef_construction={args.ef_construction}), {DIMENSION} dimensions, "
          f"{args.queries} queries of each kind, search times in ms\n")  # fmt: skip
    headers = ["data", "entries", "index", "queries", "ef", "recall@1", "p50", "p99", "flat p50", "build s",
               "bytes/entry", "RSS/entry"]  # fmt: skip
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
