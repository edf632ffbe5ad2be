"""Second-stage checks of semantic candidates: after the cosine threshold and the answer guard, each verifier in
order sees the surviving candidates of one lookup as a batch and accepts or rejects each one.

A verifier that fails or runs out of time rejects the whole batch (fail-open: the call is a miss and goes to the
model, never a wrong hit), and the error is logged and counted; `on_error="raise"` raises instead. Exact hits
never pass through verifiers.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from semantic_llm_cache.errors import ConfigurationError

DEFAULT_VERIFIER_TIMEOUT = 2.0


@dataclass(frozen=True)
class Candidate:
    """A stored entry that may answer `query`: its prompt, its cosine similarity, its answer and metadata."""

    query: str
    prompt: str
    similarity: float
    response: Any = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """A verifier's decision on one candidate, with the score it rests on (if any) and why."""

    accept: bool
    score: float | None = None
    reason: str | None = None


@runtime_checkable
class Verifier(Protocol):
    """Decides, for a batch of candidates of one lookup, which may be served (one Verdict per candidate)."""

    name: str
    timeout: float

    async def verify(self, candidates: Sequence[Candidate]) -> Sequence[Verdict]: ...


def checked_timeout(timeout: float) -> float:
    """A verifier's timeout, checked: seconds above 0 and at most an hour."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
        raise ConfigurationError(f"verifier timeout must be seconds above 0 and at most 3600, got {timeout!r}")
    return float(timeout)


class CallableVerifier:
    """A user's own check as a verifier: `check(query, candidate_prompt, similarity)`, sync or async, returning
    True/False, a Verdict, or a score in [0, 1] (accepted at `min_score`). The candidates of a batch are checked
    concurrently (a sync check in worker threads). E.g. an LLM judge: `async def same(q, p, s) -> bool`."""

    def __init__(
        self,
        check: Callable[[str, str, float], Any],
        *,
        name: str | None = None,
        timeout: float = DEFAULT_VERIFIER_TIMEOUT,
        min_score: float = 0.5,
    ) -> None:
        if not callable(check):
            raise ConfigurationError(f"a verifier check must be callable, got {type(check).__name__}")
        self.timeout = checked_timeout(timeout)
        self.check = check
        self.name = name or getattr(check, "__qualname__", None) or type(check).__name__
        self.min_score = min_score

    async def verify(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        return list(await asyncio.gather(*(self._one(candidate) for candidate in candidates)))

    async def _one(self, candidate: Candidate) -> Verdict:
        if inspect.iscoroutinefunction(self.check):
            outcome = await self.check(candidate.query, candidate.prompt, candidate.similarity)
        else:
            outcome = await asyncio.to_thread(self.check, candidate.query, candidate.prompt, candidate.similarity)
            if inspect.isawaitable(outcome):
                outcome = await outcome
        return as_verdict(outcome, self.min_score)


class AnswerGuardVerifier:
    """The answer guard (numbers, negation, names, opposites: `guard.guard_refusal`) as a verifier in the ordered
    list: `SemanticCache(answer_guard=False, verifiers=[AnswerGuardVerifier(), ...])` refuses exactly what
    `answer_guard=True` refuses (the engine's built-in guard runs first, before the list, when it is on)."""

    name = "answer-guard"

    def __init__(self, timeout: float = DEFAULT_VERIFIER_TIMEOUT) -> None:
        self.timeout = checked_timeout(timeout)

    async def verify(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        from semantic_llm_cache.guard import guard_refusal

        verdicts = []
        for candidate in candidates:
            reason = guard_refusal(candidate.query, candidate.prompt)
            verdicts.append(Verdict(reason is None, reason=reason))
        return verdicts


def as_verdict(outcome: Any, min_score: float = 0.5) -> Verdict:
    """A check's answer as a Verdict: a Verdict, a bool, or a finite score (accepted at `min_score`)."""
    if isinstance(outcome, Verdict):
        return outcome
    if isinstance(outcome, bool):
        return Verdict(outcome)
    if isinstance(outcome, (int, float)) and math.isfinite(outcome):
        return Verdict(float(outcome) >= min_score, score=float(outcome))
    raise TypeError(f"a verifier returned {type(outcome).__name__}; expected a bool, a score or a Verdict")


def as_verifier(value: Any) -> Verifier:
    """A Verifier as given, or a plain callable check wrapped in CallableVerifier."""
    if isinstance(value, Verifier):
        return value
    if callable(value):
        return CallableVerifier(value)
    raise ConfigurationError(
        f"verifiers must be Verifier objects or callables (query, candidate_prompt, similarity), got {value!r}"
    )


async def run_verifier(verifier: Verifier, candidates: Sequence[Candidate]) -> list[Verdict]:
    """One verifier over a batch, within its timeout; one Verdict per candidate or an exception."""
    verdicts = list(await asyncio.wait_for(verifier.verify(candidates), timeout=verifier.timeout))
    if len(verdicts) != len(candidates):
        raise ValueError(f"verifier {verifier.name} returned {len(verdicts)} verdicts for {len(candidates)} candidates")
    return [as_verdict(verdict) for verdict in verdicts]


__all__ = [
    "DEFAULT_VERIFIER_TIMEOUT",
    "AnswerGuardVerifier",
    "CallableVerifier",
    "Candidate",
    "Verdict",
    "Verifier",
    "as_verdict",
    "as_verifier",
    "checked_timeout",
    "run_verifier",
]
