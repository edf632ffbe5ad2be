"""Embedders: callables and framework objects as embedders, and the bundled local model with micro-batching."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from semantic_llm_cache import (
    CallableEmbedder,
    ConfigurationError,
    Embedder,
    EmbeddingError,
    LocalEmbedder,
    SemanticCache,
    as_embedder,
)
from semantic_llm_cache.cache import default_embedder
from semantic_llm_cache.embeddings import DEFAULT_MODEL_NAME, LangChainEmbedder, LlamaIndexEmbedder, normalized_matrix
from tests.embedding_checks import check_concurrent_calls_share_forward_passes
from tests.fakes import BagOfWordsEmbedder

RESET = "How do I reset my password?"
PARAPHRASE = "How can I reset my password?"
DIFFERENT = "How do I delete my account?"
BUNDLED_THRESHOLD = 0.94


def raw_vectors(texts: list[str]) -> list[list[float]]:
    return [[float(len(text)), 1.0, 2.0] for text in texts]


# -- CallableEmbedder --------------------------------------------------------------------------------------


async def test_sync_callable_runs_in_a_worker_thread_and_is_normalised() -> None:
    threads: list[int] = []

    def embed(texts: list[str]) -> list[list[float]]:
        threads.append(threading.get_ident())
        return raw_vectors(texts)

    embedder = CallableEmbedder(embed)
    matrix = await embedder.embed(["ab", "abcd"])
    assert matrix.dtype == np.float32 and matrix.shape == (2, 3)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-6)
    expected = np.array(raw_vectors(["ab", "abcd"]))
    np.testing.assert_allclose(matrix, expected / np.linalg.norm(expected, axis=1, keepdims=True), rtol=1e-6)
    assert threads and threads[0] != threading.get_ident()
    assert embedder.dimension == 3  # learned from the first call
    assert ".embed#" in embedder.name  # the function, made unique to this object: it names no model (#10)
    assert isinstance(embedder, Embedder)


async def test_async_callable_and_custom_name() -> None:
    async def embed(texts: list[str]) -> np.ndarray:
        await asyncio.sleep(0)
        return np.array(raw_vectors(texts)) * 10

    embedder = CallableEmbedder(embed, name="my-model", dimension=3)
    matrix = await embedder.embed(["x"])
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-6)
    assert embedder.name == "my-model"


async def test_sync_callable_can_run_inline() -> None:
    threads: list[int] = []

    def embed(texts: list[str]) -> list[list[float]]:
        threads.append(threading.get_ident())
        return raw_vectors(texts)

    await CallableEmbedder(embed, run_in_thread=False).embed(["x"])
    assert threads == [threading.get_ident()]


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ([[1.0, float("nan")]], "NaN"),
        ([[float("inf"), 1.0]], "infinite"),
        ([[0.0, 0.0]], "zero"),
        ([1.0, 2.0], "shape"),
        ([[1.0, 2.0], [3.0, 4.0]], "shape"),
        ([[]], "shape"),
        ([["a", "b"]], "not a matrix"),
        ([[1.0, 2.0], [3.0]], "not a matrix"),
        ("vectors", "not a matrix"),
    ],
)
async def test_bad_output_raises_embedding_error(output: object, message: str) -> None:
    embedder = CallableEmbedder(lambda texts: output)
    with pytest.raises(EmbeddingError, match=message):
        await embedder.embed(["one text"])


async def test_dimension_change_raises_embedding_error() -> None:
    sizes = iter([3, 5])
    embedder = CallableEmbedder(lambda texts: np.ones((len(texts), next(sizes))))
    await embedder.embed(["x"])
    with pytest.raises(EmbeddingError, match="dimension 5, expected 3"):
        await embedder.embed(["y"])
    declared = CallableEmbedder(lambda texts: np.ones((len(texts), 4)), dimension=3)
    with pytest.raises(EmbeddingError, match="dimension"):
        await declared.embed(["x"])


async def test_exceptions_of_the_callable_propagate() -> None:
    def broken(texts: list[str]) -> None:
        raise RuntimeError("quota exceeded")

    with pytest.raises(RuntimeError, match="quota"):
        await CallableEmbedder(broken).embed(["x"])


def test_normalized_matrix() -> None:
    matrix = normalized_matrix([[3, 4], [0, 2]], 2, 2)
    np.testing.assert_allclose(matrix, [[0.6, 0.8], [0.0, 1.0]], rtol=1e-6)
    assert matrix.flags["C_CONTIGUOUS"] and matrix.dtype == np.float32
    with pytest.raises(EmbeddingError):
        normalized_matrix([[3, 4]], 2)


@pytest.mark.parametrize("count", [1, 2])
def test_normalized_matrix_checks_every_row_the_same_way(count: int) -> None:
    """One row (a lookup's fast path) and several: bad rows refused, huge finite ones normalised, not zeroed."""
    filler = [[1.0, 0.0]] * (count - 1)
    for bad, message in (([np.nan, 1.0], "NaN"), ([np.inf, 1.0], "NaN"), ([0.0, 0.0], "zero vector")):
        with pytest.raises(EmbeddingError, match=message):
            normalized_matrix([bad, *filler], count, 2)
    huge = normalized_matrix([[3e38, 3e38], *filler], count, 2)
    np.testing.assert_allclose(huge[0], [2**-0.5, 2**-0.5], rtol=1e-6)
    single = normalized_matrix(np.array([[3, 4], *filler][:count], dtype=np.float32), count, 2)
    np.testing.assert_allclose(single[0], [0.6, 0.8], rtol=1e-6)
    assert single.dtype == np.float32 and single.flags["C_CONTIGUOUS"]


# -- as_embedder -------------------------------------------------------------------------------------------


def test_as_embedder_keeps_embedder_objects_and_wraps_callables() -> None:
    fake = BagOfWordsEmbedder()
    assert as_embedder(fake) is fake
    wrapped = as_embedder(raw_vectors, name="raw")
    assert isinstance(wrapped, CallableEmbedder) and wrapped.name == "raw"
    with pytest.raises(ConfigurationError, match="embedder"):
        as_embedder(42)
    with pytest.raises(ConfigurationError):
        CallableEmbedder("not callable")  # type: ignore[arg-type]


async def test_as_embedder_on_a_langchain_embeddings() -> None:
    embeddings_module = pytest.importorskip("langchain_core.embeddings")
    model = embeddings_module.DeterministicFakeEmbedding(size=16)
    embedder = as_embedder(model)
    assert isinstance(embedder, LangChainEmbedder)
    assert embedder.name.startswith("langchain:")
    matrix = await embedder.embed([RESET, DIFFERENT])
    assert matrix.shape == (2, 16)
    expected = np.array(model.embed_documents([RESET, DIFFERENT]))
    np.testing.assert_allclose(matrix, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)

    async with SemanticCache(embedder=model, threshold=0.9, on_error="raise") as cache:
        await cache.store(RESET, "link")
        hit = await cache.lookup(RESET)
        assert hit is not None and hit.kind == "exact"
        assert await cache.lookup(DIFFERENT) is None


async def test_as_embedder_on_a_llamaindex_embedding() -> None:
    embeddings_module = pytest.importorskip("llama_index.core.embeddings")
    model = embeddings_module.MockEmbedding(embed_dim=8)
    embedder = as_embedder(model)
    assert isinstance(embedder, LlamaIndexEmbedder)
    assert embedder.name.startswith("llamaindex:")
    matrix = await embedder.embed(["a", "b", "c"])
    assert matrix.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-6)

    async with SemanticCache(embedder=model, threshold=0.9, answer_guard=False, on_error="raise") as cache:
        await cache.store("first question", "answer")
        hit = await cache.lookup("second question")  # MockEmbedding gives every text the same vector
        assert hit is not None and hit.kind == "semantic" and hit.similarity == pytest.approx(1.0, abs=1e-6)


# -- LocalEmbedder (no model needed) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "field"), [({"max_batch_size": 0}, "max_batch_size"), ({"max_wait": -1}, "max_wait")]
)
def test_local_embedder_rejects_bad_options(arguments: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        LocalEmbedder(**arguments)  # type: ignore[arg-type]


def test_local_embedder_is_lazy_and_bounded() -> None:
    embedder = LocalEmbedder()
    assert embedder.loaded is False
    assert embedder.dimension == 384
    assert embedder.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert 1 <= embedder.torch_threads <= 4


# -- LocalEmbedder with the bundled model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_embedder() -> Iterator[LocalEmbedder]:
    """The process-wide bundled-model embedder (the one SemanticCache() uses): one model in memory."""
    embedder = default_embedder()
    embedder.embed_sync(["warm up"])
    yield embedder


def cosine(matrix: np.ndarray, first: int, second: int) -> float:
    return float(matrix[first] @ matrix[second])


@pytest.mark.model
async def test_bundled_model_separates_paraphrase_from_different_question(local_embedder: LocalEmbedder) -> None:
    matrix = await local_embedder.embed([RESET, PARAPHRASE, DIFFERENT])
    assert matrix.shape == (3, 384) and matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    assert cosine(matrix, 0, 1) >= BUNDLED_THRESHOLD
    assert cosine(matrix, 0, 2) < BUNDLED_THRESHOLD
    assert (await local_embedder.embed([])).shape == (0, 384)


@pytest.mark.model
async def test_concurrent_calls_share_forward_passes(local_embedder: LocalEmbedder) -> None:
    await check_concurrent_calls_share_forward_passes(local_embedder)


@pytest.mark.model
async def test_event_loop_stays_responsive_while_the_model_runs(local_embedder: LocalEmbedder) -> None:
    texts = [f"A longer passage about topic {number}, written to keep the model busy for a while. " * 4 for number
             in range(48)]  # fmt: skip
    tick_times: list[float] = []

    async def ticker() -> None:
        while True:
            tick_times.append(time.perf_counter())
            await asyncio.sleep(0.005)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    started = time.perf_counter()
    try:
        matrix = await local_embedder.embed(texts)
    finally:
        elapsed = time.perf_counter() - started
        ticking.cancel()
    assert matrix.shape == (48, 384)
    during = [moment for moment in tick_times if moment >= started]
    assert len(during) >= 5, f"only {len(during)} ticks in {elapsed:.3f}s of model time"
    gaps = np.diff([started, *during])
    assert gaps.max() < max(0.25, elapsed / 4), f"the loop stalled for {gaps.max():.3f}s"


@pytest.mark.model
async def test_embed_sync_from_a_thread(local_embedder: LocalEmbedder) -> None:
    from_thread = await asyncio.to_thread(local_embedder.embed_sync, [RESET])
    from_loop = await local_embedder.embed([RESET])
    np.testing.assert_allclose(from_thread, from_loop, atol=1e-5)


@pytest.mark.model
async def test_semantic_cache_with_the_bundled_model(local_embedder: LocalEmbedder) -> None:
    async with SemanticCache() as cache:
        assert cache.embedder is local_embedder
        assert cache.config.threshold == BUNDLED_THRESHOLD
        await cache.store(RESET, "Use the 'Forgot password' link on the sign-in page.")
        exact = await cache.lookup(RESET)
        assert exact is not None and exact.kind == "exact"
        paraphrase = await cache.lookup(PARAPHRASE)
        assert paraphrase is not None
        assert paraphrase.kind == "semantic" and paraphrase.prompt == RESET
        assert paraphrase.similarity >= cache.config.threshold
        assert await cache.lookup(DIFFERENT) is None
        stats = await cache.get_stats()
        assert (stats["exact_hits"], stats["semantic_hits"], stats["misses"]) == (1, 1, 1)
        assert stats["embedder"] == DEFAULT_MODEL_NAME


@pytest.mark.model
async def test_a_model_that_cannot_load_fails_every_waiter(tmp_path: object) -> None:
    embedder = LocalEmbedder(model_path=str(tmp_path))  # an empty folder: no weights to load
    try:
        results = await asyncio.gather(embedder.embed(["a"]), embedder.embed(["b"]), return_exceptions=True)
        assert all(isinstance(result, EmbeddingError) for result in results)
        assert not embedder.loaded
    finally:
        embedder.close()
