"""FlatIndex: exact inner-product search that agrees with numpy brute force, through any sequence of edits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semantic_llm_cache import InvalidInputError
from semantic_llm_cache.index import flat as flat_module
from semantic_llm_cache.index.flat import FlatIndex, RowBlocks

TOLERANCE = 1e-5


def unit_rows(rng: np.random.Generator, count: int, dimension: int) -> np.ndarray:
    rows = rng.standard_normal((count, dimension)).astype(np.float32)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@st.composite
def matrices_and_query(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    dimension = draw(st.integers(1, 24))
    count = draw(st.integers(1, 150))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = unit_rows(rng, count, dimension)
    if draw(st.booleans()):  # duplicated rows make ties, which brute force must agree on by score
        rows[rng.integers(0, count, size=count // 3)] = rows[0]
    return rows, unit_rows(rng, 1, dimension)[0]


@settings(max_examples=150, deadline=None)
@given(matrices_and_query())
def test_best_match_agrees_with_brute_force(case: tuple[np.ndarray, np.ndarray]) -> None:
    rows, query = case
    index = FlatIndex(rows.shape[1], initial_capacity=4)
    for position, row in enumerate(rows):
        index.add(f"k{position}", row)
    scores = rows.astype(np.float64) @ query.astype(np.float64)
    [(key, score)] = index.search(query, k=1)
    assert score == pytest.approx(scores.max(), abs=TOLERANCE)
    assert scores[int(key[1:])] == pytest.approx(scores.max(), abs=TOLERANCE)
    ordered = np.sort(scores)[::-1]
    if len(ordered) == 1 or ordered[0] - ordered[1] > TOLERANCE:
        assert key == f"k{int(np.argmax(scores))}"


@settings(max_examples=150, deadline=None)
@given(matrices_and_query(), st.integers(1, 200))
def test_top_k_agrees_with_brute_force(case: tuple[np.ndarray, np.ndarray], k: int) -> None:
    rows, query = case
    index = FlatIndex(rows.shape[1], initial_capacity=1)
    for position, row in enumerate(rows):
        index.add(f"k{position}", row)
    scores = rows.astype(np.float64) @ query.astype(np.float64)
    found = index.search(query, k=k)
    expected = np.sort(scores)[::-1][:k]
    assert len(found) == min(k, len(rows))
    assert len({key for key, _ in found}) == len(found)
    np.testing.assert_allclose([score for _, score in found], expected, atol=TOLERANCE)
    for key, score in found:  # each reported score is that key's true score
        assert score == pytest.approx(scores[int(key[1:])], abs=TOLERANCE)


@settings(max_examples=100, deadline=None)
@given(matrices_and_query(), st.floats(-1.0, 1.0))
def test_threshold_filters_inclusively(case: tuple[np.ndarray, np.ndarray], threshold: float) -> None:
    rows, query = case
    index = FlatIndex(rows.shape[1])
    for position, row in enumerate(rows):
        index.add(f"k{position}", row)
    found = index.search(query, k=len(rows), threshold=threshold)
    scores = rows.astype(np.float64) @ query.astype(np.float64)
    found_keys = {key for key, _ in found}
    surely_in = {f"k{position}" for position in np.flatnonzero(scores >= threshold + TOLERANCE)}
    maybe_in = {f"k{position}" for position in np.flatnonzero(scores >= threshold - TOLERANCE)}
    assert surely_in <= found_keys <= maybe_in
    assert all(score >= threshold - TOLERANCE for _, score in found)


OPERATION = st.tuples(
    st.sampled_from(["add", "add", "remove", "clear_rarely"]), st.integers(0, 30), st.integers(0, 10**6)
)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 12), st.lists(OPERATION, max_size=120), st.integers(0, 2**32 - 1))
def test_index_matches_a_dict_model_after_random_edits(
    dimension: int, operations: list[tuple[str, int, int]], seed: int
) -> None:
    index = FlatIndex(dimension, initial_capacity=2)
    model: dict[str, np.ndarray] = {}
    for operation, key_number, vector_seed in operations:
        key = f"key-{key_number}"
        if operation == "add":  # insert, or replace an existing key's vector
            vector = unit_rows(np.random.default_rng(vector_seed), 1, dimension)[0]
            index.add(key, vector)
            model[key] = vector
        elif operation == "remove":
            assert index.remove(key) is (key in model)
            model.pop(key, None)
        elif key_number == 0:
            index.clear()
            model.clear()
        assert len(index) == len(model)
    assert sorted(index.keys()) == sorted(model)
    assert all(key in index for key in model)
    assert f"key-{31}" not in index
    if not model:
        assert index.search(unit_rows(np.random.default_rng(seed), 1, dimension)[0], k=3) == []
        return
    keys = list(model)
    matrix = np.stack([model[key] for key in keys]).astype(np.float64)
    query = unit_rows(np.random.default_rng(seed), 1, dimension)[0]
    found = index.search(query, k=len(model))
    expected = {key: float(score) for key, score in zip(keys, matrix @ query.astype(np.float64), strict=True)}
    assert {key for key, _ in found} == set(model)
    for key, score in found:
        assert score == pytest.approx(expected[key], abs=TOLERANCE)
    assert [score for _, score in found] == sorted((score for _, score in found), reverse=True)
    for key in keys:  # every stored vector is still found as its own best match
        [(best_key, best_score)] = index.search(model[key], k=1)
        assert best_score == pytest.approx(1.0, abs=TOLERANCE)
        assert np.allclose(model[best_key], model[key], atol=1e-4)


def test_growth_past_initial_capacity_keeps_every_vector() -> None:
    rng = np.random.default_rng(0)
    rows = unit_rows(rng, 100, 16)
    index = FlatIndex(16, initial_capacity=2)
    start_bytes = index.nbytes
    for position, row in enumerate(rows):
        index.add(f"k{position}", row)
    assert len(index) == 100
    assert index.nbytes >= 100 * 16 * 4 > start_bytes
    assert index.nbytes <= 2 * 128 * 16 * 4  # doubling, not one allocation per add
    for position in (0, 1, 2, 63, 64, 99):
        [(key, score)] = index.search(rows[position], k=1)
        assert key == f"k{position}" and score == pytest.approx(1.0, abs=TOLERANCE)


def test_remove_moves_the_last_row_and_keeps_others_searchable() -> None:
    rows = np.eye(5, dtype=np.float32)
    index = FlatIndex(5)
    for position, row in enumerate(rows):
        index.add(f"k{position}", row)
    assert index.remove("k1") is True
    assert index.remove("k1") is False
    assert index.keys() == ["k0", "k4", "k2", "k3"]  # the last row filled the hole
    assert "k1" not in index
    assert index.search(rows[1], k=1, threshold=0.5) == []
    for position in (0, 2, 3, 4):
        assert index.search(rows[position], k=1) == [(f"k{position}", pytest.approx(1.0))]
    assert index.remove("k3") is True  # removing the last row
    assert index.keys() == ["k0", "k4", "k2"]
    assert index.search(rows[4], k=1) == [("k4", pytest.approx(1.0))]


def test_replace_updates_the_vector_in_place() -> None:
    index = FlatIndex(2)
    index.add("a", np.array([1.0, 0.0], dtype=np.float32))
    index.add("a", np.array([0.0, 1.0], dtype=np.float32))
    assert len(index) == 1
    assert index.search(np.array([0.0, 1.0], dtype=np.float32), k=1) == [("a", pytest.approx(1.0))]


def test_edge_cases_and_bad_input() -> None:
    with pytest.raises(InvalidInputError, match="dimension"):
        FlatIndex(0)
    index = FlatIndex(3)
    query = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    assert index.search(query) == []
    index.add("a", query)
    assert index.search(query, k=0) == []
    with pytest.raises(InvalidInputError, match="shape"):
        index.add("b", np.array([1.0, 0.0], dtype=np.float32))
    with pytest.raises(InvalidInputError, match="shape"):
        index.search(np.array([1.0, 0.0], dtype=np.float32))
    index.clear()
    assert len(index) == 0 and index.search(query) == []
    index.add("c", query)
    assert index.search(query) == [("c", pytest.approx(1.0))]


def clustered_rows(rng: np.random.Generator, count: int, dimension: int = 384, clusters: int = 40) -> np.ndarray:
    """Unit vectors around a few centres, as embeddings of related texts are (random 384-d rows have no
    principal directions for a sketch to use)."""
    centres = unit_rows(rng, clusters, dimension)
    picks = rng.integers(0, clusters, count)
    rows = centres[picks] + 0.08 * rng.standard_normal((count, dimension)).astype(np.float32)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def brute_force(rows: dict[str, np.ndarray], query: np.ndarray, k: int, threshold: float) -> list[tuple[str, float]]:
    scored = sorted(((key, float(vector @ query)) for key, vector in rows.items()), key=lambda item: -item[1])
    return [item for item in scored if item[1] >= threshold][:k]


def test_a_sketched_index_returns_what_a_full_scan_returns_through_edits_and_refits() -> None:
    rng = np.random.default_rng(5)
    vectors = clustered_rows(rng, 11000)
    index, model = FlatIndex(384), {}
    checked = 0
    for number, vector in enumerate(vectors):
        key = f"k{number}"
        index.add(key, vector)
        model[key] = vector
        if number % 7 == 3:  # removals move the last row (and its sketch) into the hole
            doomed = f"k{rng.integers(0, number + 1)}"
            assert index.remove(doomed) == (model.pop(doomed, None) is not None)
        if number % 11 == 5:  # a rewrite moves a vector elsewhere
            moved = f"k{rng.integers(0, number + 1)}"
            if moved in model:
                index.add(moved, vectors[rng.integers(0, len(vectors))])
                model[moved] = index._matrix[index._rows[moved]].copy()
        if number in (1500, 4000, 10999):  # sketched since 1,024 entries, fitted again at 8,192
            assert index._sketch is not None
            keys = list(model)
            for _ in range(60):
                base = model[keys[rng.integers(0, len(keys))]]
                query = base + rng.choice([0.01, 0.05, 0.3]) * rng.standard_normal(384).astype(np.float32)
                query = (query / np.linalg.norm(query)).astype(np.float32)
                threshold = float(rng.choice([0.5, 0.8, 0.9, 0.94, 0.99]))
                k = int(rng.choice([1, 3, 8]))
                found = index.search(query, k, threshold)
                expected = brute_force(model, query, k, threshold)
                assert [score for _, score in found] == pytest.approx([s for _, s in expected], abs=TOLERANCE)
                assert {key for key, _ in found} <= set(model)
                checked += 1
    assert checked == 180
    assert index._sketched_at >= 8192


def test_the_sketch_bounds_every_row_from_above_and_prunes_most() -> None:
    rng = np.random.default_rng(6)
    rows = clustered_rows(rng, 4000)
    index = FlatIndex(384)
    for number, vector in enumerate(rows):
        index.add(f"k{number}", vector)
    sketch = index._sketch
    assert sketch is not None
    for _ in range(50):
        query = rows[rng.integers(0, len(rows))] + 0.02 * rng.standard_normal(384).astype(np.float32)
        query = (query / np.linalg.norm(query)).astype(np.float32)
        exact = rows @ query
        projected = sketch.basis @ query
        rest = np.sqrt(max(0.0, 1 - float(projected @ projected)))
        bound = sketch.rows[: len(rows)] @ projected + rest * sketch.rest[: len(rows)]
        np.testing.assert_allclose(sketch.bounds(query, len(rows)), bound, atol=1e-5)
        assert np.all(bound >= exact - 1e-5)  # never below: no row that could match is skipped
        assert len(sketch.candidates(query, len(rows), 0.94)) < len(rows) // 8  # and most rows are never read


def test_small_or_low_dimensional_indexes_are_not_sketched() -> None:
    rng = np.random.default_rng(7)
    small, narrow = FlatIndex(384), FlatIndex(24)
    for number, vector in enumerate(clustered_rows(rng, 1000)):
        small.add(f"k{number}", vector)
    for number, vector in enumerate(unit_rows(rng, 2000, 24)):
        narrow.add(f"k{number}", vector)
    assert small._sketch is None and narrow._sketch is None
    small.clear()
    assert small._sketch is None and len(small) == 0


def test_a_sketch_that_cannot_narrow_rests_and_the_answers_stay_exact() -> None:
    rng = np.random.default_rng(8)
    rows = unit_rows(rng, 2000, 384)  # random rows: no principal directions, every bound reaches 0.5
    index = FlatIndex(384)
    for number, vector in enumerate(rows):
        index.add(f"k{number}", vector)
    assert index._sketch is not None
    for trial in range(10):
        query = unit_rows(rng, 1, 384)[0]
        query = (rows[trial] + 0.5 * query).astype(np.float32)  # near a stored row: a match to find
        query /= np.linalg.norm(query)
        found = index.search(query, 3, 0.5)
        expected = brute_force({f"k{n}": v for n, v in enumerate(rows)}, query, 3, 0.5)
        assert [key for key, _ in found] == [key for key, _ in expected] == [f"k{trial}"]
        assert [score for _, score in found] == pytest.approx([score for _, score in expected], abs=TOLERANCE)
        assert index._paused == (0 if trial < 7 else 64 - (trial - 7))  # resting after 8 futile reads


def test_rows_in_blocks_of_a_few_give_the_same_answers_and_growth_copies_no_full_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(flat_module, "BLOCK_BYTES", 61 * 384 * 4)  # blocks of 61 rows (2,048 in use)
    rng = np.random.default_rng(8)
    vectors = clustered_rows(rng, 2600)
    index, model = FlatIndex(384, initial_capacity=3), {}
    first_full_block = None
    for number, vector in enumerate(vectors):
        key = f"k{rng.integers(0, 2200)}"  # some adds rewrite a key
        index.add(key, vector)
        model[key] = vector
        if number % 5 == 2:  # removals move the last row, often from another block, into the hole
            doomed = f"k{rng.integers(0, 2200)}"
            assert index.remove(doomed) == (model.pop(doomed, None) is not None)
        if first_full_block is None and len(index._matrix.blocks[0]) == 61:
            first_full_block = index._matrix.blocks[0]
        if number in (40, 700, 1800, 2599):  # one block, several, then sketched (past 1,024 rows)
            for query_row in rng.integers(0, len(vectors), 25):
                query = vectors[query_row] + 0.05 * rng.standard_normal(384).astype(np.float32)
                query = (query / np.linalg.norm(query)).astype(np.float32)
                threshold = float(rng.choice([-1.0, 0.8, 0.94]))
                k = int(rng.choice([1, 4]))
                found = index.search(query, k, threshold)
                expected = brute_force(model, query, k, threshold)
                assert [score for _, score in found] == pytest.approx([s for _, s in expected], abs=TOLERANCE)
    assert index._sketch is not None and len(index._sketch.rows) >= len(index) and len(index._matrix.blocks) > 20
    assert index._matrix.blocks[0] is first_full_block  # a full block is never copied again
    assert sorted(index.keys()) == sorted(model)
    for key, vector in model.items():
        assert np.array_equal(index._matrix[index._rows[key]], vector)


def test_row_blocks_put_take_and_head_across_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flat_module, "BLOCK_BYTES", 4 * 2 * 4)  # 4 rows of 2
    blocks = RowBlocks((2,), 1)
    values = np.arange(26, dtype=np.float32).reshape(13, 2)
    blocks.reserve(13)
    assert blocks.capacity >= 13 and [len(block) for block in blocks.blocks][:3] == [4, 4, 4]
    blocks.put(0, values[:3])
    blocks.put(3, values[3:])
    np.testing.assert_array_equal(blocks.head(13), values)
    rows = np.array([0, 3, 4, 9, 12])
    np.testing.assert_array_equal(blocks.take(rows), values[rows])
    many = np.random.default_rng(9).integers(0, 13, 80)  # past the one-by-one path, unsorted, repeated
    np.testing.assert_array_equal(blocks.take(many), values[many])
    np.testing.assert_array_equal(blocks.take(np.sort(many)), values[np.sort(many)])
    assert not np.shares_memory(blocks.head(3, copy=True), blocks.blocks[0])
    assert [start for start, _ in blocks.parts(10, 2)] == [2, 4, 8]
    np.testing.assert_array_equal(blocks[11], values[11])


def normalized(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def test_the_sketch_bound_holds_for_vectors_with_a_tiny_rest() -> None:
    """Rows almost inside a 32-dimensional subspace (a rest ~3e-4 long, which sqrt(|x|^2 - |px|^2) in float32
    loses), queried from far outside it along each row's own rest: the bound must still reach the true score."""
    rng = np.random.default_rng(30)
    space = np.linalg.qr(rng.standard_normal((384, 384)))[0]
    inside = normalized(rng.standard_normal((2000, 32)) @ space[:, :32].T)
    outside = normalized(rng.standard_normal((2000, 352)) @ space[:, 32:].T)
    rows = normalized(inside + 3e-4 * outside)
    index = FlatIndex(384)
    for number, vector in enumerate(rows):
        index.add(f"k{number}", vector)
    for row in range(0, 2000, 7):
        query = normalized((0.6 * inside[row] + 0.8 * outside[row])[np.newaxis])[0]
        threshold = float(rows[row] @ query) - 1e-6
        assert f"k{row}" in {key for key, _ in index.search(query, 5, threshold)}, row
