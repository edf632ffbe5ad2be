"""SemanticCacheChatModel: invoke/ainvoke/batch/stream/astream served from the cache, single-flight misses."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModelError, FakeMessagesListChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessageChunk, HumanMessage, SystemMessage
from langchain_fakes import CountingChatModel, ToolCallingFakeChatModel
from langchain_semantic_cache import CACHE_METADATA_KEY, SemanticCache, SemanticCacheChatModel
from langchain_semantic_cache._convert import request_for_messages
from pydantic import BaseModel

from semantic_llm_cache import InvalidInputError
from semantic_llm_cache import SemanticCache as CoreSemanticCache
from tests.fakes import BagOfWordsEmbedder

QUESTION = "What is the capital city of France?"
PARAPHRASE = "what is the capital of France"
OTHER = "How tall is Mount Everest in meters?"
ANSWER = "The capital of France is Paris."
SHARED = {"hit": False, "shared": True}  # the marker of an answer computed by a concurrent identical call


def wrap(model: BaseChatModel, lc_cache: SemanticCache) -> SemanticCacheChatModel:
    return SemanticCacheChatModel(model=model, cache=lc_cache)


def served(message: AIMessage | BaseMessageChunk) -> dict[str, object] | None:
    value = message.response_metadata.get(CACHE_METADATA_KEY)
    return value if isinstance(value, dict) else None


def added(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


async def test_accepts_a_core_cache(cache: CoreSemanticCache, chat_model: Callable[..., CountingChatModel]) -> None:
    inner = chat_model(ANSWER)
    chat = SemanticCacheChatModel(model=inner, cache=cache)
    assert isinstance(chat.cache, SemanticCache) and chat.cache.engine is cache
    assert chat.model is inner


async def test_ainvoke_hit_miss_and_metadata(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    inner = chat_model(ANSWER, "8849 meters")
    chat = wrap(inner, lc_cache)
    fresh = await chat.ainvoke(QUESTION)
    hit = await chat.ainvoke(PARAPHRASE)
    other = await chat.ainvoke(OTHER)
    assert [fresh.content, hit.content, other.content] == [ANSWER, ANSWER, "8849 meters"]
    assert inner.calls == 2
    assert served(fresh) is None and served(other) is None
    metadata = served(hit)
    assert metadata is not None and metadata["kind"] == "semantic" and 0.8 <= metadata["similarity"] < 1  # type: ignore[operator]
    assert hit.id is not None and hit.id.startswith("lc_run-")  # a fresh id per served run
    assert hit.id != (await chat.ainvoke(PARAPHRASE)).id
    assert lc_cache.engine.stats["stores"] == 2  # not stored twice by LangChain's own cache path


def test_invoke_and_batch_sync(lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]) -> None:
    inner = chat_model(ANSWER, "8849 meters", "unused")
    chat = wrap(inner, lc_cache)
    assert chat.invoke(QUESTION).content == ANSWER
    answers = chat.batch([PARAPHRASE, OTHER, QUESTION])
    assert [answer.content for answer in answers] == [ANSWER, "8849 meters", ANSWER]
    assert inner.calls == 2
    assert [served(answer) is not None for answer in answers] == [True, False, True]


async def test_abatch_of_identical_prompts_calls_the_model_once(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    inner = chat_model(ANSWER, "second call", sleep=0.05)
    chat = wrap(inner, lc_cache)
    answers = await chat.abatch([QUESTION] * 4)
    assert [answer.content for answer in answers] == [ANSWER] * 4
    assert inner.calls == 1


async def test_concurrent_identical_ainvoke_calls_the_model_once(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    inner = chat_model(ANSWER, "second call", sleep=0.05)
    chat = wrap(inner, lc_cache)
    answers = await asyncio.gather(*(chat.ainvoke(QUESTION) for _ in range(6)))
    assert [answer.content for answer in answers] == [ANSWER] * 6
    assert inner.calls == 1
    markers = [served(answer) for answer in answers]
    assert markers.count(None) == 1  # the one that computed it
    assert all(marker == SHARED for marker in markers if marker is not None)
    assert lc_cache.engine.stats["stores"] == 1


def test_concurrent_identical_sync_invokes_call_the_model_once(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    """Eight threads invoking one prompt at once (as batch() threads do) make one model call and share it."""
    inner = chat_model(ANSWER, "second call", sleep=0.2)
    chat = wrap(inner, lc_cache)
    start = threading.Barrier(8)

    def invoke(_: int) -> tuple[AIMessage, int]:
        start.wait()
        return chat.invoke(QUESTION), threading.get_ident()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(invoke, range(8)))
    assert [answer.content for answer, _ in results] == [ANSWER] * 8
    assert inner.calls == 1
    markers = [served(answer) for answer, _ in results]
    assert markers.count(None) == 1  # the call that computed it, in its own thread:
    assert inner.threads == [thread for (_, thread), marker in zip(results, markers, strict=True) if marker is None]
    assert all(marker == SHARED or marker["hit"] is True for marker in markers if marker is not None)
    assert lc_cache.engine.stats["stores"] == 1

    answers = chat.batch([OTHER] * 4, config={"max_concurrency": 4})
    assert [answer.content for answer in answers] == ["second call"] * 4
    assert inner.calls == 2


async def test_concurrent_ainvoke_in_other_partitions_are_not_merged(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    inner = chat_model("one", "two", sleep=0.05)
    chat = wrap(inner, lc_cache)
    pirate = [SystemMessage("You are a pirate."), HumanMessage(QUESTION)]
    lawyer = [SystemMessage("You are a lawyer."), HumanMessage(QUESTION)]
    answers = await asyncio.gather(chat.ainvoke(pirate), chat.ainvoke(lawyer))
    assert sorted(answer.content for answer in answers) == ["one", "two"]  # type: ignore[type-var]
    assert inner.calls == 2


async def test_astream_miss_streams_the_model_and_stores_the_assembled_message(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    inner = chat_model(ANSWER, "wrong")
    chat = wrap(inner, lc_cache)
    streamed = [chunk async for chunk in chat.astream(QUESTION)]
    assert len(streamed) > len(ANSWER) - 1  # FakeListChatModel streams one character per chunk
    assert added(streamed).content == ANSWER and inner.calls == 1
    assert all(served(chunk) is None for chunk in streamed)
    # the assembled message was stored: invoke and astream both serve it now
    assert (await chat.ainvoke(PARAPHRASE)).content == ANSWER
    replayed = [chunk async for chunk in chat.astream(PARAPHRASE)]
    assert inner.calls == 1
    assert len(replayed) > 2 and added(replayed).content == ANSWER
    metadata = served(added(replayed))
    assert metadata is not None and metadata["kind"] == "semantic"


def test_stream_miss_then_hit_sync(lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]) -> None:
    inner = chat_model(ANSWER, "wrong")
    chat = wrap(inner, lc_cache)
    streamed = list(chat.stream(QUESTION))
    assert added(streamed).content == ANSWER
    replayed = list(chat.stream(PARAPHRASE))
    assert inner.calls == 1
    assert [chunk.content for chunk in replayed[:3]] == ["The ", "capital ", "of "]
    assert added(replayed).content == ANSWER
    assert served(replayed[-1]) is not None and replayed[-1].chunk_position == "last"


async def test_a_set_llm_cache_entry_serves_the_stream(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    # LangChain's stream() never consults a BaseCache; the wrapper serves the same entries.
    plain = chat_model(ANSWER, cache=lc_cache)
    await plain.ainvoke(QUESTION)
    twin = chat_model(ANSWER)  # same class and parameters, so the same llm_string
    chat = wrap(twin, lc_cache)
    replayed = [chunk async for chunk in chat.astream(PARAPHRASE)]
    assert added(replayed).content == ANSWER
    assert (plain.calls, twin.calls) == (1, 0)


async def test_concurrent_identical_astream_calls_the_model_once(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    inner = chat_model(ANSWER, "second call", sleep=0.01)
    chat = wrap(inner, lc_cache)

    async def consume() -> str:
        return str(added([chunk async for chunk in chat.astream(QUESTION)]).content)

    assert await asyncio.gather(consume(), consume(), consume()) == [ANSWER] * 3
    assert inner.calls == 1


async def test_streamed_tool_calls_and_usage_round_trip(lc_cache: SemanticCache) -> None:
    message = AIMessage(
        content="Checking the weather.",
        tool_calls=[
            {"name": "get_weather", "args": {"city": "Paris", "days": 3}, "id": "call_1"},
            {"name": "get_time", "args": {"zone": "CET"}, "id": "call_2"},
        ],
        usage_metadata={"input_tokens": 12, "output_tokens": 7, "total_tokens": 19},
    )
    inner = ToolCallingFakeChatModel(messages=iter([message]))
    chat = wrap(inner, lc_cache)
    fresh = await chat.ainvoke("What's the weather and time in Paris?")
    replayed = added([chunk async for chunk in chat.astream("What is the weather and the time in Paris?")])
    assert inner.calls == 1
    assert fresh.tool_calls == message.tool_calls
    assert replayed.content == message.content
    assert replayed.tool_calls == message.tool_calls
    assert replayed.usage_metadata == message.usage_metadata


async def test_bind_tools_goes_through_the_inner_model_and_partitions(lc_cache: SemanticCache) -> None:
    def weather(city: str) -> str:
        """Weather in a city."""
        return city

    def news(city: str) -> str:
        """News of a city."""
        return city

    inner = ToolCallingFakeChatModel(messages=iter(["with weather", "with news"]))
    chat = wrap(inner, lc_cache)
    assert (await chat.bind_tools([weather]).ainvoke(QUESTION)).content == "with weather"
    assert (await chat.bind_tools([news]).ainvoke(QUESTION)).content == "with news"
    assert (await chat.bind_tools([weather]).ainvoke(PARAPHRASE)).content == "with weather"
    assert inner.calls == 2
    with pytest.raises(NotImplementedError):
        wrap(CountingChatModel(responses=["x"]), lc_cache).bind_tools([weather])


async def test_stream_abandoned_early_stores_nothing(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    inner = chat_model(ANSWER, "again", sleep=0.01)  # a model still streaming when the consumer leaves
    chat = wrap(inner, lc_cache)
    stream = chat.astream(QUESTION)
    first = await anext(stream)
    assert first.content == "T"
    await stream.aclose()
    assert lc_cache.engine.stats["stores"] == 0
    assert (await chat.ainvoke(QUESTION)).content == "again"
    assert inner.calls == 2


async def test_model_error_reaches_every_caller_and_stores_nothing(lc_cache: SemanticCache) -> None:
    inner = CountingChatModel(responses=[ANSWER], sleep=0.01, error_on_chunk_number=3)
    chat = wrap(inner, lc_cache)

    async def consume() -> list[AIMessageChunk]:
        return [chunk async for chunk in chat.astream(QUESTION)]

    outcomes = await asyncio.gather(consume(), consume(), return_exceptions=True)
    assert [type(outcome) for outcome in outcomes] == [FakeListChatModelError] * 2
    assert inner.calls == 1
    assert lc_cache.engine.stats["stores"] == 0


async def test_streams_a_model_that_cannot_stream(lc_cache: SemanticCache) -> None:
    inner = FakeMessagesListChatModel(responses=[AIMessage(ANSWER), AIMessage("second call")])
    chat = wrap(inner, lc_cache)
    assert added([chunk async for chunk in chat.astream(QUESTION)]).content == ANSWER
    assert added(list(chat.stream(OTHER))).content == "second call"
    assert added([chunk async for chunk in chat.astream(PARAPHRASE)]).content == ANSWER
    assert inner.i == 0  # both responses used once, then the cache answered (the fake cycles back to 0)
    assert lc_cache.engine.stats["stores"] == 2


async def test_with_structured_output_is_served_from_the_cache(lc_cache: SemanticCache) -> None:
    class Capital(BaseModel):
        """A capital city."""

        city: str

    call = {"name": "Capital", "args": {"city": "Paris"}, "id": "call_1"}
    inner = ToolCallingFakeChatModel(messages=iter([AIMessage("", tool_calls=[call])]))
    structured = wrap(inner, lc_cache).with_structured_output(Capital)
    assert await structured.ainvoke(QUESTION) == Capital(city="Paris")
    assert await structured.ainvoke(PARAPHRASE) == Capital(city="Paris")
    assert inner.calls == 1


async def test_unreadable_entry_is_answered_by_the_model_and_replaced(
    embedder: BagOfWordsEmbedder, chat_model: Callable[..., CountingChatModel]
) -> None:
    inner = chat_model(ANSWER, "streamed")
    async with CoreSemanticCache(embedder=embedder, threshold=0.8) as lenient:  # on_error="log"
        chat = SemanticCacheChatModel(model=inner, cache=lenient)
        request = request_for_messages([HumanMessage(QUESTION)], inner._get_llm_string())
        assert request is not None
        await lenient.store(request.question, [{"not": "a generation"}], request.scope)
        assert (await chat.ainvoke(QUESTION)).content == ANSWER
        assert (await chat.ainvoke(QUESTION)).content == ANSWER  # replaced: served now
        await lenient.store(request.question, ["garbage"], request.scope)
        assert added([chunk async for chunk in chat.astream(PARAPHRASE)]).content == "streamed"
        assert inner.calls == 2


async def test_reported_tokens_are_credited_to_later_hits(lc_cache: SemanticCache) -> None:
    usage = {"input_tokens": 12, "output_tokens": 7, "total_tokens": 19}
    inner = ToolCallingFakeChatModel(messages=iter([AIMessage("Paris.", usage_metadata=usage)] * 2))
    chat = wrap(inner, lc_cache)
    chat.invoke(QUESTION)  # a sync miss
    chat.invoke(PARAPHRASE)
    await chat.ainvoke(OTHER)  # an async miss
    await chat.ainvoke(OTHER)
    assert inner.calls == 2
    assert lc_cache.engine.stats.saved_tokens == 2 * 19


@pytest.mark.parametrize("sync", [True, False], ids=["invoke", "ainvoke"])
async def test_an_answer_json_cannot_hold_is_served_but_not_stored(
    lc_cache: SemanticCache, embedder: BagOfWordsEmbedder, sync: bool
) -> None:
    def unstorable() -> ToolCallingFakeChatModel:
        odd = AIMessage("Paris.", response_metadata={"logprob": -math.inf})
        return ToolCallingFakeChatModel(messages=iter([odd, AIMessage("again")]))

    async def ask(chat: SemanticCacheChatModel) -> AIMessage:
        return chat.invoke(QUESTION) if sync else await chat.ainvoke(QUESTION)

    inner = unstorable()
    async with CoreSemanticCache(embedder=embedder, threshold=0.8) as lenient:  # on_error="log"
        chat = SemanticCacheChatModel(model=inner, cache=lenient)
        assert (await ask(chat)).content == "Paris."
        assert lenient.stats["unstorable_answers"] == 1 and lenient.stats["stores"] == 0
        assert (await ask(chat)).content == "again"
        assert inner.calls == 2
    with pytest.raises(InvalidInputError):  # a cache asked to raise errors raises this one too
        await ask(wrap(unstorable(), lc_cache))
