"""Promises that faults and bad inputs once broke (#10): embedder identity, a hung backend, undocumented errors,
huge prompts. Each runs on every registered backend where the backend matters."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from semantic_llm_cache import InvalidInputError, Scope, SemanticCache
from semantic_llm_cache.backends.memory import MemoryBackend
from semantic_llm_cache.config import CacheEntry
from semantic_llm_cache.embeddings.adapters import as_embedder
from semantic_llm_cache.embeddings.local import model_directory_name
from semantic_llm_cache.storage import StorageBackend
from tests.fakes import BagOfWordsEmbedder, word_vector


class SeededModel:
    """A user's embedding model object: a different seed is a different model, with no model attribute."""

    def __init__(self, seed: int, dimension: int = 32) -> None:
        self.seed = seed
        self.dimension_of_output = dimension

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([word_vector(f"{self.seed}:{text.lower()}", self.dimension_of_output) for text in texts])


def deeply_nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


# -- 1. an embedder's identity ----------------------------------------------------------------------------


def test_unnamed_embedders_of_one_place_get_different_names(caplog: pytest.LogCaptureFixture) -> None:
    def encode(texts: Sequence[str], seed: int) -> np.ndarray:
        return SeededModel(seed).encode(texts)

    with caplog.at_level(logging.WARNING, logger="semantic_llm_cache"):
        pairs = [
            (as_embedder(SeededModel(1).encode), as_embedder(SeededModel(2).encode)),
            (as_embedder(functools.partial(encode, seed=1)), as_embedder(functools.partial(encode, seed=2))),
            *[tuple(as_embedder(lambda texts, s=seed: SeededModel(s).encode(texts)) for seed in (1, 2))],
        ]
    for first, second in pairs:
        assert first.name != second.name
    assert "pass name=" in caplog.text


def test_explicit_and_model_attribute_names_are_stable() -> None:
    class Named:
        def __init__(self, model: str, dimensions: int | None = None) -> None:
            self.model_name = model
            self.dimensions = dimensions

        def encode(self, texts: Sequence[str]) -> list[list[float]]:
            return [[1.0, 0.0]] * len(texts)

    assert as_embedder(Named("a").encode).name == as_embedder(Named("a").encode).name  # one model, shared
    assert as_embedder(Named("a").encode).name != as_embedder(Named("b").encode).name
    assert as_embedder(Named("a", 256).encode).name != as_embedder(Named("a", 1536).encode).name
    assert as_embedder(SeededModel(1).encode, name="my-model-v1").name == "my-model-v1"


def test_two_model_folders_of_one_name_get_different_names(tmp_path: Path) -> None:
    for which, content in (("one", "{'hidden': 384}"), ("two", "{'hidden': 768}")):
        folder = tmp_path / which / "model"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(content)
        (folder / "model.safetensors").write_bytes(content.encode() * 1000)
    first, second = (
        model_directory_name(str(tmp_path / "one" / "model")),
        model_directory_name(str(tmp_path / "two" / "model")),
    )
    assert first.startswith("model:") and second.startswith("model:") and first != second
    assert model_directory_name(str(tmp_path / "one" / "model")) == first


@pytest.mark.parametrize("second_dimension", [32, 48])
async def test_caches_with_different_embedders_never_read_each_others_entries(
    backend: StorageBackend, second_dimension: int
) -> None:
    first = SemanticCache(backend=backend, embedder=SeededModel(1).encode, threshold=0.5, on_error="log")
    second = SemanticCache(
        backend=backend, embedder=SeededModel(2, second_dimension).encode, threshold=0.0, on_error="log"
    )
    assert await first.store("What is the capital of Australia?", "Canberra")
    assert await first.lookup("What is the capital of Australia?") is not None
    assert await second.lookup("What is the capital of Australia?") is None  # no exact hit across embedders
    assert await second.lookup("how do i delete my account") is None  # threshold 0: any compared vector would hit
    assert await second.store("how do i delete my account", "Settings > Account")  # no dimension clash
    assert (await second.lookup("how do i delete my account") or object()).response == "Settings > Account"
    assert second.stats["errors"] == 0 and first.stats["errors"] == 0


# -- 3. a hung backend ------------------------------------------------------------------------------------


class HangingBackend(MemoryBackend):
    """A memory backend whose every call can be made to hang, as a SIGSTOPped server's would."""

    def __init__(self) -> None:
        super().__init__()
        self.hung = False
        self.calls = 0

    async def _maybe_hang(self) -> None:
        self.calls += 1
        if self.hung:
            await asyncio.sleep(3600)

    async def get(self, key: str) -> CacheEntry | None:
        await self._maybe_hang()
        return await super().get(key)

    async def set(self, key: str, entry: CacheEntry) -> None:
        await self._maybe_hang()
        await super().set(key, entry)

    async def find_nearest(self, *args: Any, **kwargs: Any) -> Any:
        await self._maybe_hang()
        return await super().find_nearest(*args, **kwargs)


async def test_a_hung_backend_costs_at_most_the_timeout_per_call_and_opens_the_circuit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = HangingBackend()
    cache = SemanticCache(backend=backend, embedder=BagOfWordsEmbedder(), threshold=0.8, timeout=0.3)
    await cache.store("what is the refund policy", "30 days")
    backend.hung = True
    durations = []
    with caplog.at_level(logging.WARNING, logger="semantic_llm_cache"):
        for number in range(50):
            started = time.perf_counter()
            answer = await cache.get_or_compute(f"question number {number}", lambda: "computed")
            durations.append(time.perf_counter() - started)
            assert answer == "computed"
    # one call: lookup, embedding and store share one 0.3 s budget (was 3 x the timeout)
    assert max(durations) < 0.3 + 0.25, durations[:5]
    assert (await cache.get_stats())["circuits"]["backend"] == "open"
    assert backend.calls <= 1 + 3 + 8  # the store, the failures that opened it, and a few half-open probes
    assert sum(durations[5:]) < 3.0  # once open, calls do not wait on the backend
    lines = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(lines) <= 6, [record.getMessage() for record in lines]
    assert any("circuit open" in record.getMessage() for record in lines)

    backend.hung = False
    deadline = time.monotonic() + 35
    while time.monotonic() < deadline:  # the next probe after the cool-down closes the circuit
        if await cache.lookup("what is the refund policy") is not None:
            break
        await asyncio.sleep(0.2)
    assert (await cache.get_stats())["circuits"]["backend"] == "closed"
    assert any("answered again" in record.getMessage() for record in caplog.records)


async def test_a_cancelled_caller_is_cancelled_not_served_a_miss() -> None:
    backend = HangingBackend()
    backend.hung = True
    cache = SemanticCache(backend=backend, embedder=BagOfWordsEmbedder(), timeout=30)
    task = asyncio.ensure_future(cache.lookup("what is the refund policy"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cache.stats["errors"] == 0 and cache.stats["misses"] == 0
    assert (await cache.get_stats())["circuits"]["backend"] == "closed"  # a cancellation says nothing of health


# -- 4. bad input: one documented error, the same on every backend, nothing written -----------------------

BAD_STORES: list[tuple[str, dict[str, Any]]] = [
    ("a 5,000-digit int", {"response": 10**5000}),
    ("a lone surrogate in the response", {"response": "bad \ud800 text"}),
    ("a lone surrogate in a response key", {"response": {"\udfff": 1}}),
    ("a response nested 5,000 deep", {"response": deeply_nested(5000)}),
    ("metadata nested 5,000 deep", {"metadata": {"m": deeply_nested(5000)}}),
    ("a lone surrogate in the prompt", {"prompt": "what is \ud800 this"}),
    ("a lone surrogate in the namespace", {"scope": Scope(namespace="tenant-\ud800")}),
    ("a lone surrogate in the context", {"scope": Scope(context=["system: \udc80"])}),
    ("a TTL of 1e17 seconds", {"ttl": 1e17}),
    ("an infinite TTL", {"ttl": float("inf")}),
    ("a NaN TTL", {"ttl": float("nan")}),
    ("a dict for a scope", {"scope": {"namespace": "acme"}}),
]


@pytest.mark.parametrize(("case", "arguments"), BAD_STORES, ids=[case for case, _ in BAD_STORES])
async def test_bad_input_is_one_clear_error_on_every_backend_and_nothing_is_written(
    backend: StorageBackend, case: str, arguments: dict[str, Any]
) -> None:
    cache = SemanticCache(backend=backend, embedder=BagOfWordsEmbedder(), threshold=0.8, on_error="log")
    call = {"prompt": "what is the refund policy", "response": "30 days", **arguments}
    with pytest.raises(InvalidInputError):
        await cache.store(call.pop("prompt"), call.pop("response"), **call)
    if "response" not in arguments and "metadata" not in arguments:
        other = {name: value for name, value in arguments.items() if name in ("scope", "ttl")}
        with pytest.raises(InvalidInputError):
            await cache.get_or_compute(arguments.get("prompt", "what is the refund policy"), lambda: "x", **other)
    assert await backend.iterate() == []
    assert cache.stats["errors"] == 0


async def test_feedback_refuses_what_is_not_a_hit_and_reads_odd_feedback_records(backend: StorageBackend) -> None:
    cache = SemanticCache(backend=backend, embedder=BagOfWordsEmbedder(), threshold=0.8, on_error="raise")
    with pytest.raises(InvalidInputError, match="CacheHit"):
        await cache.feedback(None, correct=False)  # type: ignore[arg-type]
    for odd in ("abc", {"correct": "many", "wrong": -4, "lowest_correct_similarity": "x"}, [1, 2]):
        prompt = f"how do I reset my password {odd!r}"
        await cache.store(prompt, "Settings", metadata={"feedback": odd})
        hit = await cache.lookup(prompt.upper())
        assert hit is not None and hit.kind == "semantic"
        with pytest.raises(InvalidInputError, match="True or False"):
            await cache.feedback(hit, correct="yes")  # type: ignore[arg-type]
        await cache.feedback(hit, correct=True)
        await cache.feedback(hit, correct=False)
        entry = await backend.get(hit.key)
        assert entry is not None and entry.metadata["feedback"]["wrong"] == 1
        assert entry.metadata["feedback"]["correct"] == 1
        assert await cache.lookup(prompt.upper()) is None


# -- 5. huge prompts --------------------------------------------------------------------------------------


class CheapEmbedder:
    """Cost independent of text length (a vector from the first words), so only the engine's own work shows."""

    name = "test-cheap"
    dimension = 16

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([word_vector(" ".join(text.split(" ", 8)[:8]), 16) for text in texts]).astype(np.float32)


async def test_a_prompt_over_max_prompt_chars_is_passed_through_uncached() -> None:
    cache = SemanticCache(embedder=CheapEmbedder(), max_prompt_chars=1000)
    long_prompt = "word " * 300
    assert await cache.lookup(long_prompt) is None
    with pytest.raises(InvalidInputError, match="max_prompt_chars"):
        await cache.store(long_prompt, "answer")
    assert await cache.get_or_compute(long_prompt, lambda: "computed") == "computed"
    assert cache.resolve_sync(long_prompt, lambda: "sync").response == "sync"
    assert await cache.backend.iterate() == []
    assert cache.stats["prompt_too_long"] == 4
    assert await cache.store("word   " * 150, "ok")  # 1,050 characters, 749 once whitespace is collapsed


async def test_huge_prompts_never_stall_the_event_loop_and_recent_vectors_stay_small(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import semantic_llm_cache.cache as cache_module

    guard_threads: list[str] = []
    real_guard = cache_module.guard_refusal

    def recording_guard(query: str, candidate: str) -> Any:
        guard_threads.append(threading.current_thread().name)
        return real_guard(query, candidate)

    monkeypatch.setattr(cache_module, "guard_refusal", recording_guard)
    cache = SemanticCache(embedder=CheapEmbedder(), threshold=0.5)
    body = "The invoice number 1234 is not paid by Acme Corp. " * 19_000  # 0.97 MB, under max_prompt_chars
    await cache.store("first " + body, "stored")
    largest_gap = 0.0
    running = True

    async def ticker() -> None:
        nonlocal largest_gap
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            largest_gap = max(largest_gap, now - last)
            last = now

    ticking = asyncio.ensure_future(ticker())
    for number in range(3):
        await cache.lookup("first " + body + f" variant {number}")
    running = False
    await ticking
    assert guard_threads and threading.main_thread().name not in guard_threads
    assert largest_gap < 0.25, f"the event loop stalled {largest_gap:.2f}s"
    for number in range(300):
        await cache.lookup(f"{number} " + "x" * 10_000)
    assert all(len(key) == 16 for key in cache._recent_vectors)  # digests, not the prompts themselves
