"""`SemanticCache`: a LangChain `BaseCache` over the async semantic engine."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from langchain_core.caches import BaseCache
from langchain_core.outputs import Generation

from langchain_semantic_cache._convert import (
    CacheRequest,
    dump_generations,
    hit_metadata,
    load_generations,
    mark_served,
    request_for_prompt,
    total_tokens,
)
from semantic_llm_cache import CacheBackendError, CacheHit, ConfigurationError, InvalidInputError, run_sync
from semantic_llm_cache import SemanticCache as CoreSemanticCache

logger = logging.getLogger("langchain_semantic_cache")


class SemanticCache(BaseCache):
    """Serve a LangChain model's stored answer to the same or an equivalent prompt.

    Build it from a core cache, `SemanticCache(cache=core)`, or from the core constructor's keyword arguments,
    `SemanticCache(embedder=..., threshold=..., backend=...)`. Use it globally with `set_llm_cache(...)` or per
    model with `cache=...`.

    The model and its call parameters (LangChain's `llm_string`) and, for chat models, the conversation around
    the last human message are part of the partition: only the last human message's text is compared by
    meaning. A served generation carries `generation_info["semantic_cache"]` (and, for chat models, the
    message's `response_metadata["semantic_cache"]`) with the match `kind` and its cosine `similarity`.
    """

    def __init__(self, cache: CoreSemanticCache | None = None, **options: Any) -> None:
        if cache is not None and options:
            raise ConfigurationError(
                f"pass either a core SemanticCache or its options, not both (got cache= and {sorted(options)})"
            )
        if cache is not None and not isinstance(cache, CoreSemanticCache):
            raise ConfigurationError(f"cache must be a semantic_llm_cache.SemanticCache, got {type(cache).__name__}")
        self.engine: CoreSemanticCache = cache if cache is not None else CoreSemanticCache(**options)
        """The core cache: statistics (`await engine.get_stats()`), feedback, close."""

    # -- async API (native) -----------------------------------------------------------------------------

    async def alookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        """The stored generations for `prompt` under this model and parameters, marked as served; or None."""
        request = request_for_prompt(prompt, llm_string)
        if request is None:
            return None
        hit = await self.engine.lookup(request.question, request.scope)
        return None if hit is None else self.served(hit)

    async def aupdate(self, prompt: str, llm_string: str, return_val: Sequence[Generation]) -> None:
        """Store the generations a model produced for `prompt` (LangChain's JSON serialization)."""
        request = request_for_prompt(prompt, llm_string)
        if request is not None:
            await self.store_generations(request, return_val)

    async def aclear(self, **kwargs: Any) -> None:
        """Delete this cache's entries (its namespace); `namespace=...` another one, `namespace=None` all."""
        namespace = kwargs.pop("namespace", self.engine.config.namespace)
        if kwargs:
            raise TypeError(f"unexpected keyword arguments: {sorted(kwargs)}")
        await self.engine.clear(namespace)

    # -- sync API: the same coroutines on the engine's shared loop thread -------------------------------

    def lookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        """Sync `alookup`; works from scripts, threads and inside a running event loop."""
        return run_sync(self.alookup(prompt, llm_string))

    def update(self, prompt: str, llm_string: str, return_val: Sequence[Generation]) -> None:
        """Sync `aupdate`."""
        run_sync(self.aupdate(prompt, llm_string, return_val))

    def clear(self, **kwargs: Any) -> None:
        """Sync `aclear`."""
        run_sync(self.aclear(**kwargs))

    # -- for the chat-model wrapper ---------------------------------------------------------------------

    async def store_generations(
        self, request: CacheRequest, generations: Sequence[Generation], compute_seconds: float | None = None
    ) -> None:
        """Store `generations` as the answer to `request` (nothing when there are none)."""
        if not generations:
            return
        try:
            await self.engine.store(
                request.question,
                dump_generations(generations),
                request.scope,
                compute_seconds=compute_seconds,
                tokens=total_tokens(generations),
            )
        except InvalidInputError as exc:  # e.g. a NaN in generation_info: the answer is served, just not cached
            if self.engine.config.on_error == "raise":
                raise
            logger.warning("semantic cache did not store a LangChain answer: %s", exc)

    def served(self, hit: CacheHit) -> list[Generation] | None:
        """The generations of `hit`, marked with how they were served; None (a miss) if they cannot be read."""
        generations = self.readable(hit.response)
        return None if generations is None else mark_served(generations, hit_metadata(hit))

    def readable(self, response: Any) -> list[Generation] | None:
        """Stored JSON back to generations; an unreadable entry is a miss (or an error with on_error='raise')."""
        try:
            return load_generations(response)
        except Exception as exc:
            if self.engine.config.on_error == "raise":
                raise CacheBackendError(f"cached entry is not a LangChain answer: {exc}") from exc
            logger.warning("semantic cache entry is not a LangChain answer, treating it as a miss: %s", exc)
            return None
