"""`SemanticCacheChatModel`: any chat model behind the semantic cache, streaming included."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.caches import BaseCache
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableBinding
from langchain_core.runnables.config import RunnableConfig
from langchain_core.tools import BaseTool
from pydantic import Field, field_validator, model_validator

from langchain_semantic_cache._convert import (
    CacheRequest,
    as_chunks,
    assemble_stream,
    chat_generations,
    chunk_with_cache_info,
    decode_chat_answer,
    encode_chat_answer,
    info_chunk,
    replay_stream,
    request_for_messages,
    with_cache_info,
)
from langchain_semantic_cache._options import OPTIONS_KEY, call_options, temperature_of_call
from langchain_semantic_cache.cache import SemanticCache
from semantic_llm_cache import Computed, Resolution
from semantic_llm_cache import SemanticCache as CoreSemanticCache


def _inner_config() -> RunnableConfig:
    """The inner model runs without the wrapper run's handlers (its own `callbacks` field still applies).

    The wrapper reports the answer; stream handlers (astream_events, LangGraph's message stream) must not get
    every token twice. An empty list, not None: `ensure_config` ignores None and would take the handlers of the
    surrounding run (a chain's, a LangGraph node's) from the context.
    """
    return {"callbacks": []}


class SemanticCacheChatModel(BaseChatModel):
    """A chat model that answers from the semantic cache and asks `model` only on a miss.

    Unlike `set_llm_cache`, it also serves `stream()`/`astream()` (a hit replays the cached message as chunks;
    a streamed miss stores the assembled message) and makes identical concurrent calls (tasks, threads, sync
    and async alike) share one model call. Entries are shared with `set_llm_cache(semantic_cache)` for the same
    model, parameters and conversation.

        chat = SemanticCacheChatModel(model=ChatOpenAI(...), semantic_cache=SemanticCache())

    `semantic_cache` is a `langchain_semantic_cache.SemanticCache` or a core `semantic_llm_cache.SemanticCache`.
    This model is its own cache: LangChain's cache path never runs for it (`cache` is False) nor for the model
    it wraps (`model` is kept as given when its `cache` is False, else as a copy with `cache=False`), so a
    global `set_llm_cache` never stores an answer a second time.

    Per call, `cache_options` (a call keyword, or `.bind(cache_options=...)`) takes the engine's per-call options
    and never reaches the model: `chat.invoke(messages, cache_options={"threshold": 0.97, "ttl": 600})`, or
    `{"bypass": True}`, `{"refresh": True}`, `{"where": {"doc_version": 3}}`. The engine's temperature policy
    reads the call's (or the model's) `temperature`.
    """

    model: BaseChatModel
    """The chat model that answers misses (with LangChain's own cache turned off)."""
    semantic_cache: SemanticCache = Field(exclude=True)
    """Where answers are looked up and stored."""
    cache: BaseCache | bool | None = Field(default=False, exclude=True)
    """LangChain's own cache: always False, this model caches itself (see `semantic_cache`)."""

    @model_validator(mode="before")
    @classmethod
    def _accept_the_renamed_cache_keyword(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("cache"), (SemanticCache, CoreSemanticCache)):
            return data
        if "semantic_cache" in data:
            raise ValueError("pass the semantic cache once, as semantic_cache= (cache= is its deprecated name)")
        warnings.warn(
            "SemanticCacheChatModel(cache=...) is deprecated: pass semantic_cache=... (`cache` is LangChain's own "
            "cache field, which this model keeps False)",
            DeprecationWarning,
            stacklevel=4,  # this validator, pydantic's __init__, Serializable.__init__, the caller
        )
        return {**data, "semantic_cache": data["cache"], "cache": False}

    @field_validator("semantic_cache", mode="before")
    @classmethod
    def _accept_a_core_cache(cls, value: Any) -> Any:
        return SemanticCache(value) if isinstance(value, CoreSemanticCache) else value

    @field_validator("cache")
    @classmethod
    def _no_langchain_cache(cls, value: BaseCache | bool | None) -> BaseCache | bool | None:
        if value is not False:
            raise ValueError(
                "SemanticCacheChatModel caches its answers itself: LangChain's `cache` must stay False (another "
                "cache would store every answer a second time); pass the semantic cache as semantic_cache="
            )
        return value

    @field_validator("model")
    @classmethod
    def _without_its_own_cache(cls, model: BaseChatModel) -> BaseChatModel:
        # The model's own LangChain cache (cache=None means the global one) would look up and store every
        # answer again, under the same key; a shallow copy shares the model's clients and leaves the caller's
        # object as it was.
        return model if model.cache is False else model.model_copy(update={"cache": False})

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

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        options = self._options(kwargs)
        request = self._request(messages, stop, kwargs)
        if request is None:
            return ChatResult(generations=self._call_model(messages, stop, kwargs))
        answer: list[ChatGeneration] = []

        def call_model() -> Computed:
            answer[:] = self._call_model(messages, stop, kwargs)
            return encode_chat_answer(answer)

        resolution = self.semantic_cache.engine.resolve_sync(
            request.question, call_model, request.scope, decode=decode_chat_answer, **options
        )
        return _result(resolution, answer, request.question)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        options = self._options(kwargs)
        request = self._request(messages, stop, kwargs)
        if request is None:
            return ChatResult(generations=await self._acall_model(messages, stop, kwargs))
        answer: list[ChatGeneration] = []

        async def call_model() -> Computed:
            answer[:] = await self._acall_model(messages, stop, kwargs)
            return encode_chat_answer(answer)

        resolution = await self.semantic_cache.engine.resolve(
            request.question, call_model, request.scope, decode=decode_chat_answer, **options
        )
        return _result(resolution, answer, request.question)

    # -- stream -----------------------------------------------------------------------------------------

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        options = self._options(kwargs)
        request = self._request(messages, stop, kwargs)
        if request is None:
            for chunk in self._model_stream(messages, stop, kwargs):
                yield ChatGenerationChunk(message=chunk)
            return
        stream = self.semantic_cache.engine.resolve_stream_sync(
            request.question,
            lambda: self._model_stream(messages, stop, kwargs),
            request.scope,
            assemble=assemble_stream,
            replay=replay_stream,
            **options,
        )
        info = stream.resolution.info(request.question)
        ended = False
        try:
            for chunk in stream:
                if chunk.chunk_position == "last":
                    chunk, ended = chunk_with_cache_info(chunk, info), True
                yield ChatGenerationChunk(message=chunk)
        finally:
            stream.close()
        if not ended:
            yield ChatGenerationChunk(message=info_chunk(info))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        options = self._options(kwargs)
        request = self._request(messages, stop, kwargs)
        if request is None:
            async for chunk in self._model_astream(messages, stop, kwargs):
                yield ChatGenerationChunk(message=chunk)
            return
        stream = await self.semantic_cache.engine.resolve_stream(
            request.question,
            lambda: self._model_astream(messages, stop, kwargs),
            request.scope,
            assemble=assemble_stream,
            replay=replay_stream,
            **options,
        )
        info = stream.resolution.info(request.question)
        ended = False
        try:
            async for chunk in stream:
                if chunk.chunk_position == "last":
                    chunk, ended = chunk_with_cache_info(chunk, info), True
                yield ChatGenerationChunk(message=chunk)
        finally:
            await stream.aclose()
        if not ended:
            yield ChatGenerationChunk(message=info_chunk(info))

    # -- the inner model --------------------------------------------------------------------------------

    def _call_model(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> list[ChatGeneration]:
        return chat_generations(self.model.generate([messages], stop=stop, **kwargs).generations[0])

    async def _acall_model(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> list[ChatGeneration]:
        return chat_generations((await self.model.agenerate([messages], stop=stop, **kwargs)).generations[0])

    def _model_stream(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> Iterator[AIMessageChunk]:
        for message in self.model.stream(messages, _inner_config(), stop=stop, **kwargs):
            yield from as_chunks(message)

    async def _model_astream(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> AsyncIterator[AIMessageChunk]:
        async for message in self.model.astream(messages, _inner_config(), stop=stop, **kwargs):
            for chunk in as_chunks(message):
                yield chunk

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Take the call's `cache_options` out of `kwargs` (the model never sees them) as `resolve` options."""
        raw = kwargs.pop(OPTIONS_KEY, None)
        return call_options(self.semantic_cache.engine, raw, temperature_of_call(self.model, kwargs))

    def _request(
        self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> CacheRequest | None:
        # The inner model's llm_string, so entries are shared with set_llm_cache for the same model and call.
        llm_string = self.model._get_llm_string(stop=stop, **kwargs)
        return request_for_messages(messages, llm_string)


def _result(resolution: Resolution, answer: list[ChatGeneration], question: str) -> ChatResult:
    """The call's generations (its own `answer` when it computed them), marked with how they were served."""
    generations = answer if resolution.computed else resolution.response
    return ChatResult(generations=with_cache_info(generations, resolution.info(question)))
