"""The instrumentation event a SemanticCacheLLM call dispatches, and the cache info attached to its responses.

Both speak the engine's one vocabulary (`semantic_llm_cache.Resolution.info`): hit, kind, similarity,
matched_prompt, age_seconds, key, shared, prompt; plus `bypass` when the call could not be cached.
"""

from __future__ import annotations

from typing import Any, Literal

from llama_index.core.instrumentation.events import BaseEvent

from semantic_llm_cache import Resolution

CACHE_INFO_KEY = "semantic_cache"
"""The `additional_kwargs` key of a CompletionResponse/ChatResponse that holds the cache info."""


class SemanticCacheEvent(BaseEvent):
    """How a SemanticCacheLLM call was answered, dispatched through `llama_index.core.instrumentation`.

    The fields are those of `additional_kwargs["semantic_cache"]`: hit (served without calling the wrapped LLM),
    kind ("exact", "semantic", "shared": a concurrent identical call's answer, "miss": the wrapped LLM answered),
    similarity, matched_prompt, age_seconds and key of the entry that served it, shared, and prompt (the text
    looked up: only the question is embedded). bypass: why the call was not cached at all (the wrapped LLM
    answered). method: the SemanticCacheLLM method called. The `span_id` is the wrapper call's span.
    """

    method: str
    hit: bool
    kind: Literal["exact", "semantic", "shared", "miss"]
    similarity: float | None = None
    matched_prompt: str | None = None
    age_seconds: float | None = None
    key: str | None = None
    shared: bool = False
    prompt: str | None = None
    bypass: str | None = None

    @classmethod
    def class_name(cls) -> str:
        return "SemanticCacheEvent"


def bypass_info(reason: str) -> dict[str, Any]:
    """The cache info of a call that was not cached: a miss that looked nothing up, and why."""
    return {**Resolution(None, None, computed=True).info(), "bypass": reason}


def cache_event(method: str, info: dict[str, Any]) -> SemanticCacheEvent:
    """The event for one call; create it in the caller's context, so that it carries the caller's span id."""
    return SemanticCacheEvent(method=method, **info)
