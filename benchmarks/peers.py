"""Head-to-head: this library against GPTCache, RedisVL, langchain-redis and LangChain's InMemoryCache.

    .venv/bin/python benchmarks/peers.py                  # 5,000 pairs, every system (a few minutes)
    .venv/bin/python benchmarks/peers.py --pairs all      # all 20,198 pairs
    .venv/bin/python benchmarks/peers.py --skip gptcache,redisvl --pairs 1000
    .venv/bin/python benchmarks/peers.py --only ours-redis-search,redisvl --entries 50000   # 50,000 entries

Peers are benchmark-only dependencies: pip install 'async-semantic-llm-cache[bench]'.

One workload for everyone: the first N labeled pairs of ../shared/data/qqp_dev.jsonl (calibration.py's
protocol: each distinct text_a is stored once, its answer being its row number; each text_b is looked up).
One embedder for everyone: the bundled all-MiniLM-L6-v2. Every text is embedded once up front (kept in
~/.cache/semantic-llm-cache, shared with quality.py) and each system gets an embedding function that looks the
vector up, so lookups are timed without the model; the model's single-query time is measured separately and
added (resampled) for the peers, and measured directly for this library (whose exact matches skip it).

Each system runs at its own default setting (see peers_systems.py for each default and its cosine reading).
Measured per system: hit rate; precision and strict precision, judged like calibration.py (the same text is
correct, a labeled pair counts as its label, anything else is unlabeled and wrong in strict precision);
sequential lookup latency p50/p99; lookups per second with 64 concurrent callers (asyncio tasks, or 64
threads for a sync-only API); bytes per entry in the Python heap (tracemalloc over the stores) and outside it
(Redis INFO used_memory growth, or file sizes). Starts its own redis-server processes (Redis 8.2 + search for
every Redis system, so that all are measured on the same server; `--client-on-redis7` puts index="client" on
Debian's Redis 7 instead) on free loopback ports and stops them by PID at the end.

Writes benchmarks/results/peers.md (the table and notes) and benchmarks/results/peers.png (precision
against hit rate: our threshold sweep, with and without the answer guard, and every system's default point).
"""

from __future__ import annotations

import os

# Single-threaded BLAS (and FAISS's OpenMP, below): on two busy cores a multi-threaded matrix-vector product
# waits for a second core. Must be set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import asyncio
import gc
import logging
import platform
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _tables import markdown_table  # noqa: E402
from peers_systems import (  # noqa: E402
    DIMENSION,
    GPTCacheExactSystem,
    GPTCacheSystem,
    LangChainMemorySystem,
    LangChainRedisSystem,
    Ours,
    RedisVLSystem,
    System,
    TableEmbedder,
    VectorTable,
)

from semantic_llm_cache.calibration import (  # noqa: E402
    CalibrationReport,
    LabeledPair,
    _identity,  # the judging rule itself, so both benchmarks judge alike
    embed_texts,
    load_pairs,
    sweep,
)
from semantic_llm_cache.embeddings import LocalEmbedder  # noqa: E402
from semantic_llm_cache.scope import normalize_prompt  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "qqp_dev.jsonl"
VECTOR_CACHE = Path.home() / ".cache" / "semantic-llm-cache"
RESULTS = ROOT / "benchmarks" / "results"
SYSTEMS = ("ours-memory", "ours-sqlite", "ours-redis-client", "ours-redis-search", "gptcache", "redisvl",
           "langchain-redis", "langchain-memory")  # fmt: skip
WARM_UP = 20
BLOCK = 250  # entries or queries per system in turn (interleaved passes)


@dataclass
class Workload:
    """The sample: stored prompts (answer id = row), queries, labels, and the vectors of every text."""

    pairs: list[LabeledPair]
    stored_texts: list[str]
    queries: list[str]
    known: dict[frozenset[str], int]
    table: VectorTable
    filler: list[str] = field(default_factory=list)  # --entries: random-vector entries stored after the questions

    @property
    def entries(self) -> list[str]:
        """Everything stored, in order: the questions (answer id = row), then the filler."""
        return [*self.stored_texts, *self.filler]

    def verdict(self, query: str, served: int) -> int:
        """1 correct, 0 wrong (labeled), -1 unlabeled: calibration.py's rules (a filler entry served is wrong)."""
        if served >= len(self.stored_texts):
            return 0
        served_text = self.stored_texts[served]
        if _identity(served_text) == _identity(query):
            return 1
        return self.known.get(frozenset((_identity(served_text), _identity(query))), -1)


@dataclass
class Result:
    system: System
    hits: int = 0
    correct: int = 0
    wrong: int = 0
    unlabeled: int = 0
    queries: int = 0
    latency: list[float] = field(default_factory=list)
    embedded: list[bool] = field(default_factory=list)  # per lookup: did it need the model?
    with_embedding: list[float] = field(default_factory=list)
    measured_with_model: list[float] = field(default_factory=list)  # ours only: the real model, directly
    throughput: float = 0.0
    errors: int = 0
    heap_per_entry: float | None = None
    external_per_entry: float | None = None
    store_seconds: float = 0.0
    stored: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0

    @property
    def precision(self) -> float:
        labeled = self.correct + self.wrong
        return self.correct / labeled if labeled else 1.0

    @property
    def strict_precision(self) -> float:
        return self.correct / self.hits if self.hits else 1.0


async def build_workload(path: Path, count: int | None) -> tuple[Workload, LocalEmbedder]:
    """Embed every distinct text of the whole file once (the same matrix and cache file as quality.py), then
    keep the first `count` pairs."""
    everything = load_pairs(path)
    stored_all = list(dict.fromkeys(normalize_prompt(pair.text_a) for pair in everything))
    queries_all = [normalize_prompt(pair.text_b) for pair in everything]
    distinct = list(dict.fromkeys(stored_all + queries_all))
    embedder = LocalEmbedder(max_batch_size=256)

    def progress(done: int, total: int) -> None:
        if done == total or done % 5120 == 0:
            print(f"  embedded {done}/{total} texts", file=sys.stderr)

    vectors = await embed_texts(distinct, embedder, progress=progress, cache_dir=VECTOR_CACHE)
    table = VectorTable({text: vectors[row] for row, text in enumerate(distinct)})
    pairs = everything if count is None else everything[:count]
    stored_texts = list(dict.fromkeys(normalize_prompt(pair.text_a) for pair in pairs))
    queries = [normalize_prompt(pair.text_b) for pair in pairs]
    known = {frozenset((_identity(pair.text_a), _identity(pair.text_b))): pair.label for pair in pairs}
    return Workload(pairs, stored_texts, queries, known, table), embedder


def add_filler(workload: Workload, entries: int | None, seed: int = 11) -> None:
    """Make `entries` stored entries in all: the questions, then random unit vectors (cos ~0 to every question,
    so never served at any peer's threshold) under texts of their own. The index is then that large."""
    missing = 0 if entries is None else entries - len(workload.stored_texts)
    if missing <= 0:
        return
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((missing, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    workload.filler = [f"filler entry number {row}" for row in range(missing)]
    workload.table.vectors.update(zip(workload.filler, vectors, strict=True))


async def embedding_times(embedder: LocalEmbedder, texts: Sequence[str]) -> list[float]:
    """Single-query embedding time of the bundled model, one caller at a time."""
    await embedder.embed(["warm up the model"])
    durations = []
    for text in texts:
        started = time.perf_counter()
        await embedder.embed([text])
        durations.append(time.perf_counter() - started)
    return durations


async def call_lookup(system: System, text: str) -> int | None:
    return system.lookup_sync(text) if system.threaded else await system.lookup(text)


async def throughput(system: System, texts: Sequence[str], callers: int) -> tuple[float, int]:
    """Lookups per second with `callers` in flight (asyncio tasks, or threads for a sync-only API)."""
    errors = 0
    if system.threaded:

        def safe(text: str) -> None:
            nonlocal errors
            try:
                system.lookup_sync(text)
            except Exception:  # a peer's failure under load is counted, not fatal
                errors += 1

        with ThreadPoolExecutor(callers) as pool:
            started = time.perf_counter()
            list(pool.map(safe, texts))
            elapsed = time.perf_counter() - started
        return len(texts) / elapsed, errors
    pending = iter(texts)

    async def caller() -> None:
        nonlocal errors
        for text in pending:
            try:
                await system.lookup(text)
            except Exception:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return len(texts) / (time.perf_counter() - started), errors


async def store_interleaved(systems: Sequence[tuple[System, Result]], workload: Workload) -> None:
    """Store every prompt into every system in blocks of `BLOCK` entries, round-robin (a block into each system,
    then the next block), one call at a time and untraced, so that a busy machine slows every system alike
    (tracemalloc slows allocation-heavy code several-fold); then each system's wait until it has indexed
    everything. Blocks, not single calls: a server idle between every call of its client measured 2-3x slower
    on this VM (its process sleeps and is woken each time), which a steady stream of calls does not see."""
    texts = workload.entries
    storing = [(system, result) for system, result in systems if system.stores]
    for start in range(0, len(texts), BLOCK):
        for system, result in storing:
            for number in range(start, min(start + BLOCK, len(texts))):
                started = time.perf_counter()
                await system.store(number, texts[number])
                result.store_seconds += time.perf_counter() - started
    for system, result in storing:
        started = time.perf_counter()
        await system.settle()
        result.store_seconds += time.perf_counter() - started
        result.stored = len(texts)


async def footprint(system: System, workload: Workload, result: Result) -> None:
    """Store every prompt into a fresh instance of the system, alone and traced: the Python heap's growth
    (tracemalloc) over the stores and the first lookups (some indexes are built by the first search), and the
    growth outside it (Redis used_memory, files), per entry."""
    await system.open()
    try:
        external_before = system.external_bytes()
        gc.collect()
        tracemalloc.start()
        heap_before = tracemalloc.get_traced_memory()[0]
        entries = workload.entries
        for number, text in enumerate(entries):
            await system.store(number, text)
        await system.settle()
        for text in workload.queries[:WARM_UP]:
            await call_lookup(system, text)
        gc.collect()
        heap_after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        result.heap_per_entry = (heap_after - heap_before) / len(entries)
        external_after = system.external_bytes()
        if external_before is not None and external_after is not None:
            result.external_per_entry = (external_after - external_before) / len(entries)
    finally:
        await system.close()


async def look_up_interleaved(systems: Sequence[tuple[System, Result]], workload: Workload) -> None:
    """The judged latency pass, one call at a time: blocks of `BLOCK` queries, each block in every system in turn."""
    for system, _ in systems:
        for text in workload.queries[:WARM_UP]:  # a lazily built index is built before anything is timed
            await call_lookup(system, text)
    for start in range(0, len(workload.queries), BLOCK):
        for system, result in systems:
            for text in workload.queries[start : start + BLOCK]:
                started = time.perf_counter()
                try:
                    served = await call_lookup(system, text)
                except Exception as exc:
                    result.errors += 1
                    logging.getLogger("peers").warning("%s lookup failed: %s", system.label, exc)
                    served = None
                result.latency.append(time.perf_counter() - started)
                result.embedded.append(system.embedded_last())
                result.queries += 1
                if served is None:
                    continue
                result.hits += 1
                verdict = workload.verdict(text, served)
                result.correct += verdict == 1
                result.wrong += verdict == 0
                result.unlabeled += verdict == -1


async def under_load(system: System, workload: Workload, result: Result, arguments: argparse.Namespace,
                     embed_samples: Sequence[float], model_texts: Sequence[str],
                     embedder: LocalEmbedder) -> None:  # fmt: skip
    """The concurrent pass (throughput) and the latency with embedding, one system at a time."""
    texts = workload.queries[: arguments.throughput_queries]
    result.throughput, errors = await throughput(system, texts, arguments.callers)
    result.errors += errors
    # Every lookup that needed the model pays a single-query embedding time drawn from the measured ones: one
    # set of model timings for every system, so the machine's load at other moments does not favour anyone.
    model_time = np.random.default_rng(0).choice(embed_samples, len(result.latency))
    result.with_embedding = list(np.asarray(result.latency) + model_time * np.asarray(result.embedded))
    if isinstance(system, Ours):
        result.measured_with_model = await system.timed_with_model(model_texts, embedder)


async def open_systems(keys: Sequence[str], workload: Workload, urls: dict[str, str],
                       faiss_threads: int | None) -> list[tuple[str, System, Result]]:  # fmt: skip
    """Open the systems (GPTCache's exact-match row rides on its semantic one); a missing peer is skipped."""
    group: list[tuple[str, System, Result]] = []
    for key in keys:
        system = make_system(key, workload, urls, faiss_threads)
        try:
            await system.open()
        except ImportError as exc:
            print(f"{system.label}: skipped: {exc} (pip install 'async-semantic-llm-cache[bench]')", file=sys.stderr)
            continue
        group.append((key, system, Result(system)))
        if isinstance(system, GPTCacheSystem):
            exact = GPTCacheExactSystem(system)
            group.append(("gptcache-exact", exact, Result(exact)))
    return group


async def measure_group(group: Sequence[tuple[System, Result]], workload: Workload, arguments: argparse.Namespace,
                        embed_samples: Sequence[float], model_texts: Sequence[str],
                        embedder: LocalEmbedder) -> None:  # fmt: skip
    """Stores and judged lookups (interleaved across the group), then each system under load."""
    names = ", ".join(system.label for system, _ in group)
    print(f"{names}: storing {len(workload.entries):,} entries, looking up "
          f"{len(workload.queries):,} queries ...", file=sys.stderr)  # fmt: skip
    started = time.perf_counter()
    await store_interleaved(group, workload)
    for system, result in group:
        if isinstance(system, GPTCacheSystem) and system.stored_count() != result.stored:
            print(f"  GPTCache holds {system.stored_count()} of {result.stored} entries (evicted)", file=sys.stderr)
    await look_up_interleaved(group, workload)
    for system, result in group:
        await under_load(system, workload, result, arguments, embed_samples, model_texts, embedder)
        if isinstance(system, GPTCacheExactSystem):
            semantic = next(r for s, r in group if s is system.semantic)
            result.stored, result.store_seconds = semantic.stored, semantic.store_seconds
        print(f"  {system.label}:", file=sys.stderr)
        _progress(result, time.perf_counter() - started)


def make_system(key: str, workload: Workload, urls: dict[str, str], faiss_threads: int | None) -> System:
    table = workload.table
    labels = {"ours-memory": "ours, MemoryBackend", "ours-sqlite": "ours, SQLiteBackend",
              "ours-redis-client": f"ours, RedisBackend index=client (Redis {'7' if 'plain' in urls else '8.2'})",
              "ours-redis-search": "ours, RedisBackend index=search (Redis 8.2)"}  # fmt: skip
    if key.startswith("ours-"):
        server = "plain" if key == "ours-redis-client" and "plain" in urls else "search"
        url = urls[server] if "redis" in key else None
        return Ours(key, labels[key], table, url)
    if key == "gptcache":
        return GPTCacheSystem(table, len(workload.entries), faiss_threads)
    if key == "redisvl":
        return RedisVLSystem(table, urls["search"])
    if key == "langchain-redis":
        return LangChainRedisSystem(table, urls["search"])
    if key == "langchain-memory":
        return LangChainMemorySystem()
    raise ValueError(f"unknown system {key!r}")


async def run(arguments: argparse.Namespace, keys: list[str], urls: dict[str, str]) -> None:
    count = None if arguments.pairs == "all" else int(arguments.pairs)
    print("embedding (or reading cached vectors) ...", file=sys.stderr)
    workload, embedder = await build_workload(Path(arguments.data), count)
    add_filler(workload, arguments.entries)
    report = await sweep(workload.pairs, TableEmbedder(workload.table))
    rng = np.random.default_rng(1)
    model_texts = [workload.queries[i] for i in rng.permutation(len(workload.queries))[: arguments.model_queries]]
    embed_samples = await embedding_times(embedder, model_texts)
    print(f"single-query embedding p50 {np.percentile(embed_samples, 50) * 1000:.2f} ms", file=sys.stderr)
    opened: list[tuple[str, System, Result]] = []
    batches = [keys] if arguments.interleaved else [[key] for key in keys]  # alone: open, measure, close
    for batch in batches:
        group = await open_systems(batch, workload, urls, arguments.faiss_threads)
        opened.extend(group)
        try:
            await measure_group([(system, result) for _, system, result in group], workload, arguments,
                                embed_samples, model_texts, embedder)  # fmt: skip
        finally:
            for _, system, _ in group:
                await system.close()  # the next system meets an empty server, as it would alone
    for key, system, result in opened:  # alone, traced: what each system's entries take
        if system.stores:
            await footprint(make_system(key, workload, urls, arguments.faiss_threads), workload, result)
        elif isinstance(system, GPTCacheExactSystem):
            result.external_per_entry = next(r for _, s, r in opened if s is system.semantic).external_per_entry
    results = [result for _, _, result in opened]
    embedder.close()
    output = render(results, report, workload, embed_samples, arguments)
    print(output)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "peers.md").write_text(output + "\n", encoding="utf-8")
    plot(results, report, RESULTS / "peers.png")
    print(f"\nwrote {(RESULTS / 'peers.md').relative_to(ROOT)} and {(RESULTS / 'peers.png').relative_to(ROOT)}")


def _progress(result: Result, seconds: float) -> None:
    p50 = np.percentile(result.latency, 50) * 1000
    p99 = np.percentile(result.latency, 99) * 1000
    store = result.store_seconds / max(1, result.stored) * 1000
    print(f"  hit rate {result.hit_rate:.3f}, precision {result.precision:.3f}, p50 {p50:.3f} ms, p99 {p99:.3f} ms, "
          f"store {store:.3f} ms each, {result.throughput:.0f}/s x64, errors {result.errors} "
          f"({seconds:.0f}s)", file=sys.stderr)  # fmt: skip


def _ms(samples: Sequence[float]) -> str:
    values = np.asarray(samples) * 1000
    p50, p99 = np.percentile(values, 50), np.percentile(values, 99)
    return " / ".join(f"{value:.4f}" if value < 0.01 else f"{value:.3f}" for value in (p50, p99))


def _bytes(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _cosine(system: System) -> str:
    return "exact text" if system.cosine is None else f"cos ≥ {system.cosine:.2f}"


def render(results: list[Result], report: CalibrationReport, workload: Workload, embed_samples: Sequence[float],
           arguments: argparse.Namespace) -> str:  # fmt: skip
    headers = ["system", "default (as cosine)", "hit rate", "precision", "strict precision",
               "hits (wrong / unlabeled)", "lookup p50 / p99 ms", "+ embedding p50 / p99 ms",
               f"lookups/s, {arguments.callers} callers", "store ms each", "heap B/entry",
               "Redis or file B/entry"]  # fmt: skip
    order = ("each system alone, one after another" if not arguments.interleaved else
             f"`--interleaved`: the systems interleaved (blocks of {BLOCK} queries, each block in every system in "
             "turn, so a busy machine slows all alike)")  # fmt: skip
    filler = f"; then {len(workload.filler):,} random-vector filler entries, {arguments.entries:,} in all" if (
        workload.filler) else ""  # fmt: skip
    rows = []
    for result in results:
        system = result.system
        rows.append([
            system.label, f"{system.default} → {_cosine(system)}", f"{result.hit_rate:.3f}",
            f"{result.precision:.3f}", f"{result.strict_precision:.3f}",
            f"{result.hits} ({result.wrong} / {result.unlabeled})",
            _ms(result.latency), _ms(result.with_embedding),
            f"{result.throughput:,.0f}" + (" (threads)" if system.threaded else ""),
            f"{result.store_seconds / max(1, result.stored) * 1000:.3f}",
            "(shared)" if isinstance(system, GPTCacheExactSystem) else _bytes(result.heap_per_entry),
            _bytes(result.external_per_entry) + (f" ({system.external_note})" if system.external_note else ""),
        ])  # fmt: skip
    ours = report.row(0.94, True)
    direct = "; ".join(f"{r.system.label.removeprefix('ours, ')} {_ms(r.measured_with_model)}"
                       for r in results if r.measured_with_model) or "not run"  # fmt: skip
    peers_in_sweep = (
        "; ".join(
            f"cos ≥ {cosine:.2f}: hit rate {row.hit_rate:.3f}, precision {row.precision:.3f}"
            for cosine in sorted(
                {r.system.cosine for r in results if r.system.cosine and not isinstance(r.system, Ours)}
            )
            for row in [report.row(cosine, False)]
        )
        or "no semantic peer run"
    )
    errors = ", ".join(f"{r.system.label}: {r.errors}" for r in results if r.errors) or "none"
    command = "python benchmarks/peers.py" + (f" --pairs {arguments.pairs}" if arguments.pairs != "5000" else "")
    if arguments.skip:
        command += f" --skip {arguments.skip}"
    lines = [
        f"## Head-to-head on Quora question pairs ({len(workload.pairs):,} pairs)",
        "",
        f"`{command}` on {platform.node() or 'this machine'} ({os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end). Workload: the first {len(workload.pairs):,} pairs of "
        f"`{Path(arguments.data).name}`; {len(workload.stored_texts):,} distinct `text_a` stored (answer = row "
        f"number{filler}), {len(workload.queries):,} `text_b` looked up. Embedder for everyone: the bundled "
        "all-MiniLM-L6-v2, vectors precomputed and looked up.",
        "",
        markdown_table(headers, rows),
        "",
        "- **precision** = correct / labeled hits; **strict precision** = correct / all hits (a hit on a pair the "
        "data does not label counts as wrong); the same text is correct (calibration.py's rules).",
        f"- **lookup**: one call at a time, {order}, embedding excluded (the embedding function is a table "
        "look-up). "
        "**+ embedding**: each lookup that needed the model (every lookup of GPTCache, RedisVL and "
        "langchain-redis; ours except exact matches; never InMemoryCache) plus a single-query embedding time "
        f"drawn from {len(embed_samples)} measured ones (bundled model, one caller, 1 torch thread: p50 "
        f"{np.percentile(embed_samples, 50) * 1000:.2f} ms, p99 {np.percentile(embed_samples, 99) * 1000:.2f} ms)."
        f" Measured directly with the real model on the same {len(embed_samples)} queries, this library's lookup "
        f"p50 / p99 ms: {direct}.",
        f"- **lookups/s**: {arguments.callers} concurrent callers over the first "
        f"{min(arguments.throughput_queries, len(workload.queries)):,} queries, embedding excluded: asyncio "
        "tasks on the async API (ours `lookup`, RedisVL `acheck`, langchain `alookup`), a pool of "
        f"{arguments.callers} threads for GPTCache's sync-only `get`.",
        "- **store ms each**: the stores, one call at a time, in the same order as the lookups, embedding "
        "excluded (ours `store`, RedisVL `astore`, GPTCache `put`, the LangChain caches' `update`), plus the wait "
        "until the index has taken them in; not traced (tracemalloc slows allocation-heavy code several-fold).",
        "- **heap B/entry**, **Redis or file**: measured afterwards, one system at a time, by storing the same "
        "entries again into a fresh instance: growth of the Python heap (tracemalloc) over the stores and the "
        f"first {WARM_UP} lookups (which build lazily loaded indexes), per entry (FAISS's C++ index is not in it; "
        "it is in the file column); Redis INFO used_memory growth per entry (entries, search index, our "
        "changelog), or the SQLite/FAISS files per entry.",
        f"- Calibration sweep on the same sample (calibration.py, threshold 0.94, guard on): hit rate "
        f"{ours.hit_rate:.3f}, precision {ours.precision:.3f}, strict precision {ours.strict_precision:.3f} "
        f"({ours.hits} hits); the measured rows of this library should agree, less the hits the engine's shared-text "
        "check refuses (one prompt is the other plus an appended part; the sweep does not model it). Guard off, at "
        "each peer's "
        f"cosine threshold (the peers serve the nearest entry without a guard): {peers_in_sweep}.",
        f"- Lookup errors: {errors}. FAISS OpenMP threads: "
        f"{arguments.faiss_threads if arguments.faiss_threads is not None else 'FAISS default'}; "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}.",
        "- Defaults and their cosine reading: GPTCache `init_similar_cache()` scores 4 - d with d the squared "
        "L2 distance of unit vectors (2 - 2 cos) and needs >= 0.8 x 4: cos >= 0.6; its `Cache.init()` default "
        "evaluation is ExactMatchEvaluation (exact text only). RedisVL and langchain-redis take a cosine "
        "distance (1 - cos), inclusive: 0.1 -> cos >= 0.9, 0.2 -> cos >= 0.8. All peers serve the single nearest "
        "entry; this library also refuses close prompts that differ in numbers, negation, names or swapped "
        "opposites (answer guard).",
        "- GPTCache's time goes to SQLite commits: every `get` that finds a candidate updates its `last_access` "
        "and, on a hit, inserts a report row, each in its own committed transaction (default rollback journal, "
        "an fsync each); `put` commits once per entry and writes the FAISS index file every 20 puts. Its "
        "latency therefore follows the disk's fsync time (on this shared machine, over ten times higher in runs "
        "where other jobs used the disk).",
    ]
    return "\n".join(lines)


def plot(results: list[Result], report: CalibrationReport, path: Path) -> Path:
    """Precision against hit rate: our threshold sweep (guard on and off) and each system's measured default;
    and the same against the threshold, each peer at its default converted to cosine similarity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(15, 6))
    for guard, style in ((True, "-"), (False, "--")):
        rows = sorted((row for row in report.rows if row.guard == guard), key=lambda row: row.threshold)
        label = "guard on" if guard else "guard off"
        left.plot([r.hit_rate for r in rows], [r.precision for r in rows], style, color="tab:blue",
                  label=f"ours, threshold sweep ({label}): precision")  # fmt: skip
        left.plot([r.hit_rate for r in rows], [r.strict_precision for r in rows], style, color="tab:blue",
                  alpha=0.35, label=f"ours ({label}): strict precision")  # fmt: skip
        right.plot([r.threshold for r in rows], [r.precision for r in rows], style, color="tab:blue",
                   label=f"ours precision ({label})")  # fmt: skip
        right.plot([r.threshold for r in rows], [r.hit_rate for r in rows], style, color="tab:orange",
                   label=f"ours hit rate ({label})")  # fmt: skip
    for threshold in (0.6, 0.7, 0.8, 0.9, 0.94, 0.97):
        row = report.row(threshold, True)
        left.annotate(f"{threshold:g}", (row.hit_rate, row.precision), textcoords="offset points", xytext=(4, 4),
                      fontsize=7, color="tab:blue")  # fmt: skip
        left.plot([row.hit_rate], [row.precision], ".", color="tab:blue")
    colors = iter(["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"])
    ours_labelled = False
    for result in results:
        system = result.system
        if isinstance(system, Ours):
            color, marker = "tab:green", "*"
            label = None if ours_labelled else "ours, default (0.94, guard on), each backend"
            ours_labelled = True
        else:
            color, marker = next(colors), "o"
            label = f"{system.label}: {_cosine(system)}"
        left.plot([result.hit_rate], [result.precision], marker, color=color, markersize=10, label=label)
        left.plot([result.hit_rate], [result.strict_precision], marker, color=color, markersize=10,
                  markerfacecolor="none")  # fmt: skip
        x = 1.0 if system.cosine is None else system.cosine
        right.plot([x], [result.precision], marker, color=color, markersize=10)
        right.plot([x], [result.hit_rate], "^" if marker == "o" else marker, color=color, markersize=8,
                   markerfacecolor="none")  # fmt: skip
        if not isinstance(system, Ours):
            right.axvline(x, color=color, linewidth=0.6, linestyle=":")
    left.set_xlabel("hit rate (hits / lookups)")
    left.set_ylabel("precision (filled: labeled; hollow: strict)")
    left.set_title(f"precision against hit rate: {report.pairs:,} Quora pairs, {report.stored:,} stored")
    left.grid(alpha=0.3)
    left.legend(loc="lower left", fontsize=7)
    right.set_xlabel("threshold as cosine similarity (>=); exact-only systems at 1.0")
    right.set_ylabel("fraction (peers: ● precision, △ hit rate)")
    right.set_title("the same against the threshold; each peer at its default")
    right.set_xlim(0.58, 1.01)
    right.grid(alpha=0.3)
    right.legend(loc="lower left", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="labeled pairs, JSON lines")
    parser.add_argument("--pairs", default="5000", help="use the first N pairs, or 'all' (default 5000)")
    parser.add_argument("--skip", default="", help=f"comma-separated systems to leave out: {', '.join(SYSTEMS)}")
    parser.add_argument("--only", default="", help="comma-separated systems to run (default: all)")
    parser.add_argument("--entries", type=int, default=None,
                        help="entries stored in all: the questions, then random-vector filler")  # fmt: skip
    parser.add_argument(
        "--client-on-redis7",
        action="store_true",
        help='index="client" on Debian\'s Redis 7 (default: the Redis 8.2 server the peers use)',
    )
    parser.add_argument("--interleaved", action="store_true",
                        help=f"store into and look up the systems in turn, {BLOCK} entries or queries at a time "
                             "(default: each system alone, one after another)")  # fmt: skip
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers for the throughput pass")
    parser.add_argument("--throughput-queries", type=int, default=2000,
                        help="lookups in the concurrent pass (the first N queries)")  # fmt: skip
    parser.add_argument(
        "--model-queries",
        type=int,
        default=300,
        help="queries timed with the real model (embedding time, our lookups with embedding)",
    )
    parser.add_argument(
        "--faiss-threads",
        type=int,
        default=1,
        help="FAISS OpenMP threads, like OPENBLAS_NUM_THREADS=1 for numpy (0: FAISS's default)",
    )
    arguments = parser.parse_args()
    if arguments.pairs != "all" and int(arguments.pairs) < 1:
        parser.error("--pairs must be a positive number or 'all'")
    arguments.faiss_threads = arguments.faiss_threads or None
    chosen = [key.strip() for key in arguments.only.split(",") if key.strip()] or list(SYSTEMS)
    skipped = {key.strip() for key in arguments.skip.split(",") if key.strip()}
    unknown = (set(chosen) | skipped) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    keys = [key for key in SYSTEMS if key in chosen and key not in skipped]
    logging.basicConfig(level=logging.WARNING)
    from tests.plugins.redis_servers import start_plain_server, start_search_server

    servers = []
    urls: dict[str, str] = {}
    try:
        if "ours-redis-client" in keys and arguments.client_on_redis7:
            servers.append(start_plain_server(Path(tempfile.mkdtemp(prefix="peers-redis7-"))))
            urls["plain"] = servers[-1].url
        client_here = "ours-redis-client" in keys and "plain" not in urls
        if {"ours-redis-search", "redisvl", "langchain-redis"} & set(keys) or client_here:
            servers.append(start_search_server(Path(tempfile.mkdtemp(prefix="peers-redis8-"))))
            urls["search"] = servers[-1].url
        asyncio.run(run(arguments, keys, urls))
    finally:
        for server in servers:
            server.stop()
            shutil.rmtree(server.directory, ignore_errors=True)


if __name__ == "__main__":
    main()
