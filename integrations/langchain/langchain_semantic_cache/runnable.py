"""`SemanticCacheRunnable`: a chain (RAG, or any runnable taking a dict) cached on one input, its question."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, cast

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
    adispatch_custom_event,
    dispatch_custom_event,
)
from langchain_core.messages import AIMessageChunk
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import patch_config
from langchain_core.runnables.utils import ConfigurableFieldSpec, Output
from langchain_core.utils.pydantic import TypeBaseModel
from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from langchain_semantic_cache._convert import (
    CACHE_METADATA_KEY,
    CacheRequest,
    UncacheableInput,
    assemble_output,
    canonical_inputs,
    chunk_with_cache_info,
    decode_output,
    encode_output,
    info_chunk,
    output_with_cache_info,
    replay_output,
    runnable_serialization,
)
from langchain_semantic_cache._options import OPTIONS_KEY, call_options
from langchain_semantic_cache.cache import SemanticCache
from semantic_llm_cache import Computed, InvalidInputError, Resolution, Scope
from semantic_llm_cache import SemanticCache as CoreSemanticCache

logger = logging.getLogger("langchain_semantic_cache")

RUNNABLE_MODEL = "langchain:runnable"
"""The `Scope.model` of a chain's entries (the chain itself is in `Scope.params`): never a chat model's."""


class SemanticCacheRunnable(RunnableSerializable[dict[str, Any], Output]):
    """Any runnable whose input is a dict, answered from the semantic cache: only `input[question_key]` is
    embedded and compared by meaning; every other input (the retrieved context, chat history, options) must
    match exactly, and so must the chain itself.

        chain = prompt | chat_model | StrOutputParser()
        cached = SemanticCacheRunnable(chain, question_key="question")
        cached.invoke({"context": docs, "question": "How many vacation days do I get?"})

    The partition (what must match exactly) is: the wrapped chain's identity, the other inputs in an exact JSON
    form (a Document's page_content and metadata; a message's role, content, name, tool calls and results, not
    ids or response/usage metadata), the values of the chain's configurable fields given in the config
    (`config["configurable"]`), any call keyword arguments, and `namespace` (the tenant).

    Per call, `config={"configurable": {"cache_options": {...}}}` takes the engine's per-call options
    (`threshold`, `bypass`, `refresh`, `ttl`, `where`), e.g. `{"refresh": True}` after the documents changed.

    The chain's identity is its LangChain serialization (`dumpd`) when every part of it is serializable (a
    prompt, a chat model of a provider package, an output parser), plus `name` when given. A chain with parts
    LangChain cannot serialize (a `RunnableLambda`, a fake model) needs `name=`, a name unique to what the chain
    does (change it when the chain changes); without one its entries are private to this object, with a warning.

    A call whose question is not a non-empty string, or whose other inputs have no exact JSON form (an object,
    NaN), runs the chain without the cache. On a miss the chain runs with the call's config (callbacks, tags,
    metadata) as a child run of this one. How each answer was served (`Resolution.info()`: hit, kind,
    similarity...) is sent as the custom callback event "semantic_cache" of this run, for every output type;
    a message output also carries it in `response_metadata["semantic_cache"]` (on a stream, its last chunk).

    `semantic_cache` is a `langchain_semantic_cache.SemanticCache`, a core `semantic_llm_cache.SemanticCache`,
    or None for a new in-memory one with the bundled model.
    """

    bound: Runnable[dict[str, Any], Output]
    """The chain that answers misses."""
    question_key: str = "question"
    """The input whose text is embedded and compared by meaning."""
    semantic_cache: SemanticCache = Field(exclude=True)
    """Where answers are looked up and stored."""
    namespace: str | None = None
    """The tenant of this chain's entries (None: the cache's namespace)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    _object_identity: str = PrivateAttr(default_factory=lambda: uuid.uuid4().hex)
    _warned: set[str] = PrivateAttr(default_factory=set)

    def __init__(
        self,
        bound: Runnable[dict[str, Any], Output],
        *,
        question_key: str = "question",
        semantic_cache: SemanticCache | CoreSemanticCache | None = None,
        namespace: str | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        fields: dict[str, Any] = {
            "bound": bound,
            "question_key": question_key,
            "semantic_cache": SemanticCache() if semantic_cache is None else semantic_cache,
            "namespace": namespace,
            "name": name,
        }
        super().__init__(**fields, **kwargs)
        if self.name is None and not runnable_serialization(self.bound)[1]:
            logger.warning(
                "SemanticCacheRunnable: the chain %s has parts LangChain cannot serialize and no name, so its "
                "entries are private to this object (not shared with other processes or after a restart); pass "
                "name='<what this chain does>' to share them",
                self.bound.get_name(),
            )

    @field_validator("semantic_cache", mode="before")
    @classmethod
    def _accept_a_core_cache(cls, value: Any) -> Any:
        return SemanticCache(value) if isinstance(value, CoreSemanticCache) else value

    @field_validator("question_key")
    @classmethod
    def _a_question_key(cls, value: str) -> str:
        if not value:
            raise ValueError("question_key must name the input that holds the question")
        return value

    @field_validator("namespace")
    @classmethod
    def _a_namespace(cls, value: str | None) -> str | None:
        Scope(namespace=value)  # the engine's own check: None or a non-empty string
        return value

    # -- what LangChain asks of a wrapper -------------------------------------------------------------------

    @property
    def InputType(self) -> type[dict[str, Any]]:
        return self.bound.InputType

    @property
    def OutputType(self) -> type[Output]:
        return self.bound.OutputType

    def get_input_schema(self, config: RunnableConfig | None = None) -> TypeBaseModel:
        return self.bound.get_input_schema(config)

    def get_output_schema(self, config: RunnableConfig | None = None) -> TypeBaseModel:
        return self.bound.get_output_schema(config)

    @property
    def config_specs(self) -> list[ConfigurableFieldSpec]:
        return self.bound.config_specs

    # -- invoke / ainvoke (batch and abatch: LangChain's, over these) ----------------------------------------

    def invoke(self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any) -> Output:
        return self._call_with_config(self._invoke, input, config, **kwargs)

    async def ainvoke(self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any) -> Output:
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    def _invoke(
        self, input: dict[str, Any], run_manager: CallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> Output:
        child = patch_config(config, callbacks=run_manager.get_child())
        request = self._request(input, child, kwargs)
        if request is None:
            return self.bound.invoke(input, child, **kwargs)
        answer: list[Output] = []

        def run_chain() -> Computed:
            answer.append(self.bound.invoke(input, child, **kwargs))
            return encode_output(answer[0])

        resolution = self.semantic_cache.engine.resolve_sync(
            request.question, run_chain, request.scope, decode=decode_output, **self._options(config)
        )
        info = resolution.info(request.question)
        dispatch_custom_event(CACHE_METADATA_KEY, info, config=child)
        return _served(resolution, answer, info)

    async def _ainvoke(
        self,
        input: dict[str, Any],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> Output:
        child = patch_config(config, callbacks=run_manager.get_child())
        request = self._request(input, child, kwargs)
        if request is None:
            return await self.bound.ainvoke(input, child, **kwargs)
        answer: list[Output] = []

        async def run_chain() -> Computed:
            answer.append(await self.bound.ainvoke(input, child, **kwargs))
            return encode_output(answer[0])

        resolution = await self.semantic_cache.engine.resolve(
            request.question, run_chain, request.scope, decode=decode_output, **self._options(config)
        )
        info = resolution.info(request.question)
        await adispatch_custom_event(CACHE_METADATA_KEY, info, config=child)
        return _served(resolution, answer, info)

    # -- stream / astream -----------------------------------------------------------------------------------

    def stream(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any | None
    ) -> Iterator[Output]:
        yield from self._transform_stream_with_config(iter([input]), self._stream, config, **kwargs)

    async def astream(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any | None
    ) -> AsyncIterator[Output]:
        async def only(value: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
            yield value

        async for chunk in self._atransform_stream_with_config(only(input), self._astream, config, **kwargs):
            yield chunk

    def _stream(
        self,
        inputs: Iterator[dict[str, Any]],
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> Iterator[Output]:
        input = next(inputs)
        request = self._request(input, config, kwargs)
        if request is None:
            yield from self.bound.stream(input, config, **kwargs)
            return
        stream = self.semantic_cache.engine.resolve_stream_sync(
            request.question,
            lambda: self.bound.stream(input, config, **kwargs),
            request.scope,
            assemble=assemble_output,
            replay=replay_output,
            **self._options(config),
        )
        info = stream.resolution.info(request.question)
        dispatch_custom_event(CACHE_METADATA_KEY, info, config=config)
        messages = ended = False
        try:
            for chunk in stream:
                if isinstance(chunk, AIMessageChunk):
                    messages = True
                    if chunk.chunk_position == "last":
                        chunk, ended = chunk_with_cache_info(chunk, info), True
                yield cast("Output", chunk)
        finally:
            stream.close()
        if messages and not ended:
            yield cast("Output", info_chunk(info))

    async def _astream(
        self,
        inputs: AsyncIterator[dict[str, Any]],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
        **kwargs: Any,
    ) -> AsyncIterator[Output]:
        input = await anext(inputs)
        request = self._request(input, config, kwargs)
        if request is None:
            async for output in self.bound.astream(input, config, **kwargs):
                yield output
            return
        stream = await self.semantic_cache.engine.resolve_stream(
            request.question,
            lambda: self.bound.astream(input, config, **kwargs),
            request.scope,
            assemble=assemble_output,
            replay=replay_output,
            **self._options(config),
        )
        info = stream.resolution.info(request.question)
        await adispatch_custom_event(CACHE_METADATA_KEY, info, config=config)
        messages = ended = False
        try:
            async for chunk in stream:
                if isinstance(chunk, AIMessageChunk):
                    messages = True
                    if chunk.chunk_position == "last":
                        chunk, ended = chunk_with_cache_info(chunk, info), True
                yield cast("Output", chunk)
        finally:
            await stream.aclose()
        if messages and not ended:
            yield cast("Output", info_chunk(info))

    # -- the request ----------------------------------------------------------------------------------------

    def _options(self, config: RunnableConfig) -> dict[str, Any]:
        """`config["configurable"]["cache_options"]`: this call's options for the engine (never in the partition)."""
        raw = (config.get("configurable") or {}).get(OPTIONS_KEY)
        return call_options(self.semantic_cache.engine, raw, None)

    def _request(self, input: Any, config: RunnableConfig, kwargs: Mapping[str, Any]) -> CacheRequest | None:
        """The question and the partition of a call; None (with a warning, once per reason) to run the chain
        without the cache."""
        if not isinstance(input, Mapping):
            return self._bypass("type", f"its input is a {type(input).__name__}, not a dict")
        question = input.get(self.question_key)
        if not isinstance(question, str):
            shown = "missing" if self.question_key not in input else f"a {type(question).__name__}"
            return self._bypass("question", f"input[{self.question_key!r}] is {shown}, not a string")
        if not question.strip():
            return None  # nothing to compare by meaning
        configurable = config.get("configurable") or {}
        chosen = {spec.id: configurable[spec.id] for spec in self.bound.config_specs if spec.id in configurable}
        try:
            question.encode("utf-8")
            scope = Scope(
                namespace=self.namespace,
                model=RUNNABLE_MODEL,
                params={
                    "chain": self._chain_identity(),
                    "question_key": self.question_key,
                    "configurable": canonical_inputs(chosen),
                    "call_kwargs": canonical_inputs(kwargs),
                },
                context=canonical_inputs({key: value for key, value in input.items() if key != self.question_key}),
            )
            self.semantic_cache.engine.partition_for(scope)  # the engine's own checks (JSON, text), before the call
        except UnicodeEncodeError:
            return self._bypass("question-text", f"input[{self.question_key!r}] is not valid text (lone surrogates)")
        except UncacheableInput as exc:
            return self._bypass(exc.kind, str(exc))
        except InvalidInputError as exc:  # e.g. a string that is not valid text
            return self._bypass("invalid", str(exc))
        return CacheRequest(question, scope)

    def _chain_identity(self) -> dict[str, Any]:
        """What tells this chain apart from every other: its serialization (complete, or the serializable
        parts' with a name), else a random id of this object."""
        serialized, complete = runnable_serialization(self.bound)
        if complete or self.name is not None:
            return {"serialized": serialized, "name": self.name}
        return {"object": self._object_identity}

    def _bypass(self, reason: str, explanation: str) -> CacheRequest | None:
        """No request: the call runs the chain without the cache (a warning says why, once per reason)."""
        if reason not in self._warned:
            self._warned.add(reason)
            logger.warning(
                "SemanticCacheRunnable %s: a call runs without the cache because %s (warned once per reason)",
                self.get_name(),
                explanation,
            )
        return None


def with_semantic_cache(
    chain: Runnable[dict[str, Any], Output],
    *,
    question_key: str = "question",
    semantic_cache: SemanticCache | CoreSemanticCache | None = None,
    namespace: str | None = None,
    name: str | None = None,
) -> SemanticCacheRunnable[Output]:
    """`chain` answered from the semantic cache, compared by meaning on `input[question_key]` only (see
    `SemanticCacheRunnable`)."""
    return SemanticCacheRunnable(
        chain, question_key=question_key, semantic_cache=semantic_cache, namespace=namespace, name=name
    )


def _served(resolution: Resolution, answer: list[Output], info: dict[str, Any]) -> Output:
    """The call's answer (its own when it ran the chain), a message output marked with how it was served."""
    output = answer[0] if resolution.computed else resolution.response
    return cast("Output", output_with_cache_info(output, info))
