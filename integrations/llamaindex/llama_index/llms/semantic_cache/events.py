"""The instrumentation event a SemanticCacheLLM call dispatches, and the cache info attached to its responses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from llama_index.core.instrumentation.events import BaseEvent

from semantic_llm_cache import CacheHit

CACHE_INFO_KEY = "semantic_cache"
"""The `additional_kwargs` key of a CompletionResponse/ChatResponse that holds the cache info."""

Outcome = Literal["hit", "miss", "shared", "bypass"]


class SemanticCacheEvent(BaseEvent):
    """How a SemanticCacheLLM call was answered, dispatched through `llama_index.core.instrumentation`.

    outcome: "hit" (served from the cache), "miss" (the wrapped LLM answered), "shared" (a concurrent identical
    call's answer was shared), "bypass" (the call could not be cached, see `reason`; the wrapped LLM answered).
    prompt: the text that was looked up (only the question is embedded). The `span_id` is the wrapper call's span.
    """

    outcome: Outcome
    method: str
    prompt: str | None = None
    kind: Literal["exact", "semantic"] | None = None
    similarity: float | None = None
    matched_prompt: str | None = None
    age: float | None = None
    key: str | None = None
    reason: str | None = None

    @classmethod
    def class_name(cls) -> str:
        return "SemanticCacheEvent"


@dataclass(frozen=True)
class CacheOutcome:
    """What the cache did for one call; rendered both as response info and as an instrumentation event."""

    outcome: Outcome
    prompt: str | None = None
    hit: CacheHit | None = None
    reason: str | None = None

    def info(self) -> dict[str, Any]:
        """The `additional_kwargs[CACHE_INFO_KEY]` value: `hit`, `outcome`, and for hits `kind` and `similarity`."""
        details: dict[str, Any] = {"hit": self.outcome == "hit", "outcome": self.outcome}
        if self.hit is not None:
            details.update(
                kind=self.hit.kind,
                similarity=self.hit.similarity,
                matched_prompt=self.hit.prompt,
                age=self.hit.age,
                key=self.hit.key,
            )
        if self.reason is not None:
            details["reason"] = self.reason
        return details

    def event(self, method: str) -> SemanticCacheEvent:
        """The event, created in the caller's context so that it carries the caller's span id."""
        hit = self.hit
        return SemanticCacheEvent(
            outcome=self.outcome,
            method=method,
            prompt=self.prompt,
            kind=None if hit is None else hit.kind,
            similarity=None if hit is None else hit.similarity,
            matched_prompt=None if hit is None else hit.prompt,
            age=None if hit is None else hit.age,
            key=None if hit is None else hit.key,
            reason=self.reason,
        )
