"""`SemanticCache`: a LangChain `BaseCache` over the async semantic engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.caches import BaseCache
from langchain_core.outputs import Generation

from langchain_semantic_cache._convert import (
    dump_generations,
    load_generations,
    request_for_prompt,
    total_tokens,
    with_cache_info,
)
from langchain_semantic_cache._options import temperature_in_llm_string
from semantic_llm_cache import Computed, ConfigurationError, Resolution, run_sync
from semantic_llm_cache import SemanticCache as CoreSemanticCache


class SemanticCache(BaseCache):
    """Serve a LangChain model's stored answer to the same or an equivalent prompt.

    Build it from a core cache, `SemanticCache(cache=core)`, or from the core constructor's keyword arguments,
    `SemanticCache(embedder=..., threshold=..., backend=...)`. Use it globally with `set_llm_cache(...)` or per
    model with `cache=...`.

    The model and its call parameters (LangChain's `llm_string`) and, for chat models, the conversation around
    the last human message are part of the partition: only the last human message's text is compared by
    meaning. Every generation it served or stored carries `generation_info["semantic_cache"]` (and, for chat
    models, the message's `response_metadata["semantic_cache"]`): `Resolution.info()`, e.g. the match `kind` and
    its cosine `similarity`, and the entry's `key` (for `delete_key`).

    LangChain's cache interface carries no per-call options: wrap the model in `SemanticCacheChatModel` for
    those. The engine's temperature policy reads the temperature from `llm_string`.
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
        if request is None or self.engine.skips_by_temperature(temperature_in_llm_string(llm_string)):
            return None
        hit = await self.engine.lookup(request.question, request.scope, decode=load_generations)
        if hit is None:
            return None
        return with_cache_info(hit.response, Resolution(hit.response, hit, computed=False).info(request.question))

    async def aupdate(self, prompt: str, llm_string: str, return_val: Sequence[Generation]) -> None:
        """Store the generations a model produced for `prompt` (LangChain's JSON serialization), and mark them
        as a miss (LangChain returns these very generations to the caller)."""
        request = request_for_prompt(prompt, llm_string)
        if request is None or not return_val:
            return
        policy = self.engine.temperature_policy
        if not policy.stores_skipped and policy.skips(temperature_in_llm_string(llm_string) or 0.0):
            return  # a sampled answer the policy keeps out (counted once, by alookup)
        answer = Computed(dump_generations(return_val), tokens=total_tokens(return_val))
        key = await self.engine.store_computed(request.question, answer, request.scope)
        with_cache_info(list(return_val), Resolution(None, None, computed=True, key=key).info(request.question))

    async def adelete_key(self, key: str) -> bool:
        """Delete the entry a served or stored generation names (`generation_info["semantic_cache"]["key"]`),
        only in this cache's namespace; True if there was one."""
        return await self.engine.delete_key(key, namespace=self.engine.config.namespace)

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

    def delete_key(self, key: str) -> bool:
        """Sync `adelete_key`."""
        return run_sync(self.adelete_key(key))

    def clear(self, **kwargs: Any) -> None:
        """Sync `aclear`."""
        run_sync(self.aclear(**kwargs))
