"""`SemanticCacheChatModel`: any chat model behind the semantic cache, streaming included."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import operator
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.utils import message_chunk_to_message
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, Generation
from langchain_core.runnables import Runnable, RunnableBinding
from langchain_core.runnables.config import RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.utils.utils import LC_ID_PREFIX
from pydantic import Field, field_validator

from langchain_semantic_cache._convert import (
    CacheRequest,
    dump_generations,
    mark_served,
    replay_chunks,
    request_for_messages,
    total_tokens,
)
from langchain_semantic_cache.cache import SemanticCache
from semantic_llm_cache import Computed, Resolution, run_sync
from semantic_llm_cache import SemanticCache as CoreSemanticCache


def _inner_config() -> RunnableConfig:
    """The inner model runs without the wrapper run's handlers (its own `callbacks` field still applies).

    The wrapper reports the answer; stream handlers (astream_events, LangGraph's message stream) must not get
    every token twice. An explicit None also keeps a stream from inheriting them from the context.
    """
    return {"callbacks": None}


SHARED_METADATA: dict[str, Any] = {"hit": False, "shared": True}
"""Marks an answer computed once for several identical concurrent calls, as seen by all but the first."""


class SemanticCacheChatModel(BaseChatModel):
    """A chat model that answers from the semantic cache and asks `model` only on a miss.

    Unlike `set_llm_cache`, it also serves `stream()`/`astream()` (a hit replays the cached message as chunks;
    a streamed miss stores the assembled message) and makes identical concurrent calls (`ainvoke`/`abatch`/
    `astream` tasks, `invoke`/`batch` threads) share one model call. Entries are shared with
    `set_llm_cache(cache)` for the same model, parameters and conversation.

        chat = SemanticCacheChatModel(model=ChatOpenAI(...), cache=SemanticCache())

    `cache` is a `langchain_semantic_cache.SemanticCache` or a core `semantic_llm_cache.SemanticCache`. Give
    the inner model `cache=False` if a global `set_llm_cache` is also configured, or it caches twice.
    """

    model: BaseChatModel
    """The chat model that answers misses."""
    cache: SemanticCache = Field(exclude=True)  # narrows BaseLanguageModel.cache
    """Where answers are looked up and stored."""

    @field_validator("cache", mode="before")
    @classmethod
    def _accept_core_cache(cls, value: Any) -> Any:
        return SemanticCache(value) if isinstance(value, CoreSemanticCache) else value

    @property
    def _llm_type(self) -> str:
        return f"semantic-cache-{self.model._llm_type}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model._llm_type, **self.model._identifying_params}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools as the inner model formats them; the formatted tools become part of the partition."""
        bound = self.model.bind_tools(tools, tool_choice=tool_choice, **kwargs)
        if not isinstance(bound, RunnableBinding) or bound.bound is not self.model:
            raise NotImplementedError(
                f"{type(self.model).__name__}.bind_tools returned {type(bound).__name__}, not a binding of the "
                "model's call arguments; bind the tools to the inner model before wrapping it"
            )
        return self.bind(**bound.kwargs)

    # -- invoke / batch ---------------------------------------------------------------------------------

    # LangChain's own cache lookup and update around _generate would cache every answer twice: this model is
    # the cache, so it bypasses them (and gives served messages this run's id, as LangChain does fresh ones).
    def _generate_with_cache(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result = self._generate(messages, stop=stop, run_manager=run_manager, **kwargs)
        return _with_run_ids(result, run_manager.run_id if run_manager else None)

    async def _agenerate_with_cache(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result = await self._agenerate(messages, stop=stop, run_manager=run_manager, **kwargs)
        return _with_run_ids(result, run_manager.run_id if run_manager else None)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        produced: list[ChatGeneration] = []

        def call_model() -> Computed:  # in this thread; identical concurrent sync calls (batch threads) wait for it
            produced[:] = _chat_generations(self.model.generate([messages], stop=stop, **kwargs).generations[0])
            return _computed(produced)

        request = self._request(messages, stop, kwargs)
        if request is None:
            call_model()
            return ChatResult(generations=produced)
        resolution = self.cache.engine.resolve_sync(request.question, call_model, request.scope)
        if resolution.computed:
            return ChatResult(generations=produced)
        served = self._resolved(resolution)
        if served is None:  # an unreadable entry: answer as on a miss, and replace it
            call_model()
            run_sync(self.cache.store_generations(request, produced))
            return ChatResult(generations=produced)
        return ChatResult(generations=served)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        produced: list[ChatGeneration] = []

        async def call_model() -> Computed:
            result = await self.model.agenerate([messages], stop=stop, **kwargs)
            produced[:] = _chat_generations(result.generations[0])
            return _computed(produced)

        request = self._request(messages, stop, kwargs)
        if request is None:
            await call_model()
            return ChatResult(generations=produced)
        resolution = await self.cache.engine.resolve(request.question, call_model, request.scope)
        if resolution.computed:
            return ChatResult(generations=produced)
        served = self._resolved(resolution)
        if served is None:  # an unreadable entry: answer as on a miss, and replace it
            await call_model()
            await self.cache.store_generations(request, produced)
            return ChatResult(generations=produced)
        return ChatResult(generations=served)

    # -- stream -----------------------------------------------------------------------------------------

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        served = None if request is None else self._sync_hit(request)
        if served is not None:
            for chunk in replay_chunks(served[0].message):
                yield ChatGenerationChunk(message=chunk)
            return
        started = time.perf_counter()
        chunks: list[AIMessageChunk] = []
        for chunk in self._model_stream(messages, stop, kwargs):
            chunks.append(chunk)
            yield ChatGenerationChunk(message=chunk)
        if request is not None and chunks:
            elapsed = time.perf_counter() - started
            run_sync(self.cache.store_generations(request, [_assembled(chunks)], elapsed))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        if request is None:
            async for chunk in self._model_astream(messages, stop, kwargs):
                yield ChatGenerationChunk(message=chunk)
            return
        # The model streams inside the engine's single-flight compute; its chunks reach this caller live
        # through `live`. A hit, or a call that joined another caller's computation, replays the answer.
        live: asyncio.Queue[AIMessageChunk] = asyncio.Queue()

        async def stream_model() -> Computed:
            chunks: list[AIMessageChunk] = []
            async for chunk in self._model_astream(messages, stop, kwargs):
                chunks.append(chunk)
                live.put_nowait(chunk)
            return _computed([_assembled(chunks)] if chunks else [])

        resolving = asyncio.ensure_future(self.cache.engine.resolve(request.question, stream_model, request.scope))
        next_chunk: asyncio.Future[AIMessageChunk] | None = None
        try:
            while True:
                if not live.empty():
                    yield ChatGenerationChunk(message=live.get_nowait())
                    continue
                if resolving.done():
                    break
                next_chunk = asyncio.ensure_future(live.get())
                await asyncio.wait({next_chunk, resolving}, return_when=asyncio.FIRST_COMPLETED)
                if next_chunk.done():
                    yield ChatGenerationChunk(message=next_chunk.result())
                else:
                    next_chunk.cancel()
            resolution = resolving.result()
        finally:
            if next_chunk is not None and not next_chunk.done():
                next_chunk.cancel()
            if not resolving.done():  # the consumer stopped early: stop the model, store nothing
                resolving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await resolving
        if resolution.computed:
            return
        served = self._resolved(resolution)
        if served is None:  # an unreadable entry: stream the model as on a miss, and replace the entry
            chunks: list[AIMessageChunk] = []
            async for chunk in self._model_astream(messages, stop, kwargs):
                chunks.append(chunk)
                yield ChatGenerationChunk(message=chunk)
            if chunks:
                await self.cache.store_generations(request, [_assembled(chunks)])
            return
        for chunk in replay_chunks(served[0].message):
            yield ChatGenerationChunk(message=chunk)

    # -- helpers ----------------------------------------------------------------------------------------

    def _model_stream(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> Iterator[AIMessageChunk]:
        for message in self.model.stream(messages, _inner_config(), stop=stop, **kwargs):
            yield from _as_chunks(message)

    async def _model_astream(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> AsyncIterator[AIMessageChunk]:
        async for message in self.model.astream(messages, _inner_config(), stop=stop, **kwargs):
            for chunk in _as_chunks(message):
                yield chunk

    def _request(
        self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> CacheRequest | None:
        # The inner model's llm_string, so entries are shared with set_llm_cache for the same model and call.
        llm_string = self.model._get_llm_string(stop=stop, **kwargs)
        return request_for_messages(messages, llm_string)

    def _sync_hit(self, request: CacheRequest) -> list[ChatGeneration] | None:
        hit = run_sync(self.cache.engine.lookup(request.question, request.scope))
        served = None if hit is None else self.cache.served(hit)
        return None if served is None else _chat_generations(served)

    def _resolved(self, resolution: Resolution) -> list[ChatGeneration] | None:
        """The generations of an answer this call did not compute: a cache hit, or another call's result."""
        if resolution.hit is not None:
            served = self.cache.served(resolution.hit)
        else:
            shared = self.cache.readable(resolution.response)
            served = None if shared is None else mark_served(shared, dict(SHARED_METADATA))
        return None if served is None else _chat_generations(served)


def _computed(generations: Sequence[ChatGeneration]) -> Computed:
    """A miss's answer for the engine: LangChain's JSON of it and the tokens it cost.

    An empty answer is shared with concurrent identical calls but not stored. An answer JSON cannot hold (a NaN
    in its metadata) the engine returns uncached, or raises with on_error="raise", as `store_generations` does.
    """
    return Computed(dump_generations(generations), tokens=total_tokens(generations), store=bool(generations))


def _chat_generations(generations: Sequence[Generation]) -> list[ChatGeneration]:
    """Chat generations as they are (a plain generation, e.g. from old cache data, becomes an AIMessage)."""
    return [
        generation
        if isinstance(generation, ChatGeneration)
        else ChatGeneration(message=AIMessage(content=generation.text), generation_info=generation.generation_info)
        for generation in generations
    ]


def _as_chunks(message: BaseMessage) -> list[AIMessageChunk]:
    """A model that cannot stream yields its whole message once (not a chunk): split it as a replay would."""
    return [message] if isinstance(message, AIMessageChunk) else replay_chunks(message)


def _assembled(chunks: Sequence[AIMessageChunk]) -> ChatGeneration:
    """The message a stream added up to."""
    merged: AIMessageChunk = functools.reduce(operator.add, chunks)
    return ChatGeneration(message=message_chunk_to_message(merged))


def _with_run_ids(result: ChatResult, run_id: Any) -> ChatResult:
    """Give served messages (stored without ids) this run's ids, as LangChain names a fresh answer."""
    if run_id is not None:
        for index, generation in enumerate(result.generations):
            if generation.message.id is None:
                generation.message.id = f"{LC_ID_PREFIX}-{run_id}-{index}"
    return result
