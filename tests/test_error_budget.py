"""The error budget (issue 16): the estimator and its bound, and the engine's decisions on a table embedder whose
similarities are set by hand (no model, no shared data)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from semantic_llm_cache import SemanticCache
from semantic_llm_cache.config import CacheEntry
from semantic_llm_cache.error_budget import (
    AnswerSimilarity,
    ErrorBudget,
    PoolEvidence,
    normalized_answer,
    read_evidence,
    same_text,
    verified_at,
    wilson_bounds,
    with_outcome,
)
from semantic_llm_cache.errors import ConfigurationError
from semantic_llm_cache.serialization import entry_from_dict, entry_to_dict
from semantic_llm_cache.storage import StorageBackend

Z90 = 1.2815515655446004  # one-sided 90%
DIMENSION = 64
STORED = "alpha"


class TableEmbedder:
    """ "alpha" is e0; "q<i>" is s*e0 + sqrt(1 - s^2)*e_i, so its cosine with "alpha" is s and with another query
    s^2 (below the thresholds used here: each query's only candidate is the stored prompt)."""

    name = "test-table"
    dimension = DIMENSION

    def __init__(self) -> None:
        self.similarity: dict[str, float] = {}
        self.index: dict[str, int] = {}

    def query(self, index: int, similarity: float) -> str:
        """The text of query `index` (0 to 61: each has a direction of its own) at `similarity` to "alpha"."""
        words = ["bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]
        text = f"{words[index % 8]} {words[index // 8]} q"
        self.similarity[text] = similarity
        self.index[text] = index + 1
        return text

    def vector(self, text: str) -> np.ndarray:
        vector = np.zeros(DIMENSION, dtype=np.float32)
        if text == STORED:
            vector[0] = 1.0
            return vector
        s = self.similarity[text]
        vector[0] = s
        vector[self.index[text]] = math.sqrt(1 - s * s)
        return vector

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.vector(text) for text in texts])


def budget_cache(backend: StorageBackend | None = None, **options: Any) -> tuple[SemanticCache, TableEmbedder]:
    embedder = TableEmbedder()
    settings: dict[str, Any] = {"exploration_rate": 0.0, "unverified_exploration_rate": 0.0, "min_evidence": 10,
                                "seed": 0, **options}  # fmt: skip
    limit = settings.pop("max_error_rate", 0.2)
    cache = SemanticCache(backend=backend, embedder=embedder, threshold=0.85, on_error="raise",
                          error_budget=ErrorBudget(limit, **settings))  # fmt: skip
    return cache, embedder


class Model:
    """A fake model: answers every prompt with `answer` and counts its calls."""

    def __init__(self, answer: str = "A") -> None:
        self.answer = answer
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return self.answer


async def teach(cache: SemanticCache, embedder: TableEmbedder, count: int, answer: str = "A", start: int = 0) -> Model:
    """`count` queries at similarity 0.9 to the stored prompt, each computed and compared."""
    model = Model(answer)
    for index in range(start, start + count):
        await cache.resolve(embedder.query(index, 0.9), model)
        await cache.wait_for_comparisons()
    return model


# -- the estimator and its bound ----------------------------------------------------------------------------


def test_wilson_bounds_match_the_closed_form() -> None:
    lower, upper = wilson_bounds(0.0, 30, Z90)
    assert lower == 0.0
    assert upper == pytest.approx(Z90**2 / (30 + Z90**2))  # no errors in n: z^2 / (n + z^2)
    lower, upper = wilson_bounds(0.1, 100, 1.959963984540054)
    assert (round(lower, 4), round(upper, 4)) == (0.0552, 0.1744)  # the textbook 95% interval of 10/100
    assert wilson_bounds(0.5, 0, Z90) == (0.0, 1.0)
    assert wilson_bounds(0.05, 400, Z90)[1] < wilson_bounds(0.05, 100, Z90)[1]  # more evidence, tighter


def test_the_estimate_is_post_stratified_by_traffic_with_a_kish_effective_n() -> None:
    pool = PoolEvidence()
    for _ in range(100):  # stratum [0.80, 0.85): 100 candidates, 10 judged, 1 wrong
        pool.record_candidate(0.81, served=False)
    for _ in range(300):  # stratum [0.90, 0.95): 300 candidates, 10 judged, none wrong
        pool.record_candidate(0.91, served=True)
    for index in range(10):
        pool.record_outcome(0.81, index != 0)
        pool.record_outcome(0.91, True)
    everything = pool.cumulative(Z90)[80]
    assert everything is not None
    assert everything.rate == pytest.approx(100 * 0.1 / 400)  # traffic-weighted, not 1/20 judged
    assert everything.effective_n == pytest.approx(400**2 / (100**2 / 10 + 300**2 / 10))
    assert everything.upper == pytest.approx(wilson_bounds(0.025, 16.0, Z90)[1])
    upper_range = pool.cumulative(Z90)[90]
    assert upper_range is not None and upper_range.rate == 0.0
    weight, wrong, variance = pool.served_totals()  # the served hits are all in the clean stratum
    assert (weight, wrong, variance) == (300.0, 0.0, 300.0**2 / 10)


def test_the_threshold_loosens_only_at_looks_and_tightens_at_once() -> None:
    pool = PoolEvidence(min_evidence=10)
    for _ in range(9):
        pool.record_candidate(0.9, served=False)
        pool.record_outcome(0.9, True)
        pool.relearn(0.2, Z90, 0.85, 10)
    assert pool.threshold is None and pool.met is None  # 9 agreements: not enough evidence yet
    pool.record_candidate(0.9, served=False)
    pool.record_outcome(0.9, True)
    pool.relearn(0.2, Z90, 0.85, 10)
    assert pool.threshold == 0.9 and pool.met is True  # the look at 10 judged: 1.64 / 11.64 <= 0.2
    assert pool.next_look == 15.0
    for _ in range(4):  # four wrong at 0.9: the bound of [0.90, 1] is over the budget at once, no look needed
        pool.record_candidate(0.9, served=False)
        pool.record_outcome(0.9, False)
        pool.relearn(0.2, Z90, 0.85, 10)
    assert pool.threshold is None


def test_the_served_hits_own_sample_tightens_the_threshold() -> None:
    pool = PoolEvidence(min_evidence=10)
    for _ in range(40):  # the pooled evidence: clean at 0.90 (checks)
        pool.record_candidate(0.9, served=False)
        pool.record_outcome(0.9, True)
        pool.relearn(0.2, Z90, 0.85, 10)
    assert pool.threshold == 0.9
    for index in range(12):  # then explorations drawn at 10% at 0.97: 6 of 12 wrong
        pool.record_candidate(0.97, served=False)
        pool.record_outcome(0.97, index % 2 == 0, explored_weight=10.0)
        pool.relearn(0.2, Z90, 0.85, 10)
    served = pool.served_estimate(Z90)
    assert served is not None and served.rate == 0.5 and served.effective_n == 12
    assert pool.threshold is None or pool.threshold >= 0.95  # tightened by a stratum at least


def test_the_budget_is_reported_unmet_when_every_threshold_is_over_it() -> None:
    pool = PoolEvidence(min_evidence=10)
    for index in range(49):
        pool.record_candidate(0.9 + (index % 10) / 100, served=False)
        pool.record_outcome(0.9 + (index % 10) / 100, index % 2 == 0)
        pool.relearn(0.05, Z90, 0.85, 10)
    assert pool.met is None  # over the budget everywhere, but 49 judged outcomes are not yet 5 x min_evidence
    pool.record_candidate(0.9, served=False)
    pool.record_outcome(0.9, False)
    pool.relearn(0.05, Z90, 0.85, 10)
    assert pool.met is False and pool.threshold is None
    assert pool.floor is not None and 0.3 < pool.floor[0] < 0.7


def test_entry_evidence_is_bounded_and_read_defensively() -> None:
    evidence: dict[str, Any] = {}
    for index in range(20):
        evidence = with_outcome(evidence, 0.9 + index / 1000, agreed=index % 3 != 0)
    assert evidence["agreed"] == 13 and evidence["disagreed"] == 7
    assert len(evidence["recent"]) == 8 and evidence["recent"][-1] == [0.919, 1]
    assert verified_at(evidence) == 0.901
    assert verified_at({}) == 2.0
    assert read_evidence({"agreed": "x", "recent": [[2, 1], "bad", [0.5, True], [0.5, 0]]}) == {
        "agreed": 0, "disagreed": 0, "lowest_agreed": 2.0, "recent": [[0.5, 0]]}  # fmt: skip


def test_old_entries_without_evidence_still_load() -> None:
    entry = CacheEntry(prompt="p", response="r", partition_id="part", evidence=with_outcome({}, 0.9, True))
    data = entry_to_dict(entry)
    assert entry_from_dict(data).evidence == entry.evidence
    del data["evidence"]
    assert entry_from_dict(data).evidence == {}


def test_built_in_comparators() -> None:
    assert same_text("q", "Paris.", "  paris ") is True
    assert same_text("q", {"b": 1, "a": 2}, {"a": 2, "b": 1}) is True
    assert same_text("q", "Paris", "Lyon") is False
    assert normalized_answer("Hello   World!") == "hello world"
    with pytest.raises(ConfigurationError):
        AnswerSimilarity(cut=1.5)
    with pytest.raises(ConfigurationError):
        ErrorBudget(0.0)
    with pytest.raises(ConfigurationError):
        SemanticCache(embedder=TableEmbedder(), answers_match=same_text)  # no max_error_rate


def test_adapter_payloads_are_compared_by_their_text() -> None:
    """What the LangChain and LlamaIndex adapters store: two runs of one answer differ in ids, usage and finish
    reasons, not in text; the comparators must see the text (else every comparison is a disagreement)."""
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration
    from langchain_semantic_cache._convert import dump_generations
    from llama_index.core.llms import ChatMessage, ChatResponse, MessageRole
    from llama_index.llms.semantic_cache._codecs import CHAT

    def generation(text: str, tokens: int, reason: str) -> Any:
        message = AIMessage(
            content=text,
            response_metadata={"finish_reason": reason, "model": "m"},
            usage_metadata={"input_tokens": 3, "output_tokens": tokens, "total_tokens": 3 + tokens},
        )
        return dump_generations([ChatGeneration(message=message, generation_info={"finish_reason": reason})])

    def chat(text: str, tokens: int) -> Any:
        return CHAT.encode(ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text,
                                                            additional_kwargs={"usage": tokens})))  # fmt: skip

    assert same_text("q", generation("Paris.", 2, "stop"), generation("paris", 1, "length")) is True
    assert same_text("q", generation("Paris", 2, "stop"), generation("Lyon", 2, "stop")) is False
    assert normalized_answer(generation("Paris is the capital", 4, "stop")) == "paris is the capital"
    assert same_text("q", chat("Paris.", 2), chat("paris", 9)) is True
    assert same_text("q", chat("Paris", 2), chat("Lyon", 2)) is False
    assert same_text("q", {"text": "Paris"}, {"text": "Lyon"}) is False  # LlamaIndex completions
    assert same_text("q", {"category": "billing"}, {"category": "refunds"}) is False  # no text: compared as JSON


async def test_answer_similarity_has_its_own_cut() -> None:
    class Answers:
        name = "answers"
        dimension = 2

        async def embed(self, texts: Sequence[str]) -> np.ndarray:
            table = {"a": [1.0, 0.0], "close": [0.95, math.sqrt(1 - 0.95**2)], "far": [0.5, math.sqrt(0.75)]}
            return np.array([table[text] for text in texts], dtype=np.float32)

    compare = AnswerSimilarity(cut=0.9, unsure=0.2, embedder=Answers())
    assert await compare("q", "a", "close") is True  # 0.95 >= 0.9
    assert await compare("q", "a", "far") is False  # 0.5 < 0.7
    assert await AnswerSimilarity(cut=0.97, unsure=0.1, embedder=Answers())("q", "a", "close") is None  # between


# -- the engine ---------------------------------------------------------------------------------------------


async def test_an_unsafe_candidate_is_computed_and_its_answer_compared() -> None:
    cache, embedder = budget_cache()
    key = await cache.store(STORED, "A")
    model = Model("B")
    query = embedder.query(0, 0.9)
    resolution = await cache.resolve(query, model)
    assert resolution.computed and resolution.response == "B" and model.calls == 1  # not served "A"
    await cache.wait_for_comparisons()
    stats = await cache.get_stats()
    assert stats["budget_checks"] == 1 and stats["budget_disagreed"] == 1 and stats["semantic_hits"] == 0
    assert key is not None
    entry = await cache.backend.get(key)
    assert entry is not None and entry.evidence["disagreed"] == 1
    assert entry.min_similarity > 0.9  # a wrong outcome raises the entry's floor above that similarity


async def test_after_enough_agreement_a_candidate_is_served_without_compute() -> None:
    cache, embedder = budget_cache()
    await cache.store(STORED, "A")
    learning = await teach(cache, embedder, 10)
    assert learning.calls == 10  # every one computed while nothing was known to be safe
    model = Model("never")
    resolution = await cache.resolve(embedder.query(20, 0.9), model)
    assert resolution.hit is not None and resolution.response == "A" and model.calls == 0
    stats = await cache.get_stats()
    assert stats["budget_checks"] == 10 and stats["budget_agreed"] == 10
    assert stats["error_budget_met"] is True
    assert stats["error_budget"]["partitions"][cache.partition_for(None)]["served_threshold"] == 0.9
    assert stats["estimated_error_rate"] == 0.0 and 0 < stats["estimated_error_upper"] < 0.2


async def test_a_wrong_outcome_stops_the_entry_at_that_similarity() -> None:
    cache, embedder = budget_cache()
    await cache.store(STORED, "A")
    await teach(cache, embedder, 1, answer="B")
    later = Model("A")
    resolution = await cache.resolve(embedder.query(1, 0.88), later)  # farther than the wrong one
    assert resolution.computed and later.calls == 1
    assert cache.stats["feedback_refusals"] == 1  # refused by the entry's own floor, not even a candidate
    assert cache.stats["budget_checks"] == 1


async def test_lookup_serves_only_what_is_known_to_be_safe() -> None:
    cache, embedder = budget_cache()
    await cache.store(STORED, "A")
    assert await cache.lookup(embedder.query(0, 0.9)) is None  # a candidate, not yet known to be safe
    assert cache.stats["budget_unsafe_refusals"] == 1
    await teach(cache, embedder, 10, start=1)
    hit = await cache.lookup(embedder.query(30, 0.9))
    assert hit is not None and hit.response == "A"
    assert await cache.lookup(embedder.query(31, 0.87)) is None  # below the learned threshold (0.90)


async def test_a_slow_comparator_does_not_delay_the_caller() -> None:
    release = asyncio.Event()
    seen: list[tuple[str, Any, Any]] = []

    async def slow_judge(query: str, cached: Any, fresh: Any) -> bool:
        await release.wait()
        seen.append((query, cached, fresh))
        return cached == fresh

    cache, embedder = budget_cache(answers_match=slow_judge)
    await cache.store(STORED, "A")
    started = time.perf_counter()
    resolution = await asyncio.wait_for(cache.resolve(embedder.query(0, 0.9), Model("A")), 2.0)
    assert time.perf_counter() - started < 1.0 and resolution.response == "A"
    assert (await cache.get_stats())["error_budget"]["pending_comparisons"] == 1
    assert seen == [] and cache.stats["budget_agreed"] == 0
    release.set()
    await cache.wait_for_comparisons()
    assert seen == [(embedder.query(0, 0.9), "A", "A")] and cache.stats["budget_agreed"] == 1


async def test_comparator_failures_none_and_timeouts_are_no_evidence() -> None:
    outcomes: list[Any] = [None, RuntimeError("judge down"), "yes"]

    def judge(query: str, cached: Any, fresh: Any) -> Any:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    cache, embedder = budget_cache(answers_match=judge)
    await cache.store(STORED, "A")
    await teach(cache, embedder, 3)
    stats = await cache.get_stats()
    assert stats["budget_undecided"] == 1 and stats["budget_comparator_errors"] == 2  # raised; not a bool
    pool = cache.error_budget.pools()[cache.partition_for(None)]  # type: ignore[union-attr]
    assert int(pool.compared.sum()) == 1 and int(pool.judged.sum()) == 0

    async def hangs(query: str, cached: Any, fresh: Any) -> bool:
        await asyncio.sleep(10)
        return True

    cache, embedder = budget_cache(answers_match=hangs, comparator_timeout=0.05)
    await cache.store(STORED, "A")
    await teach(cache, embedder, 1)
    assert cache.stats["budget_comparator_timeouts"] == 1


async def test_feedback_feeds_the_same_evidence() -> None:
    cache, embedder = budget_cache()
    await cache.store(STORED, "A")
    await teach(cache, embedder, 10)
    hit = await cache.lookup(embedder.query(40, 0.93))
    assert hit is not None
    pool = cache.error_budget.pools()[cache.partition_for(None)]  # type: ignore[union-attr]
    await cache.feedback(hit, correct=False)
    assert int(pool.wrong.sum()) == 1 and int(pool.judged.sum()) == 11
    entry = await cache.backend.get(hit.key)
    assert entry is not None and entry.evidence["disagreed"] == 1 and entry.min_similarity > 0.93
    assert cache.stats["budget_feedback"] == 1


async def test_explorations_are_computed_anyway_and_counted() -> None:
    cache, embedder = budget_cache(exploration_rate=1.0)
    await cache.store(STORED, "A")
    await teach(cache, embedder, 10)
    model = Model("A")
    resolution = await cache.resolve(embedder.query(50, 0.95), model)
    await cache.wait_for_comparisons()
    assert resolution.computed and model.calls == 1  # safe, but drawn for exploration
    stats = await cache.get_stats()
    assert stats["budget_explorations"] == 1 and stats["budget_checks"] == 10 and stats["budget_agreed"] == 11


async def test_sync_resolve_and_store_computed_compare_too() -> None:
    cache, embedder = budget_cache()
    await cache.store(STORED, "A")
    query = embedder.query(0, 0.9)
    resolution = await asyncio.to_thread(cache.resolve_sync, query, lambda: "A")
    assert resolution.computed
    assert await cache.lookup(embedder.query(1, 0.9)) is None  # declined: remembered for the store that follows
    await cache.store_computed(embedder.query(1, 0.9), "A")  # as LangChain's cache does after the model answers
    await cache.wait_for_comparisons()
    assert cache.stats["budget_checks"] == 2 and cache.stats["budget_agreed"] == 2


class PairEmbedder:
    """Pair k: "stored k" is e_2k, "asked k" is 0.9 e_2k + sqrt(0.19) e_2k+1 (0.9 to its own stored prompt, 0 to
    every other)."""

    name = "test-pairs"
    dimension = DIMENSION

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for text in texts:
            kind, number = text.split()
            vector = np.zeros(DIMENSION, dtype=np.float32)
            index = 2 * ["", "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
                         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra",
                         "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu"].index(number)  # fmt: skip
            vector[index] = 1.0 if kind == "stored" else 0.9
            if kind == "asked":
                vector[index + 1] = math.sqrt(1 - 0.81)
            rows.append(vector)
        return np.stack(rows)


async def test_below_the_floor_the_budget_is_unmet_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    cache = SemanticCache(embedder=PairEmbedder(), threshold=0.85, on_error="raise",
                          error_budget=ErrorBudget(0.05, min_evidence=4, seed=0))  # fmt: skip
    caplog.set_level(logging.WARNING, logger="semantic_llm_cache")
    names = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
             "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango"]  # fmt: skip
    for index, name in enumerate(names):  # the model gives another answer half the time: half the candidates are wrong
        await cache.store(f"stored {name}", "A")
        await cache.resolve(f"asked {name}", Model("A" if index % 2 else "B"))
        await cache.wait_for_comparisons()
    stats = await cache.get_stats()
    assert stats["budget_checks"] == 20 and stats["budget_disagreed"] == 10
    assert stats["error_budget_met"] is False
    assert stats["semantic_hits"] == 0  # serves nothing it cannot keep
    warnings = [record.getMessage() for record in caplog.records if "cannot be kept" in record.getMessage()]
    assert len(warnings) == 1 and "max_error_rate=0.05" in warnings[0]
    floor = stats["error_budget"]["partitions"][cache.partition_for(None)]["measured_floor"]
    assert f"{floor['error']:.3g}" in warnings[0] and floor["error"] == 0.5


async def test_without_a_budget_nothing_changes() -> None:
    embedder = TableEmbedder()
    cache = SemanticCache(embedder=embedder, threshold=0.85, on_error="raise")
    await cache.store(STORED, "A")
    resolution = await cache.resolve(embedder.query(0, 0.9), Model("B"))
    assert resolution.hit is not None and resolution.response == "A"
    assert "estimated_error_rate" not in await cache.get_stats()


async def test_evidence_is_stored_with_the_entry_on_every_backend(backend: StorageBackend) -> None:
    cache, embedder = budget_cache(backend)
    key = await cache.store(STORED, "A")
    assert key is not None
    await teach(cache, embedder, 2, answer="A")
    await teach(cache, embedder, 1, answer="B", start=2)
    entry = await backend.get(key)
    assert entry is not None
    assert entry.evidence["agreed"] == 2 and entry.evidence["disagreed"] == 1
    assert entry.evidence["recent"] == [[0.9, 1], [0.9, 1], [0.9, 0]]
    assert entry.min_similarity > 0.9
    assert verified_at(entry.evidence) == 0.9


async def test_a_streamed_answer_is_compared_once_read_to_the_end() -> None:
    cache, embedder = budget_cache()
    await cache.store(STORED, "AB")

    async def chunks() -> Any:
        for chunk in ("A", "B"):
            yield chunk

    stream = await cache.resolve_stream(embedder.query(0, 0.9), chunks, assemble="".join, replay=lambda value: [value])
    assert stream.resolution.computed  # not yet known to be safe: the model streams
    assert [chunk async for chunk in stream] == ["A", "B"]
    await cache.wait_for_comparisons()
    assert cache.stats["budget_checks"] == 1 and cache.stats["budget_agreed"] == 1
