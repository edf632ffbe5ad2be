"""SemanticCacheLLM: a LlamaIndex LLM that answers from a semantic cache and asks the wrapped LLM on a miss."""

from __future__ import annotations

import os
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Sequence,
)
from contextvars import ContextVar
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.generic_utils import prompt_to_messages
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import Field, SerializeAsAny
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]  # no __all__ there
from llama_index.core.llms import LLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.prompts import BasePromptTemplate, PromptTemplate
from llama_index.core.types import Model, TokenAsyncGen, TokenGen
from llama_index.llms.semantic_cache._codecs import CHAT, COMPLETION, COMPLETION_VIA_CHAT, Codec, R, with_info
from llama_index.llms.semantic_cache._keys import Bypass, Request, TemplateKey, chat_request, completion_request
from llama_index.llms.semantic_cache.events import bypass_info, cache_event

from semantic_llm_cache import Computed, ConfigurationError, InvalidInputError, SemanticCache
from semantic_llm_cache.call_options import resolve_options
from semantic_llm_cache.temperature import as_temperature

if TYPE_CHECKING:
    from llama_index.core.chat_engine.types import AgentChatResponse
    from llama_index.core.program.utils import FlexibleModel
    from llama_index.core.tools.types import BaseTool

dispatcher = get_dispatcher(__name__)

# Set by predict/apredict/stream/astream around the one LLM call they make for a prompt template.
_TEMPLATE_KEY: ContextVar[TemplateKey | None] = ContextVar("semantic_cache_template_key", default=None)

# The wrapper copies these from the wrapped LLM: predict() formats prompts with them before calling chat/complete.
_FORMATTING_FIELDS = (
    "system_prompt",
    "messages_to_prompt",
    "completion_to_prompt",
    "output_parser",
    "pydantic_program_mode",
    "query_wrapper_prompt",
)


OPTIONS_KEY = "cache_options"
"""The call keyword holding per-call cache options (`threshold`, `bypass`, `refresh`, `ttl`, `where`)."""


class SemanticCacheLLM(LLM):
    """A LlamaIndex LLM that serves the wrapped LLM's earlier answers to prompts that mean the same.

    Use it wherever an LLM goes: `Settings.llm = SemanticCacheLLM(llm=OpenAI(...))`, `index.as_query_engine(llm=...)`.
    All eight call methods are cached (streams replay a cached answer as deltas; a streamed miss is stored when it
    completes), and concurrent identical calls, streams included, call the wrapped LLM once. On a chat model the
    completion methods share entries with the chat methods (`complete(p)` is `chat([user: p])` there); on a
    completion model the two families keep apart. Partitions: the wrapped LLM's class, model and settings and the
    call's arguments, plus for chats every message but the last user message, must match exactly; only the
    question is embedded. A prompt template with a `question_variable` ("query_str", as in query engines) is keyed
    by that variable alone, the rest of the formatted prompt (retrieved context included) exactly. Responses say
    how they were answered in `additional_kwargs["semantic_cache"]` (the engine's `Resolution.info()`), and each
    call dispatches a `SemanticCacheEvent` with the same fields.
    Anything else (metadata, tool calling, attributes such as `model`) is the wrapped LLM's.

    The engine (`SemanticCache.resolve*`) does the looking up, single-flight, storing and error handling; this
    class only translates LlamaIndex calls and responses to and from it.

    Per call, the keyword `cache_options` takes the engine's per-call options and never reaches the wrapped LLM
    nor the partition: `llm.complete(prompt, cache_options={"threshold": 0.97})`, `{"bypass": True}`,
    `{"refresh": True}`, `{"ttl": 600}`, `{"where": {"doc_version": 3}}`. The cache's temperature policy reads
    the call's (or the wrapped LLM's) `temperature`. `delete_key(key)` deletes the entry a response names.
    """

    llm: SerializeAsAny[LLM] = Field(description="The LLM whose answers are cached.")
    cache: SemanticCache = Field(exclude=True, description="The semantic cache holding the answers.")
    namespace: str | None = Field(default=None, description="Tenant of the entries (default: the cache's).")
    ttl: float | None = Field(default=None, description="Seconds an answer stays valid (default: the cache's).")
    question_variable: str | None = Field(
        default="query_str",
        description="Template variable holding the question in predict() calls; None keys the whole prompt.",
    )

    def __init__(
        self,
        llm: LLM,
        cache: SemanticCache | None = None,
        *,
        embed_model: BaseEmbedding | None = None,
        tuned: str | os.PathLike[str] | None = None,
        namespace: str | None = None,
        ttl: float | None = None,
        question_variable: str | None = "query_str",
        **kwargs: Any,
    ) -> None:
        """Wrap `llm`. `cache` defaults to `SemanticCache(embedder=embed_model)` (the bundled model if None), or
        to `SemanticCache.from_tuned(tuned)` with a folder written by `semantic-llm-cache tune`."""
        if not isinstance(llm, LLM):
            raise ConfigurationError(f"llm must be a LlamaIndex LLM, got {type(llm).__name__}")
        if cache is not None and embed_model is not None:
            raise ConfigurationError("pass either cache or embed_model (the embedder of a new cache), not both")
        if tuned is not None and (cache is not None or embed_model is not None):
            raise ConfigurationError("pass tuned (a tuned folder for a new cache) without cache or embed_model")
        if namespace is not None and (not isinstance(namespace, str) or not namespace):
            raise ConfigurationError(f"namespace must be a non-empty string, got {namespace!r}")
        for name in _FORMATTING_FIELDS:
            kwargs.setdefault(name, getattr(llm, name))
        fields: dict[str, Any] = {
            "llm": llm,
            "cache": cache if cache is not None else SemanticCache(embedder=embed_model, tuned=tuned),
            "namespace": namespace,
            "ttl": ttl,
            "question_variable": question_variable,
        }
        super().__init__(**fields, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "SemanticCacheLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return self.llm.metadata

    def to_payload(self) -> dict[str, Any]:
        return {**self.llm.to_payload(), "class_name": self.class_name(), "wrapped_class_name": self.llm.class_name()}

    if not TYPE_CHECKING:  # hidden from type checkers, as pydantic hides its own __getattr__

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                wrapped = self.__dict__.get("llm")
                if name.startswith("_") or wrapped is None:
                    raise
                return getattr(wrapped, name)

    # -- the eight call methods -------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        options = self._options(kwargs)
        call = partial(self.llm.complete, prompt, formatted=formatted, **kwargs)
        return self._serve("complete", *self._completion_request(prompt, formatted, kwargs), call, options)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        options = self._options(kwargs)
        call = partial(self.llm.acomplete, prompt, formatted=formatted, **kwargs)
        return await self._aserve("acomplete", *self._completion_request(prompt, formatted, kwargs), call, options)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        options = self._options(kwargs)
        call = partial(self.llm.stream_complete, prompt, formatted=formatted, **kwargs)
        return self._stream("stream_complete", *self._completion_request(prompt, formatted, kwargs), call, options)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        options = self._options(kwargs)
        call = partial(self.llm.astream_complete, prompt, formatted=formatted, **kwargs)
        request, codec = self._completion_request(prompt, formatted, kwargs)
        return await self._astream("astream_complete", request, codec, call, options)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        options = self._options(kwargs)
        call = partial(self.llm.chat, messages, **kwargs)
        return self._serve("chat", self._chat_request(messages, kwargs), CHAT, call, options)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        options = self._options(kwargs)
        call = partial(self.llm.achat, messages, **kwargs)
        return await self._aserve("achat", self._chat_request(messages, kwargs), CHAT, call, options)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        options = self._options(kwargs)
        call = partial(self.llm.stream_chat, messages, **kwargs)
        return self._stream("stream_chat", self._chat_request(messages, kwargs), CHAT, call, options)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        options = self._options(kwargs)
        call = partial(self.llm.astream_chat, messages, **kwargs)
        return await self._astream("astream_chat", self._chat_request(messages, kwargs), CHAT, call, options)

    # -- prompt templates: key by the question, match the rest exactly ----------------------------------

    def predict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        token = _TEMPLATE_KEY.set(self._template_key(prompt, prompt_args))
        try:
            return super().predict(prompt, **prompt_args)
        finally:
            _TEMPLATE_KEY.reset(token)

    async def apredict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        token = _TEMPLATE_KEY.set(self._template_key(prompt, prompt_args))
        try:
            return await super().apredict(prompt, **prompt_args)
        finally:
            _TEMPLATE_KEY.reset(token)

    def stream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> TokenGen:
        token = _TEMPLATE_KEY.set(self._template_key(prompt, prompt_args))
        try:  # the base class opens the stream (our stream_chat/stream_complete read the key) before returning
            return super().stream(prompt, **prompt_args)
        finally:
            _TEMPLATE_KEY.reset(token)

    async def astream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> TokenAsyncGen:
        token = _TEMPLATE_KEY.set(self._template_key(prompt, prompt_args))
        try:
            return await super().astream(prompt, **prompt_args)
        finally:
            _TEMPLATE_KEY.reset(token)

    # -- tool calling and structured output: a function-calling LLM does them itself (uncached) ---------

    def _calls_functions(self) -> bool:
        # Those code paths require a FunctionCallingLLM instance, and tool-call answers are not plain JSON.
        return isinstance(self.llm, FunctionCallingLLM)

    def structured_predict(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        if self._calls_functions():
            return cast(Model, self.llm.structured_predict(output_cls, prompt, llm_kwargs, **prompt_args))
        return cast(Model, super().structured_predict(output_cls, prompt, llm_kwargs, **prompt_args))

    async def astructured_predict(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Model:
        if self._calls_functions():
            return cast(Model, await self.llm.astructured_predict(output_cls, prompt, llm_kwargs, **prompt_args))
        return cast(Model, await super().astructured_predict(output_cls, prompt, llm_kwargs, **prompt_args))

    def stream_structured_predict(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Generator[Model | FlexibleModel, None, None]:
        if self._calls_functions():
            return self.llm.stream_structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        return super().stream_structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)

    async def astream_structured_predict(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> AsyncGenerator[Model | FlexibleModel, None]:
        if self._calls_functions():
            return await self.llm.astream_structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        return await super().astream_structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)

    def predict_and_call(
        self,
        tools: list[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        **kwargs: Any,
    ) -> AgentChatResponse:
        if self._calls_functions():
            return self.llm.predict_and_call(tools, user_msg, chat_history, verbose, **kwargs)
        return super().predict_and_call(tools, user_msg, chat_history, verbose, **kwargs)

    async def apredict_and_call(
        self,
        tools: list[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        **kwargs: Any,
    ) -> AgentChatResponse:
        if self._calls_functions():
            return await self.llm.apredict_and_call(tools, user_msg, chat_history, verbose, **kwargs)
        return await super().apredict_and_call(tools, user_msg, chat_history, verbose, **kwargs)

    # -- keying -----------------------------------------------------------------------------------------

    def _template_key(self, prompt: BasePromptTemplate, prompt_args: dict[str, Any]) -> TemplateKey | None:
        """The key for the one call predict() makes with this template, when the template holds the question."""
        name = self.question_variable
        if name is None:
            return None
        question = {**prompt.kwargs, **prompt_args}.get(name)
        if not isinstance(question, str) or not question.strip():
            return None
        masked_args = {**prompt_args, name: f"\u27e6{name}\u27e7"}
        try:
            if self.metadata.is_chat_model:
                messages = self._get_messages(prompt, **prompt_args)
                masked = self._get_messages(prompt, **masked_args)
                if masked == messages:
                    return None
                context = {"messages": [message.model_dump(mode="json") for message in masked]}
                return TemplateKey(id(self), question, context, messages=messages)
            formatted = self._get_prompt(prompt, **prompt_args)
            masked_prompt = self._get_prompt(prompt, **masked_args)
        except Exception:  # the template cannot be split around the question: key the whole prompt instead
            return None
        if masked_prompt == formatted:
            return None
        return TemplateKey(id(self), question, {"prompt": masked_prompt}, prompt=formatted)

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Take the call's `cache_options` out of `kwargs` (the LLM never sees them) as `resolve` options."""
        raw = kwargs.pop(OPTIONS_KEY, None)
        temperature = kwargs["temperature"] if "temperature" in kwargs else getattr(self.llm, "temperature", None)
        return resolve_options(raw, self.cache.temperature_options(as_temperature(temperature)))

    async def astore_completion(self, prompt: str, text: str) -> str | None:
        """Store `text` as this LLM's answer to `complete(prompt)` (on a chat model also `chat([user: prompt])`),
        as a miss would store it (for warming a cache); returns the entry's key (None if it was not stored).
        Raises InvalidInputError, with the reason, for a prompt such calls would not cache."""
        request, codec = self._completion_request(prompt, False, {})
        if isinstance(request, Bypass):
            raise InvalidInputError(f"LlamaIndex would not cache {prompt!r}: {request.reason}")
        answer = codec.computed(CompletionResponse(text=text))
        return await self.cache.store_computed(request.prompt, answer, request.scope, ttl=self.ttl)

    def delete_key(self, key: str) -> bool:
        """Delete the entry a response names (`additional_kwargs["semantic_cache"]["key"]`) in this wrapper's
        namespace; True if there was one."""
        return self.cache.delete_key_sync(key, namespace=self.namespace or self.cache.config.namespace)

    async def adelete_key(self, key: str) -> bool:
        """Async `delete_key`."""
        return await self.cache.delete_key(key, namespace=self.namespace or self.cache.config.namespace)

    def _completion_request(
        self, prompt: str, formatted: bool, kwargs: dict[str, Any]
    ) -> tuple[Request | Bypass, Codec[CompletionResponse]]:
        """The key of a completion and how its answer is stored.

        A chat model's LlamaIndex `complete(prompt)` is `chat([user: prompt])`: the model sees the same messages,
        so it is keyed (and stored) as that chat. A `formatted=True` prompt is keyed as given, apart.
        """
        key = _TEMPLATE_KEY.get()
        template = key if key is not None and key.owner == id(self) and formatted and key.prompt == prompt else None
        if template is None and not formatted and self.llm.metadata.is_chat_model:
            as_chat = chat_request(self.llm, prompt_to_messages(prompt), kwargs, self.namespace)
            return self._checked(as_chat), COMPLETION_VIA_CHAT
        request = completion_request(self.llm, prompt, formatted, kwargs, self.namespace, template)
        return self._checked(request), COMPLETION

    def _chat_request(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> Request | Bypass:
        key = _TEMPLATE_KEY.get()
        template = key if key is not None and key.owner == id(self) and key.messages == list(messages) else None
        return self._checked(chat_request(self.llm, messages, kwargs, self.namespace, template))

    def _checked(self, request: Request | Bypass) -> Request | Bypass:
        """A call whose arguments cannot be put in a Scope (not JSON) is not cached."""
        if isinstance(request, Request):
            try:
                self.cache.partition_for(request.scope)
            except InvalidInputError:
                return Bypass("the call's arguments or messages are not JSON-serialisable")
        return request

    # -- serving: the engine resolves; this only translates -------------------------------------------

    def _serve(
        self, method: str, request: Request | Bypass, codec: Codec[R], call: Callable[[], R], options: dict[str, Any]
    ) -> R:
        if isinstance(request, Bypass):
            return _delivered(method, call(), bypass_info(request.reason))
        answered: list[R] = []

        def compute() -> Computed:  # runs in this thread (spans, template keys), once for concurrent callers
            answered.append(call())
            return codec.computed(answered[0])

        resolution = self.cache.resolve_sync(
            request.prompt, compute, request.scope, decode=codec.decode, **{"ttl": self.ttl, **options}
        )
        response = answered[0] if resolution.computed else resolution.response
        return _delivered(method, response, resolution.info(request.prompt))

    async def _aserve(
        self,
        method: str,
        request: Request | Bypass,
        codec: Codec[R],
        call: Callable[[], Awaitable[R]],
        options: dict[str, Any],
    ) -> R:
        if isinstance(request, Bypass):
            return _delivered(method, await call(), bypass_info(request.reason))
        answered: list[R] = []

        async def compute() -> Computed:  # awaited in this task (spans, template keys), once for concurrent callers
            answered.append(await call())
            return codec.computed(answered[0])

        resolution = await self.cache.resolve(
            request.prompt, compute, request.scope, decode=codec.decode, **{"ttl": self.ttl, **options}
        )
        response = answered[0] if resolution.computed else resolution.response
        return _delivered(method, response, resolution.info(request.prompt))

    def _stream(
        self,
        method: str,
        request: Request | Bypass,
        codec: Codec[R],
        open_stream: Callable[[], Iterable[R]],
        options: dict[str, Any],
    ) -> Generator[R, None, None]:
        if isinstance(request, Bypass):
            info = bypass_info(request.reason)
            dispatcher.event(cache_event(method, info))
            return _tagged(open_stream(), info)
        # The engine opens the wrapped LLM's stream in this call's context (though when it is first read), so the
        # wrapped LLM's span and events nest under this call's span.
        stream = self.cache.resolve_stream_sync(
            request.prompt,
            open_stream,
            request.scope,
            assemble=codec.assemble,
            replay=codec.replay,
            **{"ttl": self.ttl, **options},
        )
        info = stream.resolution.info(request.prompt)
        dispatcher.event(cache_event(method, info))
        return _tagged(stream, info)

    async def _astream(
        self,
        method: str,
        request: Request | Bypass,
        codec: Codec[R],
        open_stream: Callable[[], Awaitable[AsyncIterator[R]]],
        options: dict[str, Any],
    ) -> AsyncGenerator[R, None]:
        if isinstance(request, Bypass):
            info = bypass_info(request.reason)
            dispatcher.event(cache_event(method, info))
            return _atagged(await open_stream(), info)
        stream = await self.cache.resolve_stream(  # opened in this call's context, as in _stream
            request.prompt,
            open_stream,
            request.scope,
            assemble=codec.assemble,
            replay=codec.replay,
            **{"ttl": self.ttl, **options},
        )
        info = stream.resolution.info(request.prompt)
        dispatcher.event(cache_event(method, info))
        return _atagged(stream, info)


def _delivered(method: str, response: R, info: dict[str, Any]) -> R:
    dispatcher.event(cache_event(method, info))  # here, in the caller's context: the event carries its span
    return with_info(response, info)


def _tagged(chunks: Iterable[R], info: dict[str, Any]) -> Generator[R, None, None]:
    try:
        for chunk in chunks:
            yield with_info(chunk, info)
    finally:  # a reader that stops early stops the stream (the engine then stores nothing)
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


async def _atagged(chunks: AsyncIterable[R], info: dict[str, Any]) -> AsyncGenerator[R, None]:
    try:
        async for chunk in chunks:
            yield with_info(chunk, info)
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
