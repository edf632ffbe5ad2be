"""Verifiers: a second stage over the semantic candidates of a lookup, in order, batched, under fail-open."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from semantic_llm_cache import SemanticCache
from semantic_llm_cache.errors import ConfigurationError, VerifierError
from semantic_llm_cache.verifiers import CallableVerifier, Candidate, Verdict
from tests.fakes import BagOfWordsEmbedder

STORED = "how do i renew my passport online in the city office today please"
OTHER_STORED = "how do i renew my passport online in the city office today now"
QUERY = "how do i renew my passport online in the city office today"


def make_cache(verifiers: Sequence[Any], **options: Any) -> SemanticCache:
    return SemanticCache(embedder=BagOfWordsEmbedder(), threshold=0.7, verifiers=verifiers, **options)


class Recording:
    """A verifier that records its batches and accepts the candidates whose prompt ends with `accept_suffix`."""

    name = "recording"
    timeout = 1.0

    def __init__(self, accept_suffix: str | None = None) -> None:
        self.batches: list[list[Candidate]] = []
        self.accept_suffix = accept_suffix

    async def verify(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        self.batches.append(list(candidates))
        suffix = self.accept_suffix
        return [Verdict(suffix is None or candidate.prompt.endswith(suffix), score=0.5) for candidate in candidates]


async def test_verifiers_see_the_batch_in_order_and_choose() -> None:
    first, second = Recording(), Recording(accept_suffix="now")
    cache = make_cache([first, second])
    await cache.store(STORED, "please answer", metadata={"source": "faq"})
    await cache.store(OTHER_STORED, "now answer")
    hit = await cache.lookup(QUERY)
    assert hit is not None and hit.response == "now answer"
    assert len(first.batches) == 1 and len(first.batches[0]) == 2  # one batch: every surviving candidate
    assert [c.similarity for c in first.batches[0]] == sorted((c.similarity for c in first.batches[0]), reverse=True)
    assert first.batches[0][0].query == QUERY
    assert {c.response for c in first.batches[0]} == {"please answer", "now answer"}
    assert second.batches == first.batches  # the second saw what the first accepted
    assert cache.stats["verifier_refusals"] == 1


async def test_a_plain_callable_and_scores() -> None:
    calls: list[tuple[str, str, float]] = []

    def same_city(query: str, prompt: str, similarity: float) -> bool:
        calls.append((query, prompt, similarity))
        return "please" not in prompt

    async def score(query: str, prompt: str, similarity: float) -> float:
        return 0.2

    cache = make_cache([same_city])
    await cache.store(STORED, "answer")
    assert await cache.lookup(QUERY) is None and len(calls) == 1
    scored = make_cache([CallableVerifier(score, min_score=0.1)])
    await scored.store(STORED, "answer")
    assert await scored.lookup(QUERY) is not None


async def test_exact_hits_pay_nothing() -> None:
    def never(query: str, prompt: str, similarity: float) -> bool:
        raise AssertionError("verifier called on an exact hit")

    cache = make_cache([never], on_error="raise")
    await cache.store(STORED, "answer")
    hit = await cache.lookup(STORED)
    assert hit is not None and hit.kind == "exact"


@pytest.mark.parametrize("failure", ["slow", "raises", "wrong type"])
async def test_a_failing_verifier_makes_a_miss_or_raises(failure: str) -> None:
    async def check(query: str, prompt: str, similarity: float) -> Any:
        if failure == "slow":
            await asyncio.sleep(5)
        if failure == "raises":
            raise RuntimeError("judge down")
        return "yes"

    verifier = CallableVerifier(check, name="judge", timeout=0.2)
    cache = make_cache([verifier])
    await cache.store(STORED, "answer")
    assert await cache.lookup(QUERY) is None
    assert cache.stats["verifier_errors"] == 1
    compute_calls: list[int] = []

    async def compute() -> str:
        compute_calls.append(1)
        return "fresh"

    assert await cache.get_or_compute(QUERY, compute) == "fresh" and compute_calls == [1]
    strict = make_cache([verifier], on_error="raise")
    await strict.store(STORED, "answer")
    with pytest.raises(VerifierError, match="judge"):
        await strict.lookup(QUERY)


def test_bad_verifiers_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="verifiers"):
        make_cache([42])
    with pytest.raises(ConfigurationError, match="timeout"):
        CallableVerifier(lambda q, p, s: True, timeout=0)
