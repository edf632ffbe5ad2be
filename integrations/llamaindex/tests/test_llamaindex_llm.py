"""SemanticCacheLLM over a call-counting LLM and the bag-of-words embedder (the real model only where marked).

Helpers come from `llamaindex_fakes`, never from a conftest: `conftest` is the name of several modules.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import llama_index.llms.semantic_cache as semantic_cache_package
import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, MessageRole
from llama_index.core.bridge.pydantic import BaseModel
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import root_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llama_index.core.llms import LLM, MockLLM
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.prompts import PromptTemplate
from llama_index.llms.semantic_cache import CACHE_INFO_KEY, SemanticCacheEvent, SemanticCacheLLM
from llama_index.llms.semantic_cache._keys import Request, completion_request
from llamaindex_fakes import BagOfWordsEmbedding, CountingLLM, EventRecorder

from semantic_llm_cache import ConfigurationError, SemanticCache
from tests.fakes import BagOfWordsEmbedder

QUESTION = "Tell me the capital city of France"
PARAPHRASE = "Tell me the capital of France"  # 6 of 7 words shared: cosine 0.93 under the bag of words
OTHER = "How many people live in Brazil today"

COMPLETION_METHODS = ["complete", "acomplete", "stream_complete", "astream_complete"]
CHAT_METHODS = ["chat", "achat", "stream_chat", "astream_chat"]
# `Resolution.info()` of a miss: the one vocabulary of additional_kwargs["semantic_cache"] and SemanticCacheEvent.
MISS_INFO = {
    "hit": False,
    "kind": "miss",
    "similarity": None,
    "matched_prompt": None,
    "age_seconds": None,
    "key": None,
    "shared": False,
}


def is_miss_info(info: dict, prompt: str) -> bool:
    """A miss's info: the vocabulary above, with the key its answer is stored under (a miss stores it)."""
    return isinstance(info.get("key"), str) and {**info, "key": None} == MISS_INFO | {"prompt": prompt}


async def ask(llm: LLM, method: str, text: str, history: list[ChatMessage] | None = None) -> tuple[str, list[dict]]:
    """Call `method` of `llm` with `text` (as the last user message for chats); the answer and each chunk's info."""
    if method in COMPLETION_METHODS:
        argument: Any = text
    else:
        argument = [*(history or []), ChatMessage(role=MessageRole.USER, content=text)]
    result = getattr(llm, method)(argument)
    if method.startswith("a"):
        result = await result
    if method.startswith("astream"):
        chunks = [chunk async for chunk in result]
    elif method.startswith("stream"):
        chunks = list(result)
    else:
        return _text(result), [result.additional_kwargs[CACHE_INFO_KEY]]
    assert chunks, "a stream yielded nothing"
    return "".join(chunk.delta for chunk in chunks), [chunk.additional_kwargs[CACHE_INFO_KEY] for chunk in chunks]


def _text(response: CompletionResponse | ChatResponse) -> str:
    return response.text if isinstance(response, CompletionResponse) else response.message.content or ""


@pytest.fixture
def cache(cache_on_each_backend: SemanticCache) -> SemanticCache:
    """Overrides the shared `cache`: every test using it runs over memory and real Redis (tests/plugins/core.py)."""
    return cache_on_each_backend


@pytest.fixture
def inner() -> CountingLLM:
    return CountingLLM()


@pytest.fixture
def recorder() -> Iterator[EventRecorder]:
    """An event handler attached to the root dispatcher for the test's duration."""
    handler = EventRecorder()
    root_dispatcher.add_event_handler(handler)
    try:
        yield handler
    finally:
        root_dispatcher.event_handlers.remove(handler)


@pytest.fixture
def llm(inner: CountingLLM, cache: SemanticCache) -> SemanticCacheLLM:
    return SemanticCacheLLM(llm=inner, cache=cache)


# -- it is an LLM ------------------------------------------------------------------------------------------


def test_is_an_llm_that_delegates_to_the_wrapped_one(llm: SemanticCacheLLM, inner: CountingLLM) -> None:
    assert isinstance(llm, LLM)
    assert llm.metadata == inner.metadata
    assert llm.metadata.model_name == "counting-model"
    assert llm.temperature == 0.0  # attributes of the wrapped LLM are reachable through the wrapper
    assert llm.class_name() == "SemanticCacheLLM"
    previous = Settings._llm
    try:
        Settings.llm = llm
        assert Settings.llm is llm
    finally:
        Settings._llm = previous


def test_serialises_without_the_cache(llm: SemanticCacheLLM) -> None:
    data = llm.to_dict()
    assert data["class_name"] == "SemanticCacheLLM"
    assert data["llm"]["model_name"] == "counting-model"
    assert "cache" not in data
    payload = llm.to_payload()  # what instrumentation events show as the model
    assert payload["class_name"] == "SemanticCacheLLM" and payload["wrapped_class_name"] == llm.llm.class_name()
    assert payload["model_name"] == "counting-model"


def test_refuses_both_a_cache_and_an_embed_model(inner: CountingLLM, cache: SemanticCache) -> None:
    with pytest.raises(ConfigurationError):
        SemanticCacheLLM(llm=inner, cache=cache, embed_model=MockEmbedding(embed_dim=8))


# -- hits, misses, and all eight methods -------------------------------------------------------------------


async def test_paraphrase_is_served_from_the_cache(llm: SemanticCacheLLM, inner: CountingLLM) -> None:
    first = llm.complete(QUESTION)
    second = llm.complete(PARAPHRASE)
    assert len(inner.calls) == 1
    assert first.text == second.text == f"answer 1 to: {QUESTION}"
    assert is_miss_info(first.additional_kwargs[CACHE_INFO_KEY], QUESTION)
    info = second.additional_kwargs[CACHE_INFO_KEY]
    assert set(info) == set(MISS_INFO) | {"prompt"}  # one vocabulary on hits and misses
    assert info["hit"] is True and info["kind"] == "semantic" and info["shared"] is False
    assert 0.8 <= info["similarity"] < 1.0
    assert info["matched_prompt"] == QUESTION and info["prompt"] == PARAPHRASE
    assert info["age_seconds"] >= 0 and isinstance(info["key"], str)


async def test_exact_repeat_is_an_exact_hit(llm: SemanticCacheLLM, inner: CountingLLM) -> None:
    llm.complete(QUESTION)
    again = llm.complete(f"  {QUESTION} ")
    assert len(inner.calls) == 1
    assert again.additional_kwargs[CACHE_INFO_KEY]["kind"] == "exact"
    assert again.additional_kwargs[CACHE_INFO_KEY]["similarity"] == 1.0


async def test_a_different_question_is_a_miss(llm: SemanticCacheLLM, inner: CountingLLM) -> None:
    llm.complete(QUESTION)
    other = llm.complete(OTHER)
    assert len(inner.calls) == 2
    assert other.text == f"answer 2 to: {OTHER}"
    assert other.additional_kwargs[CACHE_INFO_KEY]["hit"] is False


@pytest.mark.parametrize("second", COMPLETION_METHODS)
@pytest.mark.parametrize("first", COMPLETION_METHODS)
async def test_completion_methods_store_and_serve(
    llm: SemanticCacheLLM, inner: CountingLLM, first: str, second: str
) -> None:
    """Any completion method's answer (streamed ones too) is served to any other, streams replayed as deltas."""
    answer, infos = await ask(llm, first, QUESTION)
    assert inner.calls == [(first, QUESTION)]
    assert answer == f"answer 1 to: {QUESTION}"
    assert all(info["kind"] == "miss" for info in infos)

    served, infos = await ask(llm, second, PARAPHRASE)
    assert len(inner.calls) == 1
    assert served == answer
    assert all(info["hit"] and info["kind"] == "semantic" for info in infos)
    if "stream" in second:
        assert len(infos) == len(answer.split())  # replayed word by word, not in one piece


@pytest.mark.parametrize("second", CHAT_METHODS)
@pytest.mark.parametrize("first", CHAT_METHODS)
async def test_chat_methods_store_and_serve(llm: SemanticCacheLLM, inner: CountingLLM, first: str, second: str) -> None:
    answer, infos = await ask(llm, first, QUESTION)
    assert inner.calls == [(first, QUESTION)]
    assert answer == f"answer 1 to: {QUESTION}"
    assert all(info["kind"] == "miss" for info in infos)

    served, infos = await ask(llm, second, PARAPHRASE)
    assert len(inner.calls) == 1
    assert served == answer
    assert all(info["hit"] and info["kind"] == "semantic" for info in infos)
    if "stream" in second:
        assert len(infos) == len(answer.split())


async def test_chat_hit_restores_the_assistant_message(llm: SemanticCacheLLM) -> None:
    first = llm.chat([ChatMessage(role="user", content=QUESTION)])
    second = llm.chat([ChatMessage(role="user", content=PARAPHRASE)])
    assert second.message == first.message
    assert second.message.role == MessageRole.ASSISTANT


async def test_an_unfinished_stream_is_not_stored(llm: SemanticCacheLLM, inner: CountingLLM) -> None:
    stream = llm.stream_complete(QUESTION)
    next(stream)
    stream.close()  # the reader stopped after one chunk
    answer = llm.complete(QUESTION)
    assert len(inner.calls) == 2
    assert answer.additional_kwargs[CACHE_INFO_KEY]["kind"] == "miss"


# -- which methods share entries -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [(a, b) for a in COMPLETION_METHODS for b in CHAT_METHODS]
    + [(a, b) for a in CHAT_METHODS for b in COMPLETION_METHODS],
)
async def test_a_chat_models_completions_and_chats_share_entries(cache: SemanticCache, first: str, second: str) -> None:
    """On a chat model, LlamaIndex's complete(p) is chat([user: p]): the model sees the same prompt, so an answer
    stored by any of the eight methods serves the others (streams replayed as deltas)."""
    inner = CountingLLM(is_chat=True)
    llm = SemanticCacheLLM(llm=inner, cache=cache)
    answer, infos = await ask(llm, first, QUESTION)
    assert inner.calls == [(first, QUESTION)] and answer == f"answer 1 to: {QUESTION}"
    assert all(info["kind"] == "miss" for info in infos)

    served, infos = await ask(llm, second, PARAPHRASE)
    assert len(inner.calls) == 1
    assert served == answer
    assert all(info["hit"] and info["kind"] == "semantic" for info in infos)
    if "stream" in second:
        assert len(infos) == len(answer.split())


async def test_the_issue_example_complete_then_chat_calls_a_chat_model_once(cache: SemanticCache) -> None:
    inner = CountingLLM(is_chat=True)
    llm = SemanticCacheLLM(llm=inner, cache=cache)
    completion = llm.complete("What is the capital of France?")
    chat = llm.chat([ChatMessage(role=MessageRole.USER, content="What is the capital of France?")])
    assert len(inner.calls) == 1
    assert chat.message.content == completion.text and chat.message.role == MessageRole.ASSISTANT
    assert chat.additional_kwargs[CACHE_INFO_KEY]["kind"] == "exact"
    again = llm.complete("What is the capital of France?")
    assert again.text == completion.text and again.additional_kwargs[CACHE_INFO_KEY]["kind"] == "exact"


async def test_a_chat_answer_serves_a_completion_with_its_message_kwargs(cache: SemanticCache) -> None:
    """A completion read from a chat entry is what LlamaIndex makes of the chat answer (text and message kwargs)."""

    class KwargsChatLLM(CountingLLM):
        def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
            response = super().chat(messages, **kwargs)
            response.message.additional_kwargs["citations"] = ["doc-1"]
            return response

    inner = KwargsChatLLM(is_chat=True)
    llm = SemanticCacheLLM(llm=inner, cache=cache)
    llm.chat([ChatMessage(role=MessageRole.USER, content=QUESTION)])
    completion = llm.complete(QUESTION)
    assert len(inner.calls) == 1
    assert completion.text == f"answer 1 to: {QUESTION}"
    assert completion.additional_kwargs["citations"] == ["doc-1"]


@pytest.mark.parametrize(("first", "second"), [("complete", "chat"), ("chat", "complete")])
async def test_a_completion_models_completions_and_chats_do_not_share(
    cache: SemanticCache, first: str, second: str
) -> None:
    """On a completion model, chat(messages) sends messages_to_prompt(messages) to the model, not the user text:
    another prompt, so the two families keep apart."""
    inner = CountingLLM(is_chat=False)
    llm = SemanticCacheLLM(llm=inner, cache=cache)
    await ask(llm, first, QUESTION)
    _, infos = await ask(llm, second, QUESTION)
    assert len(inner.calls) == 2 and infos[0]["kind"] == "miss"


async def test_a_chat_models_formatted_completions_are_kept_apart(cache: SemanticCache) -> None:
    inner = CountingLLM(is_chat=True)
    llm = SemanticCacheLLM(llm=inner, cache=cache)
    llm.chat([ChatMessage(role=MessageRole.USER, content=QUESTION)])
    llm.complete(QUESTION, formatted=True)  # already formatted for the model: not known to be the same prompt
    assert len(inner.calls) == 2
    llm.complete(QUESTION, formatted=True)
    assert len(inner.calls) == 2


# -- partitions --------------------------------------------------------------------------------------------


async def test_chat_context_partitions_and_only_the_last_user_message_is_embedded(
    llm: SemanticCacheLLM, inner: CountingLLM, embedder: BagOfWordsEmbedder
) -> None:
    pirate = [ChatMessage(role="system", content="You are a pirate.")]
    poet = [ChatMessage(role="system", content="You are a poet.")]
    await ask(llm, "chat", QUESTION, pirate)
    assert embedder.texts == [QUESTION]  # neither the system prompt nor anything else is embedded

    answer, infos = await ask(llm, "chat", QUESTION, poet)  # same question, another system prompt
    assert len(inner.calls) == 2 and infos[0]["hit"] is False and answer == f"answer 2 to: {QUESTION}"

    earlier = [*pirate, ChatMessage(role="user", content="Hi"), ChatMessage(role="assistant", content="Arr")]
    await ask(llm, "chat", QUESTION, earlier)  # same system prompt, but earlier turns
    assert len(inner.calls) == 3

    answer, infos = await ask(llm, "chat", PARAPHRASE, pirate)  # the first conversation again, paraphrased
    assert len(inner.calls) == 3
    assert infos[0]["kind"] == "semantic" and answer == f"answer 1 to: {QUESTION}"


async def test_model_identity_and_call_arguments_partition(cache: SemanticCache) -> None:
    cold, warm = CountingLLM(temperature=0.0), CountingLLM(temperature=0.9)
    other_model = CountingLLM(model_name="another-model")
    for inner in (cold, warm, other_model):
        SemanticCacheLLM(llm=inner, cache=cache).complete(QUESTION)
        assert len(inner.calls) == 1, "a wrapped LLM with other settings must not be served another's answers"
    wrapper = SemanticCacheLLM(llm=cold, cache=cache)
    wrapper.complete(QUESTION, max_tokens=5)  # other call arguments: another partition
    assert len(cold.calls) == 2
    wrapper.complete(QUESTION, max_tokens=5)
    assert len(cold.calls) == 2


async def test_namespaces_partition(inner: CountingLLM, cache: SemanticCache) -> None:
    SemanticCacheLLM(llm=inner, cache=cache, namespace="tenant-a").complete(QUESTION)
    SemanticCacheLLM(llm=inner, cache=cache, namespace="tenant-b").complete(QUESTION)
    assert len(inner.calls) == 2


async def test_formatted_prompts_are_keyed_as_given(
    llm: SemanticCacheLLM, inner: CountingLLM, embedder: BagOfWordsEmbedder
) -> None:
    formatted = "<s>[INST] Tell me the capital city of France [/INST]"
    llm.complete(formatted, formatted=True)
    assert embedder.texts == [formatted]
    assert inner.calls == [("complete", formatted)]
    llm.complete(formatted, formatted=True)
    assert len(inner.calls) == 1
    llm.complete(formatted)  # unformatted: the wrapped LLM would format it, so it is another partition
    assert len(inner.calls) == 2


# -- calls the cache cannot key go straight through ----------------------------------------------------------


async def test_uncacheable_calls_bypass_the_cache(
    llm: SemanticCacheLLM, inner: CountingLLM, recorder: EventRecorder
) -> None:
    assert llm.complete("   ").additional_kwargs[CACHE_INFO_KEY] == MISS_INFO | {"bypass": "empty prompt"}
    llm.complete(QUESTION, callback=object())
    llm.complete(QUESTION, callback=object())
    assert len(inner.calls) == 3
    events = [event for event in recorder.events if isinstance(event, SemanticCacheEvent)]
    assert [(event.kind, event.hit) for event in events] == [("miss", False)] * 3
    assert events[1].bypass is not None and "JSON" in events[1].bypass


class ObjectAnswerLLM(CountingLLM):
    """Answers with a provider object in the message (JSON cannot hold it), slowly if asked to."""

    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        time.sleep(self.delay)
        response = super().chat(messages, **kwargs)
        response.message.additional_kwargs["tool_calls"] = [object()]
        return response

    async def achat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        response = await super().achat(messages, **kwargs)
        response.message.additional_kwargs["tool_calls"] = [object()]
        return response


async def test_an_answer_json_cannot_hold_is_returned_but_not_stored(cache: SemanticCache) -> None:
    inner = ObjectAnswerLLM()
    llm = SemanticCacheLLM(llm=inner, cache=cache)
    first = llm.chat([ChatMessage(role="user", content=QUESTION)])
    second = llm.chat([ChatMessage(role="user", content=QUESTION)])
    third = await llm.achat([ChatMessage(role="user", content=QUESTION)])
    assert len(inner.calls) == 3
    assert first.message.additional_kwargs["tool_calls"]  # the wrapped LLM's own answer, untouched
    assert second.additional_kwargs[CACHE_INFO_KEY] == third.additional_kwargs[CACHE_INFO_KEY]
    assert third.additional_kwargs[CACHE_INFO_KEY] == MISS_INFO | {"prompt": QUESTION}  # not stored: no key
    assert cache.stats["stores"] == 0 and cache.stats["not_stored"] == 3


@pytest.mark.parametrize("method", ["chat", "achat"])
async def test_concurrent_calls_share_an_answer_json_cannot_hold(cache: SemanticCache, method: str) -> None:
    """Not stored, but still computed once for concurrent identical calls (sync threads and async tasks)."""
    inner = ObjectAnswerLLM(delay=1.0)  # long enough for six threads to start on a loaded machine
    llm = SemanticCacheLLM(llm=inner, cache=cache)
    messages = [ChatMessage(role="user", content=QUESTION)]
    if method == "chat":
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda _: llm.chat(messages), range(6)))
    else:
        responses = await asyncio.gather(*(llm.achat(messages) for _ in range(6)))
    assert len(inner.calls) == 1
    assert all(response.message.additional_kwargs["tool_calls"] for response in responses)
    kinds = sorted(response.additional_kwargs[CACHE_INFO_KEY]["kind"] for response in responses)
    assert kinds == ["miss"] + ["shared"] * 5
    assert cache.stats["stores"] == 0 and cache.stats["shared_hits"] == 5


async def test_a_chat_models_unstorable_answer_is_shared_with_concurrent_completions(cache: SemanticCache) -> None:
    """A chat answer JSON cannot hold, shared as it is with concurrent completions and streams of the same question:
    each gets it as its own type (a completion, a chat answer, or replayed chunks), and nothing is stored."""
    inner = ObjectAnswerLLM(is_chat=True, delay=0.3)
    llm = SemanticCacheLLM(llm=inner, cache=cache)
    leader = asyncio.ensure_future(ask(llm, "achat", QUESTION))
    await asyncio.sleep(0.1)  # the chat is asking the model now
    methods = ["acomplete", "astream_complete", "astream_chat", "achat"]
    results = await asyncio.gather(leader, *(ask(llm, method, QUESTION) for method in methods))
    assert [method for method, _ in inner.calls] == ["achat"]
    assert {answer for answer, _ in results} == {f"answer 1 to: {QUESTION}"}
    assert [infos[0]["kind"] for _, infos in results] == ["miss"] + ["shared"] * 4
    assert cache.stats["stores"] == 0


# -- concurrency -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["acomplete", "achat"])
async def test_concurrent_identical_calls_reach_the_llm_once(cache: SemanticCache, method: str) -> None:
    inner = CountingLLM(delay=0.05)
    llm = SemanticCacheLLM(llm=inner, cache=cache)
    results = await asyncio.gather(*(ask(llm, method, QUESTION) for _ in range(8)))
    assert len(inner.calls) == 1
    assert {answer for answer, _ in results} == {f"answer 1 to: {QUESTION}"}
    kinds = sorted(infos[0]["kind"] for _, infos in results)
    assert kinds.count("miss") == 1 and set(kinds) <= {"miss", "shared", "exact"}


def test_concurrent_sync_calls_from_threads_reach_the_llm_once(cache: SemanticCache) -> None:
    answered_in: list[int] = []

    class SlowLLM(CountingLLM):
        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
            answered_in.append(threading.get_ident())
            time.sleep(0.1)
            return super().complete(prompt, formatted, **kwargs)

    inner = SlowLLM()
    llm = SemanticCacheLLM(llm=inner, cache=cache)

    def ask_sync(_: int) -> tuple[str, str, int]:
        response = llm.complete(QUESTION)
        return response.text, response.additional_kwargs[CACHE_INFO_KEY]["kind"], threading.get_ident()

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(ask_sync, range(6)))
    assert len(inner.calls) == 1
    assert {text for text, _, _ in results} == {f"answer 1 to: {QUESTION}"}
    kinds = [kind for _, kind, _ in results]
    assert kinds.count("miss") == 1 and set(kinds) <= {"miss", "shared", "exact"}
    # The wrapped LLM ran in the calling thread of the call that missed (no hop to another thread).
    assert answered_in == [thread for _, kind, thread in results if kind == "miss"]


@pytest.mark.parametrize("method", ["astream_complete", "astream_chat"])
async def test_concurrent_streamed_misses_reach_the_llm_once(cache: SemanticCache, method: str) -> None:
    """One caller streams the model live; the others wait for it and get the stored answer replayed."""
    inner = CountingLLM(delay=0.05)
    llm = SemanticCacheLLM(llm=inner, cache=cache)
    results = await asyncio.gather(*(ask(llm, method, QUESTION) for _ in range(6)))
    assert inner.calls == [(method, QUESTION)]
    assert {answer for answer, _ in results} == {f"answer 1 to: {QUESTION}"}
    kinds = sorted(infos[0]["kind"] for _, infos in results)
    assert kinds.count("miss") == 1 and set(kinds) <= {"miss", "shared", "exact"}
    assert all(len(infos) == len(results[0][0].split()) for _, infos in results)  # everyone got deltas
    assert cache.stats["stores"] == 1


def test_concurrent_sync_streams_from_threads_reach_the_llm_once(cache: SemanticCache) -> None:
    inner = CountingLLM(delay=0.1)
    llm = SemanticCacheLLM(llm=inner, cache=cache)

    def stream(_: int) -> tuple[str, str]:
        chunks = list(llm.stream_complete(QUESTION))
        return "".join(chunk.delta or "" for chunk in chunks), chunks[0].additional_kwargs[CACHE_INFO_KEY]["kind"]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(stream, range(6)))
    assert inner.calls == [("stream_complete", QUESTION)]
    assert {text for text, _ in results} == {f"answer 1 to: {QUESTION}"}
    kinds = [kind for _, kind in results]
    assert kinds.count("miss") == 1 and set(kinds) <= {"miss", "shared", "exact"}


async def test_streams_and_calls_of_a_chat_model_share_one_flight(cache: SemanticCache) -> None:
    """Concurrent identical questions through any of the async methods of a chat model: one model call."""
    inner = CountingLLM(is_chat=True, delay=0.05)
    llm = SemanticCacheLLM(llm=inner, cache=cache)
    methods = ["acomplete", "astream_complete", "achat", "astream_chat"] * 2
    results = await asyncio.gather(*(ask(llm, method, QUESTION) for method in methods))
    assert len(inner.calls) == 1
    assert {answer for answer, _ in results} == {f"answer 1 to: {QUESTION}"}


async def test_an_abandoned_stream_lets_a_waiting_caller_stream_the_model(cache: SemanticCache) -> None:
    inner = CountingLLM(delay=0.05)
    llm = SemanticCacheLLM(llm=inner, cache=cache)
    leader = await llm.astream_complete(QUESTION)
    first_chunk = await leader.__anext__()
    assert first_chunk.additional_kwargs[CACHE_INFO_KEY]["kind"] == "miss"
    waiter = asyncio.ensure_future(ask(llm, "astream_complete", QUESTION))
    await asyncio.sleep(0.02)
    await leader.aclose()  # the leader's reader stops: nothing is stored, the waiter asks the model itself
    answer, infos = await waiter
    assert [method for method, _ in inner.calls] == ["astream_complete", "astream_complete"]
    assert answer == f"answer 2 to: {QUESTION}" and infos[0]["kind"] == "miss"
    assert cache.stats["stores"] == 1


@pytest.mark.parametrize("method", ["complete", "acomplete", "stream_complete", "astream_complete"])
async def test_an_unreadable_entry_is_recomputed_once_and_replaced(embedder: BagOfWordsEmbedder, method: str) -> None:
    """An entry that is not a LlamaIndex answer is a miss: concurrent callers make one model call, which replaces it
    (the engine does this; the adapter only says the entry cannot be decoded)."""
    async with SemanticCache(embedder=embedder, threshold=0.8) as cache:  # on_error="log": the default
        inner = CountingLLM(delay=0.05)
        llm = SemanticCacheLLM(llm=inner, cache=cache)
        request = completion_request(inner, QUESTION, False, {}, None)  # how complete(QUESTION) is keyed
        assert isinstance(request, Request)
        await cache.store(request.prompt, {"not": "an answer"}, request.scope)
        if method.startswith("a"):
            results = await asyncio.gather(*(ask(llm, method, QUESTION) for _ in range(4)))
        else:
            with ThreadPoolExecutor(4) as pool:
                results = list(pool.map(lambda _: asyncio.run(ask(llm, method, QUESTION)), range(4)))
        assert len(inner.calls) == 1
        assert {answer for answer, _ in results} == {f"answer 1 to: {QUESTION}"}
        assert cache.stats["undecodable_entries"] >= 1
        answer, infos = await ask(llm, "complete", QUESTION)
        assert len(inner.calls) == 1 and infos[0]["kind"] == "exact" and answer == f"answer 1 to: {QUESTION}"


# -- observability -----------------------------------------------------------------------------------------


async def test_hits_and_misses_reach_instrumentation_handlers(llm: SemanticCacheLLM, recorder: EventRecorder) -> None:
    llm.complete(QUESTION)
    llm.complete(PARAPHRASE)
    list(llm.stream_chat([ChatMessage(role="user", content=OTHER)]))
    await llm.achat([ChatMessage(role="user", content=OTHER)])
    events = [event for event in recorder.events if isinstance(event, SemanticCacheEvent)]
    assert [(event.method, event.hit, event.kind) for event in events] == [
        ("complete", False, "miss"),
        ("complete", True, "semantic"),
        ("stream_chat", False, "miss"),
        ("achat", True, "exact"),
    ]
    hit = events[1]
    assert hit.similarity is not None and hit.similarity >= 0.8
    assert hit.prompt == PARAPHRASE and hit.matched_prompt == QUESTION
    assert hit.age_seconds is not None and hit.key is not None and hit.shared is False and hit.bypass is None
    # Dispatched inside the wrapper call's span (also for sync calls, whose cache work runs on another thread).
    assert all(event.span_id and event.span_id.startswith(f"SemanticCacheLLM.{event.method}-") for event in events)
    assert events[3].model_dump()["class_name"] == "SemanticCacheEvent"


@pytest.mark.parametrize("method", [*COMPLETION_METHODS, *CHAT_METHODS])
async def test_the_wrapped_llm_runs_inside_the_wrapper_span(
    llm: SemanticCacheLLM, inner: CountingLLM, method: str
) -> None:
    """On a miss the wrapped LLM's span is a child of the wrapper call's span (the caller's context reaches it),
    for streams too, although the engine opens the wrapped stream only when it is first read."""
    spans = SimpleSpanHandler()
    root_dispatcher.add_span_handler(spans)
    try:
        await ask(llm, method, QUESTION)
    finally:
        root_dispatcher.span_handlers.remove(spans)
    assert len(inner.calls) == 1
    completed = {span.id_: span for span in spans.completed_spans}
    (outer,) = [span for span in completed.values() if span.id_.startswith(f"SemanticCacheLLM.{method}-")]
    (wrapped,) = [span for span in completed.values() if span.id_.startswith(f"CountingLLM.{method}-")]
    assert wrapped.parent_id == outer.id_


@pytest.mark.parametrize("method", ["complete", "acomplete", "chat", "achat"])
async def test_reported_tokens_are_credited_to_later_hits(cache: SemanticCache, method: str) -> None:
    class TokenReportingLLM(CountingLLM):
        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
            response = super().complete(prompt, formatted, **kwargs)
            response.raw = {"usage": {"prompt_tokens": 12, "completion_tokens": 7}}
            return response

        async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
            return self.complete(prompt, formatted, **kwargs)

        def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
            response = super().chat(messages, **kwargs)
            response.additional_kwargs.update(prompt_tokens=12, completion_tokens=7, total_tokens=19)
            return response

        async def achat(self, messages: Any, **kwargs: Any) -> ChatResponse:
            return self.chat(messages, **kwargs)

    llm = SemanticCacheLLM(llm=TokenReportingLLM(), cache=cache)
    await ask(llm, method, QUESTION)
    await ask(llm, method, PARAPHRASE)
    await ask(llm, method, PARAPHRASE)
    assert cache.stats.saved_tokens == 2 * 19


@pytest.mark.parametrize("method", ["stream_complete", "astream_chat"])
async def test_tokens_a_streams_last_chunk_reports_are_credited_to_later_hits(
    cache: SemanticCache, method: str
) -> None:
    class UsageInLastChunkLLM(CountingLLM):
        def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
            chunks = list(super().stream_complete(prompt, formatted, **kwargs))
            chunks[-1].raw = {"usage": {"total_tokens": 11}}
            return iter(chunks)

        async def astream_chat(self, messages: Any, **kwargs: Any) -> Any:
            chunks = [chunk async for chunk in await super().astream_chat(messages, **kwargs)]
            chunks[-1].raw = {"usage": {"total_tokens": 11}}

            async def gen() -> Any:
                for chunk in chunks:
                    yield chunk

            return gen()

    llm = SemanticCacheLLM(llm=UsageInLastChunkLLM(), cache=cache)
    await ask(llm, method, QUESTION)
    await ask(llm, method, PARAPHRASE)
    assert cache.stats.saved_tokens == 11


async def test_an_llm_without_usage_reports_no_tokens(llm: SemanticCacheLLM, cache: SemanticCache) -> None:
    llm.complete(QUESTION)
    llm.complete(PARAPHRASE)
    assert cache.stats["semantic_hits"] == 1 and cache.stats.saved_tokens == 0


def test_the_adapter_only_translates() -> None:
    """No threads, queues, flights, background loops or direct lookups and stores in the integration: every call
    goes through the engine's resolve, resolve_sync, resolve_stream or resolve_stream_sync."""
    package = Path(semantic_cache_package.__file__).parent
    source = "\n".join(path.read_text() for path in sorted(package.glob("*.py")))
    for forbidden in ("threading", "queue", "concurrent.futures", "run_sync", ".lookup(", ".store(", "to_thread"):
        assert forbidden not in source, forbidden
    base = (package / "base.py").read_text()
    for used in ("resolve_sync(", "resolve(", "resolve_stream(", "resolve_stream_sync(", "decode=", "replay="):
        assert used in base, used


# -- inside LlamaIndex -------------------------------------------------------------------------------------

DOCUMENTS = [Document(text="Paris is the capital of France. Berlin is the capital of Germany.")]


@pytest.mark.parametrize("is_chat", [False, True], ids=["completion-model", "chat-model"])
async def test_query_engine_asks_the_llm_once_per_question(
    cache: SemanticCache, embedder: BagOfWordsEmbedder, is_chat: bool
) -> None:
    inner = CountingLLM(is_chat=is_chat)
    llm = SemanticCacheLLM(llm=inner, cache=cache)
    index = VectorStoreIndex.from_documents(DOCUMENTS, embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(llm=llm)

    first = engine.query(QUESTION)
    second = engine.query(QUESTION)
    assert len(inner.calls) == 1
    assert str(second) == str(first) and str(first).startswith("answer 1 to:")
    assert "Paris is the capital of France" in inner.calls[0][1]  # the LLM did see the retrieved context

    assert str(await engine.aquery(PARAPHRASE)) == str(first)  # same context, paraphrased question
    assert len(inner.calls) == 1
    # Only the question is embedded; the template and the retrieved context partition exactly.
    assert set(embedder.texts) == {QUESTION, PARAPHRASE}

    engine.query(OTHER)  # the same retrieved context does not make another question a hit
    assert len(inner.calls) == 2

    streaming = index.as_query_engine(llm=llm, streaming=True)
    assert "".join(streaming.query(QUESTION).response_gen) == str(first)
    assert len(inner.calls) == 2


async def test_settings_llm_serves_query_engines(cache: SemanticCache, inner: CountingLLM) -> None:
    previous = Settings._llm
    try:
        Settings.llm = SemanticCacheLLM(llm=inner, cache=cache)
        engine = VectorStoreIndex.from_documents(DOCUMENTS, embed_model=MockEmbedding(embed_dim=8)).as_query_engine()
        engine.query(QUESTION)
        engine.query(QUESTION)
    finally:
        Settings._llm = previous
    assert len(inner.calls) == 1


async def test_chat_engine_is_served_from_the_cache(llm: SemanticCacheLLM, inner: CountingLLM) -> None:
    # ChatMemoryBuffer: the default Memory keeps the history in an in-memory aiosqlite database that the sync
    # chat() opens on a loop of its own and never closes (its worker thread raised later, under another test).
    engine = SimpleChatEngine.from_defaults(llm=llm, system_prompt="Answer briefly.", memory_cls=ChatMemoryBuffer)
    first = engine.chat(QUESTION)
    engine.reset()
    second = engine.chat(PARAPHRASE)
    assert len(inner.calls) == 1
    assert str(second) == str(first)
    follow_up = engine.chat(QUESTION)  # now with the previous turn as context: another partition
    assert len(inner.calls) == 2
    assert str(follow_up) == f"answer 2 to: {QUESTION}"


@pytest.mark.parametrize("question_variable", ["query_str", None])
async def test_templates_are_keyed_by_their_question_variable(
    inner: CountingLLM, cache: SemanticCache, embedder: BagOfWordsEmbedder, question_variable: str | None
) -> None:
    llm = SemanticCacheLLM(llm=inner, cache=cache, question_variable=question_variable)
    template = PromptTemplate("Context: {context_str}\nQuestion: {query_str}\nAnswer:")
    llm.predict(template, context_str="Paris is in France.", query_str=QUESTION)
    llm.predict(template, context_str="Paris is in France.", query_str=QUESTION)
    assert len(inner.calls) == 1
    whole_prompt = f"Context: Paris is in France. Question: {QUESTION} Answer:"  # whitespace-normalised
    assert embedder.texts == [QUESTION if question_variable else whole_prompt]
    # The streaming and async template calls share the entry.
    assert "".join(llm.stream(template, context_str="Paris is in France.", query_str=QUESTION)).startswith("answer 1")
    tokens = await llm.astream(template, context_str="Paris is in France.", query_str=QUESTION)
    assert "".join([token async for token in tokens]).startswith("answer 1")
    assert (await llm.apredict(template, context_str="Paris is in France.", query_str=QUESTION)).startswith("answer 1")
    assert len(inner.calls) == 1
    llm.predict(template, context_str="Berlin is in Germany.", query_str=QUESTION)  # other context: a miss
    assert len(inner.calls) == 2


async def test_any_llamaindex_embedding_can_embed(inner: CountingLLM) -> None:
    llm = SemanticCacheLLM(llm=inner, embed_model=BagOfWordsEmbedding())
    assert llm.cache.embedder.name.startswith("llamaindex:")
    # The default threshold is calibrated for the bundled model; the bag of words needs the tests' own.
    llm.cache.config = dataclasses.replace(llm.cache.config, threshold=0.8)
    llm.complete(QUESTION)
    assert llm.complete(PARAPHRASE).additional_kwargs[CACHE_INFO_KEY]["kind"] == "semantic"
    llm.complete(OTHER)
    assert len(inner.calls) == 2


async def test_mock_llm_round_trip(cache: SemanticCache) -> None:
    llm = SemanticCacheLLM(llm=MockLLM(max_tokens=4), cache=cache)
    assert llm.complete(QUESTION).text == "text text text text"
    hit = llm.complete(PARAPHRASE)
    assert hit.text == "text text text text" and hit.additional_kwargs[CACHE_INFO_KEY]["hit"] is True


def test_function_calling_llms_do_tool_calls_and_structured_output_themselves(cache: SemanticCache) -> None:
    class City(BaseModel):
        name: str

    class ToolCallingLLM(MockFunctionCallingLLM):
        def structured_predict(self, output_cls: Any, prompt: Any, llm_kwargs: Any = None, **prompt_args: Any) -> Any:
            return output_cls(name="Paris")

    inner = ToolCallingLLM()
    llm = SemanticCacheLLM(llm=inner, cache=cache)
    assert llm.structured_predict(City, PromptTemplate("Capital of {country}?"), country="France") == City(name="Paris")
    assert llm.get_tool_calls_from_response.__self__ is inner  # FunctionCallingLLM methods reach the wrapped LLM


# -- the real bundled model ----------------------------------------------------------------------------------


@pytest.mark.model
async def test_real_model_serves_paraphrases_and_not_other_questions(inner: CountingLLM) -> None:
    llm = SemanticCacheLLM(llm=inner)  # the default cache: in memory, bundled model, calibrated threshold
    llm.complete("What is the capital of France?")
    paraphrase = await llm.acomplete("Which city is the capital of France?")
    assert len(inner.calls) == 1
    assert paraphrase.text == "answer 1 to: What is the capital of France?"
    assert paraphrase.additional_kwargs[CACHE_INFO_KEY]["kind"] == "semantic"
    llm.complete("What is the capital of Germany?")
    assert len(inner.calls) == 2


def test_never_cache_of_the_core_cache_keeps_ibans_out(cache: SemanticCache) -> None:
    inner = CountingLLM()
    llm = SemanticCacheLLM(llm=inner, cache=cache)  # the core cache's default never_cache applies
    question = "Is DE89 3704 0044 0532 0130 00 my account?"
    first, second = llm.complete(question), llm.complete(question)
    assert len(inner.calls) == 2 and first.text != second.text
    assert cache.stats["never_cache_iban"] == 2
