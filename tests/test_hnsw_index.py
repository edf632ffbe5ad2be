"""HNSWIndex (hnswlib), AutoIndex (flat, then HNSW past a size) and the backends that use them (issue #7)."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from semantic_llm_cache.backends.memory import MemoryBackend
from semantic_llm_cache.backends.sqlite import SQLiteBackend
from semantic_llm_cache.config import CacheEntry
from semantic_llm_cache.errors import ConfigurationError, InvalidInputError
from semantic_llm_cache.index import AutoIndex, FlatIndex, HNSWIndex, partition_index_factory
from semantic_llm_cache.index import auto as auto_module
from semantic_llm_cache.storage import StorageBackend


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def random_vectors(count: int, dimension: int, seed: int = 0) -> np.ndarray:
    return unit_rows(np.random.default_rng(seed).standard_normal((count, dimension)))


def clustered_vectors(count: int, dimension: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Noisy copies of cluster centres: entries with close neighbours, like embeddings of real prompts."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.standard_normal((clusters, dimension)))
    members = centres[rng.integers(0, clusters, count)]
    return unit_rows(members + 0.6 * rng.standard_normal((count, dimension)) / np.sqrt(dimension))


def noisy_copies(vectors: np.ndarray, scale: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return unit_rows(vectors + scale * rng.standard_normal(vectors.shape) / np.sqrt(vectors.shape[1]))


def filled(index: Any, vectors: np.ndarray, prefix: str = "k") -> list[str]:
    keys = [f"{prefix}{row}" for row in range(len(vectors))]
    for key, vector in zip(keys, vectors, strict=True):
        index.add(key, vector)
    return keys


def finds_itself(index: Any, vector: np.ndarray, key: str) -> bool:
    """The index's best match for an entry's own vector is that entry, at similarity 1 (float32 rounding aside)."""
    (found, similarity), *_ = index.search(vector, 1)
    return found == key and similarity == pytest.approx(1.0, abs=1e-6)


def recall_at_1(index: Any, vectors: np.ndarray, keys: list[str], queries: np.ndarray) -> float:
    """Share of queries whose best match in `index` is the exact best match (ties within 1e-6 count)."""
    scores = queries @ vectors.T
    found = 0
    for query, row_scores in zip(queries, scores, strict=True):
        best = int(np.argmax(row_scores))
        result = index.search(query, 1)
        found += bool(result) and (result[0][0] == keys[best] or result[0][1] >= row_scores[best] - 1e-6)
    return found / len(queries)


# -- HNSWIndex -----------------------------------------------------------------------------------------------


def test_recall_against_flat_on_random_data() -> None:
    vectors = random_vectors(3000, 32, seed=1)
    index = HNSWIndex(32)
    keys = filled(index, vectors)
    queries = random_vectors(300, 32, seed=2)
    assert recall_at_1(index, vectors, keys, queries) >= 0.98


def test_recall_against_flat_on_clustered_data_with_paraphrase_queries() -> None:
    vectors = clustered_vectors(5000, 64, clusters=50, seed=3)
    index = HNSWIndex(64)
    index.add_many([f"k{row}" for row in range(len(vectors))], vectors)
    keys = [f"k{row}" for row in range(len(vectors))]
    fresh = clustered_vectors(300, 64, clusters=50, seed=4)
    paraphrases = noisy_copies(vectors[:300], 0.3, seed=5)
    assert recall_at_1(index, vectors, keys, fresh) >= 0.98
    assert recall_at_1(index, vectors, keys, paraphrases) >= 0.99


def test_results_are_best_first_with_true_similarities() -> None:
    vectors = random_vectors(200, 16, seed=6)
    index = HNSWIndex(16)
    keys = filled(index, vectors)
    query = vectors[7]
    results = index.search(query, 5)
    exact = FlatIndex(16)
    filled(exact, vectors)
    assert [key for key, _ in results] == [key for key, _ in exact.search(query, 5)]
    assert results[0][0] == keys[7] and 1.0 - 1e-6 <= results[0][1] <= 1.0  # clipped: never 1.0000001
    for key, similarity in results:
        assert similarity == pytest.approx(float(vectors[keys.index(key)] @ query), abs=1e-6)
    similarities = [similarity for _, similarity in results]
    assert similarities == sorted(similarities, reverse=True)


def test_threshold_is_inclusive() -> None:
    vectors = random_vectors(50, 16, seed=7)
    index = HNSWIndex(16)
    filled(index, vectors)
    query = unit_rows(vectors[3:4] + 0.05)[0]
    (key, similarity), *_ = index.search(query, 1)
    assert index.search(query, 1, threshold=similarity) == [(key, similarity)]
    assert index.search(query, 1, threshold=np.nextafter(similarity, 2.0)) == []


def test_remove_hides_the_entry_and_reports_whether_it_was_there() -> None:
    vectors = random_vectors(100, 16, seed=8)
    index = HNSWIndex(16)
    keys = filled(index, vectors)
    assert index.remove("k10") is True
    assert index.remove("k10") is False
    assert index.remove("never") is False
    assert "k10" not in index and "k11" in index and len(index) == 99
    assert all(key != "k10" for key, _ in index.search(vectors[10], 10))
    for key in keys:
        index.remove(key)
    assert len(index) == 0 and index.search(vectors[0], 3) == []


def test_deleted_slots_are_reused_and_every_live_entry_stays_findable() -> None:
    vectors = random_vectors(1000, 32, seed=9)
    index = HNSWIndex(32, initial_capacity=1000)
    keys = filled(index, vectors)
    for key in keys[::2]:
        index.remove(key)
    replacements = random_vectors(500, 32, seed=10)
    new_keys = filled(index, replacements, prefix="new")
    assert index.capacity == 1000  # the 500 inserts took over the 500 deleted slots
    assert len(index) == 1000
    live = dict(zip(keys[1::2], vectors[1::2], strict=True)) | dict(zip(new_keys, replacements, strict=True))
    for key, vector in live.items():
        assert finds_itself(index, vector, key)
    for key in keys[::2]:
        assert key not in index


def test_replace_moves_the_entry_to_its_new_vector() -> None:
    vectors = random_vectors(100, 16, seed=11)
    index = HNSWIndex(16)
    filled(index, vectors)
    index.add("k5", vectors[50])
    assert len(index) == 100
    assert all(key != "k5" for key, _ in index.search(vectors[5], 3, threshold=0.9))
    assert {key for key, _ in index.search(vectors[50], 2)} == {"k5", "k50"}


def test_add_many_keeps_the_last_vector_of_a_repeated_key() -> None:
    vectors = random_vectors(3, 8, seed=12)
    index = HNSWIndex(8)
    index.add_many(["a", "b", "a"], vectors)
    assert len(index) == 2
    assert finds_itself(index, vectors[2], "a")
    assert index.search(vectors[0], 1, threshold=0.999) == []


def test_grows_past_its_initial_capacity() -> None:
    vectors = random_vectors(300, 16, seed=13)
    index = HNSWIndex(16, initial_capacity=4)
    keys = filled(index, vectors)
    assert index.capacity >= 300 and len(index) == 300
    assert all(index.search(vector, 1)[0][0] == key for key, vector in zip(keys, vectors, strict=True))


def test_k_larger_than_the_live_entries_returns_them_all() -> None:
    vectors = random_vectors(20, 8, seed=14)
    index = HNSWIndex(8)
    keys = filled(index, vectors)
    for key in keys[5:]:
        index.remove(key)
    assert {key for key, _ in index.search(vectors[0], 50)} == set(keys[:5])
    assert index.search(vectors[0], 0) == []


class _FailingGraph:
    """Delegates to hnswlib but reports every search as cut short (what hnswlib raises when too few are reached)."""

    def __init__(self, graph: Any) -> None:
        self._graph = graph

    def knn_query(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Cannot return the results in a contiguous 2D array. Probably ef or M is too small")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._graph, name)


def test_a_search_hnswlib_cuts_short_falls_back_to_an_exact_scan() -> None:
    vectors = random_vectors(200, 16, seed=15)
    index = HNSWIndex(16)
    keys = filled(index, vectors)
    index.remove("k0")
    exact = FlatIndex(16)
    filled(exact, vectors)
    exact.remove("k0")
    index._graph = _FailingGraph(index._graph)
    for row in (0, 1, 99):
        got = index.search(vectors[row], 3)
        assert [key for key, _ in got] == [key for key, _ in exact.search(vectors[row], 3)]
    assert keys[1] == index.search(vectors[1], 1)[0][0]


def test_rejects_vectors_of_the_wrong_shape() -> None:
    index = HNSWIndex(8)
    with pytest.raises(InvalidInputError):
        index.add("a", np.ones(9, dtype=np.float32))
    with pytest.raises(InvalidInputError):
        index.add_many(["a", "b"], np.ones((3, 8), dtype=np.float32))
    index.add("a", random_vectors(1, 8)[0])
    with pytest.raises(InvalidInputError):
        index.search(np.ones(9, dtype=np.float32), 1)
    with pytest.raises(ConfigurationError):
        HNSWIndex(8, ef_search=0)


def test_nbytes_counts_vectors_and_graph() -> None:
    index = HNSWIndex(64, initial_capacity=1000)
    empty = index.nbytes
    filled(index, random_vectors(1000, 64, seed=16))
    assert index.nbytes > empty
    assert index.nbytes > 1000 * 64 * 4 + 1000 * 2 * 16 * 4  # vectors plus the bottom layer's links


# -- AutoIndex -----------------------------------------------------------------------------------------------


@pytest.fixture
def blocked_builder() -> Iterator[threading.Event]:
    """Hold the build thread on a job of ours, so a test can write while a move is in progress."""
    release = threading.Event()
    auto_module._worker.submit(lambda: release.wait(timeout=60) and None)
    yield release
    release.set()


def test_stays_flat_up_to_the_threshold_and_moves_past_it() -> None:
    vectors = random_vectors(51, 16, seed=20)
    index = AutoIndex(16, hnsw_min_entries=50, background=False)
    keys = filled(index, vectors[:50])
    assert index.kind == "flat"
    index.add("k50", vectors[50])
    assert index.kind == "hnsw" and len(index) == 51
    assert isinstance(index._hnsw, HNSWIndex)
    for key, vector in zip([*keys, "k50"], vectors, strict=True):
        assert finds_itself(index, vector, key)


def low_rank_vectors(count: int, dimension: int, rank: int, seed: int = 0) -> np.ndarray:
    """Vectors near a `rank`-dimensional subspace, as sentence embeddings are: a flat index's sketch narrows them."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dimension, rank)))[0].T
    return unit_rows(rng.standard_normal((count, rank)) @ basis + 0.02 * rng.standard_normal((count, dimension)))


def test_a_flat_index_its_sketch_narrows_stays_flat_past_the_threshold_up_to_a_multiple() -> None:
    minimum = 1100  # past the sketch's own minimum size
    vectors = low_rank_vectors(auto_module.SKETCHED_FLAT_FACTOR * minimum + 1, 384, rank=8, seed=24)
    index = AutoIndex(384, hnsw_min_entries=minimum, background=False)
    for row, vector in enumerate(vectors[:-1]):
        index.add(f"k{row}", vector)
        if row % 50 == 0:  # a serving cache: lookups between the writes
            assert index.search(vector, 4, threshold=0.9)[0][0] == f"k{row}"
    assert index.kind == "flat" and index._flat is not None and index._flat.sketch_narrows
    index.add("last", vectors[-1])
    assert index.kind == "hnsw"
    assert index.search(vectors[-1], 1, threshold=0.9)[0][0] == "last"


def test_a_flat_index_its_sketch_cannot_narrow_moves_at_the_threshold() -> None:
    vectors = random_vectors(3000, 384, seed=25)  # no low-rank structure: many rows stay candidates
    index = AutoIndex(384, hnsw_min_entries=1100, background=False)
    filled(index, vectors[:1100])
    assert index.kind == "flat"
    index.add("k1100", vectors[1100])  # past the threshold: the probe of its own rows says the sketch cannot narrow
    assert index.kind == "hnsw"
    assert finds_itself(index, vectors[7], "k7")


def test_narrowness_is_probed_before_any_search_and_then_follows_the_searches() -> None:
    structured, unstructured = FlatIndex(384), FlatIndex(384)
    filled(structured, low_rank_vectors(3000, 384, rank=8, seed=27))
    filled(unstructured, random_vectors(3000, 384, seed=28))
    assert structured.sketch_narrows and unstructured.sketch_narrows  # neither probed nor searched yet
    structured.probe_narrowness()
    unstructured.probe_narrowness()
    assert structured.sketch_narrows and not unstructured.sketch_narrows
    searched = FlatIndex(384)
    vectors = low_rank_vectors(3000, 384, rank=8, seed=27)
    filled(searched, vectors)
    searched.search(vectors[5], 4, threshold=0.3)  # one full scan (a low threshold) does not flip it
    assert searched.sketch_narrows
    for vector in vectors[:4]:  # a few in a row do
        searched.search(vector, 4, threshold=0.3)
    assert not searched.sketch_narrows
    searched.probe_narrowness()  # the searches have spoken: a probe (which would say narrow) changes nothing
    assert not searched.sketch_narrows
    for vector in vectors[:40]:  # and narrow searches bring it back
        searched.search(vector, 4, threshold=0.94)
    assert searched.sketch_narrows
    empty = FlatIndex(384)
    filled(empty, vectors[:1100])
    for row in range(1100):
        empty.remove(f"k{row}")
    empty.probe_narrowness()  # no rows left to probe with: nothing to judge
    assert empty.search(vectors[0], 1) == []


def test_searches_the_sketch_cannot_narrow_move_a_flat_partition_past_the_threshold() -> None:
    vectors = low_rank_vectors(1500, 384, rank=8, seed=29)
    index = AutoIndex(384, hnsw_min_entries=1100, background=False)
    filled(index, vectors)
    assert index.kind == "flat"  # narrow: stays flat past the threshold
    for vector in vectors[:8]:  # low-threshold searches read every row
        index.search(vector, 4, threshold=0.3)
        if index.kind == "hnsw":
            break
    assert index.kind == "hnsw"
    assert finds_itself(index, vectors[9], "k9")


def test_move_in_the_background_keeps_every_write_made_during_it(blocked_builder: threading.Event) -> None:
    vectors = clustered_vectors(3000, 32, clusters=30, seed=21)
    index = AutoIndex(32, hnsw_min_entries=500)
    expected = FlatIndex(32)
    for row in range(501):
        index.add(f"k{row}", vectors[row])
        expected.add(f"k{row}", vectors[row])
    assert index.kind == "migrating"
    # Writes while the graph is being built: new keys, overwrites, deletes, a delete then re-add.
    for row in range(501, 3000):
        index.add(f"k{row}", vectors[row])
        expected.add(f"k{row}", vectors[row])
    for row in range(0, 3000, 7):
        assert index.remove(f"k{row}") == expected.remove(f"k{row}")
    for row in range(1, 600, 5):
        index.add(f"k{row}", vectors[2999 - row])
        expected.add(f"k{row}", vectors[2999 - row])
    index.add("k0", vectors[0])
    expected.add("k0", vectors[0])
    query = vectors[123]
    assert index.search(query, 4) == expected.search(query, 4)  # the flat index serves, exactly, meanwhile
    assert index.kind == "migrating"
    blocked_builder.set()
    assert index.wait(timeout=60) is True
    assert index.kind == "hnsw" and len(index) == len(expected)
    assert set(index.keys()) == set(expected.keys())
    for key in expected.keys():  # noqa: SIM118 - FlatIndex has no __iter__; an overwrite may have given two keys the same vector: look at the top 3
        vector = expected._matrix[expected._rows[key]]
        assert key in {found for found, _ in index.search(vector, 3, threshold=0.9999)}
    for row in range(0, 3000, 7):  # deleted, some re-added since
        assert (f"k{row}" in index) == (f"k{row}" in expected)
    assert sum(f"k{row}" not in index for row in range(0, 3000, 7)) > 300


def test_search_agrees_with_flat_after_the_move() -> None:
    vectors = clustered_vectors(2000, 32, clusters=40, seed=22)
    index = AutoIndex(32, hnsw_min_entries=100)
    keys = filled(index, vectors)
    assert index.wait(timeout=60) is True
    queries = noisy_copies(vectors[:200], 0.3, seed=23)
    assert recall_at_1(index, vectors, keys, queries) >= 0.99


def test_a_failed_build_leaves_the_index_exact_and_is_retried_when_it_doubles(
    monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    def broken(self: HNSWIndex, keys: Any, vectors: Any) -> None:
        raise MemoryError("no room for the graph")

    monkeypatch.setattr(HNSWIndex, "add_many", broken)
    vectors = random_vectors(23, 8, seed=24)

    def failures() -> int:
        return str(caplog.text).count("building an HNSW index failed")

    with caplog.at_level(logging.WARNING, logger="semantic_llm_cache.index.auto"):
        in_background = AutoIndex(8, hnsw_min_entries=10)
        filled(in_background, vectors[:11])
        assert in_background.wait(timeout=60) is False
        assert in_background.kind == "flat" and failures() == 1
        index = AutoIndex(8, hnsw_min_entries=10, background=False)
        keys = filled(index, vectors[:11])  # the 11th add tries, fails, and does not raise
        assert index.kind == "flat" and failures() == 2
        assert all(finds_itself(index, vector, key) for key, vector in zip(keys, vectors, strict=False))
        filled(index, vectors[11:22], prefix="more")  # not retried until the partition doubles (22)
        assert failures() == 2
        index.add("one more", vectors[22])
        assert index.kind == "flat" and failures() == 3 and len(index) == 23


def test_without_hnswlib_the_index_stays_flat(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    monkeypatch.setattr(auto_module, "hnswlib_available", lambda: False)
    monkeypatch.setattr(auto_module, "_warned_no_hnswlib", False)
    vectors = random_vectors(30, 8, seed=25)
    index = AutoIndex(8, hnsw_min_entries=10)
    with caplog.at_level(logging.WARNING, logger="semantic_llm_cache.index.auto"):
        keys = filled(index, vectors)
    assert index.kind == "flat" and "hnswlib is not installed" in caplog.text
    assert all(index.search(vector, 1)[0][0] == key for key, vector in zip(keys, vectors, strict=True))


def test_a_dropped_index_abandons_its_build(blocked_builder: threading.Event) -> None:
    index = AutoIndex(8, hnsw_min_entries=10)
    filled(index, random_vectors(11, 8, seed=26))
    assert index._migration is not None
    step: Future[None] = index._migration.step
    del index
    gc.collect()
    blocked_builder.set()
    assert isinstance(step.exception(timeout=60), auto_module._Abandoned)


def test_clear_goes_back_to_flat() -> None:
    index = AutoIndex(8, hnsw_min_entries=5, background=False)
    filled(index, random_vectors(10, 8, seed=27))
    assert index.kind == "hnsw"
    index.clear()
    assert index.kind == "flat" and len(index) == 0


def test_partition_index_factory() -> None:
    assert partition_index_factory(None)(8).__class__ is FlatIndex
    built = partition_index_factory(7)(8)
    assert isinstance(built, AutoIndex) and built.hnsw_min_entries == 7 and built.dimension == 8
    for bad in (-1, 1.5, True, "100"):
        with pytest.raises(ConfigurationError):
            partition_index_factory(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        MemoryBackend(hnsw_min_entries=-5)


def test_the_old_name_hnsw_threshold_still_works_with_a_deprecation_warning(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match="hnsw_min_entries"):
        assert isinstance(AutoIndex(8, hnsw_threshold=7), AutoIndex)
    with pytest.warns(DeprecationWarning, match="hnsw_min_entries"):
        built = partition_index_factory(hnsw_threshold=7)(8)
    assert isinstance(built, AutoIndex) and built.hnsw_min_entries == 7
    with pytest.warns(DeprecationWarning, match="hnsw_min_entries"):
        assert built.hnsw_threshold == 7
    with pytest.warns(DeprecationWarning, match="hnsw_min_entries"):
        MemoryBackend(hnsw_threshold=None)
    with pytest.warns(DeprecationWarning, match="hnsw_min_entries"):
        SQLiteBackend(tmp_path / "old.db", hnsw_threshold=None)
    with pytest.warns(DeprecationWarning, match="DEFAULT_HNSW_MIN_ENTRIES"):
        from semantic_llm_cache.index import DEFAULT_HNSW_THRESHOLD
    assert DEFAULT_HNSW_THRESHOLD == 20_000
    with pytest.raises(TypeError, match="hnsw_treshold"):
        MemoryBackend(hnsw_treshold=5)


# -- the backends ------------------------------------------------------------------------------------------

DIMENSION = 32
PARTITION = "p" * 32


def entry(row: int, vector: np.ndarray) -> CacheEntry:
    return CacheEntry(prompt=f"prompt {row}", response={"row": row}, partition_id=PARTITION, embedding=vector)


def make_backend(kind: str, tmp_path: Path, hnsw_min_entries: int | None) -> StorageBackend:
    if kind == "memory":
        return MemoryBackend(hnsw_min_entries=hnsw_min_entries)
    return SQLiteBackend(tmp_path / f"cache-{hnsw_min_entries}.db", hnsw_min_entries=hnsw_min_entries)


async def live_keys(backend: StorageBackend, query: np.ndarray) -> list[tuple[str, float]]:
    """Every live entry with its similarity to `query` (from the flat backend)."""
    return [(key, score) for key, _, score in await backend.find_nearest(query, 0.0, 1000, partition=PARTITION)]


async def partition_index(backend: StorageBackend) -> Any:
    """The partition's index, moved to HNSW if it is moving (waited for in the thread that owns it)."""
    if isinstance(backend, MemoryBackend):
        index = backend._indexes.get(PARTITION)
        assert index is not None
        with backend._lock:
            if isinstance(index.index, AutoIndex):
                index.index.wait(timeout=60)
        return index.index
    assert isinstance(backend, SQLiteBackend)

    def wait() -> Any:
        index = backend._indexes.get(PARTITION)
        assert index is not None
        if isinstance(index.index, AutoIndex):
            index.index.wait(timeout=60)
        return index.index

    await backend.find_similar(np.ones(DIMENSION), 0.99, partition=PARTITION)  # loads the partition
    return await backend._run(wait)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_backend_with_a_small_hnsw_min_entries_finds_what_the_flat_backend_finds(
    kind: str, tmp_path: Path
) -> None:
    vectors = clustered_vectors(500, DIMENSION, clusters=25, seed=30)
    hnsw_backend = make_backend(kind, tmp_path, hnsw_min_entries=50)
    flat_backend = make_backend(kind, tmp_path, hnsw_min_entries=None)
    try:
        for backend in (hnsw_backend, flat_backend):
            for row, vector in enumerate(vectors):
                await backend.set(f"k{row}", entry(row, vector))
                if row == 100:  # SQLite loads the partition's index on the first search
                    await backend.find_similar(vector, 0.9, partition=PARTITION)
            for row in range(0, 500, 10):  # deletes and overwrites after the move began
                await backend.delete(f"k{row}")
            for row in range(1, 500, 25):
                await backend.set(f"k{row}", entry(row, vectors[499 - row]))
        index = await partition_index(hnsw_backend)
        assert isinstance(index, AutoIndex) and index.kind == "hnsw" and len(index) == 450
        assert isinstance(await partition_index(flat_backend), FlatIndex)
        queries = noisy_copies(vectors[::5], 0.3, seed=31)
        agree = 0
        for query in queries:
            got = await hnsw_backend.find_nearest(query, 0.5, 3, partition=PARTITION)
            want = await flat_backend.find_nearest(query, 0.5, 3, partition=PARTITION)
            # The same similarities rank by rank (an overwrite can give two keys one vector: a tie, either key).
            agree += len(got) == len(want) and all(
                abs(got_score - want_score) <= 1e-5
                for (_, _, got_score), (_, _, want_score) in zip(got, want, strict=False)
            )
            assert {key for key, _, _ in got} <= {key for key, _ in await live_keys(flat_backend, query)}
        assert agree >= 0.98 * len(queries)
        for row in range(0, 500, 10):
            assert await hnsw_backend.find_similar(vectors[row], 0.9999, partition=PARTITION) is None
        stats = await hnsw_backend.get_stats()
        assert stats["size"] == 450
    finally:
        await hnsw_backend.close()
        await flat_backend.close()
