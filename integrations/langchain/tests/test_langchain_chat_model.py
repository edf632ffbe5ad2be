"""SemanticCacheChatModel: invoke/ainvoke/batch/stream/astream served from the cache, single-flight misses."""

from __future__ import annotations

import ast
import asyncio
import itertools
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import langchain_semantic_cache
import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModelError, FakeMessagesListChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    BaseMessageChunk,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import RunnableLambda
from langchain_fakes import CountingChatModel, CountingRateLimiter, ToolCallingFakeChatModel
from langchain_semantic_cache import CACHE_METADATA_KEY, SemanticCache, SemanticCacheChatModel
from langchain_semantic_cache._convert import request_for_messages
from pydantic import BaseModel, ValidationError

from semantic_llm_cache import InvalidInputError
from semantic_llm_cache import SemanticCache as CoreSemanticCache
from tests.fakes import BagOfWordsEmbedder

QUESTION = "What is the capital city of France?"
PARAPHRASE = "what is the capital of France"
OTHER = "How tall is Mount Everest in meters?"
ANSWER = "The capital of France is Paris."
INFO_KEYS = {"hit", "kind", "similarity", "matched_prompt", "age_seconds", "key", "shared", "prompt"}


def wrap(model: BaseChatModel, lc_cache: SemanticCache) -> SemanticCacheChatModel:
    return SemanticCacheChatModel(model=model, semantic_cache=lc_cache)


def served(message: AIMessage | BaseMessageChunk) -> dict[str, Any]:
    """How the cache served `message` (Resolution.info()): present on hits and misses alike."""
    value = message.response_metadata.get(CACHE_METADATA_KEY)
    assert isinstance(value, dict) and set(value) == INFO_KEYS, value
    return value


def kind(message: AIMessage | BaseMessageChunk) -> str:
    return str(served(message)["kind"])


def added(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


async def test_accepts_a_core_cache(cache: CoreSemanticCache, chat_model: Callable[..., CountingChatModel]) -> None:
    inner = chat_model(ANSWER, cache=False)
    chat = SemanticCacheChatModel(model=inner, semantic_cache=cache)
    assert isinstance(chat.semantic_cache, SemanticCache) and chat.semantic_cache.engine is cache
    assert chat.model is inner  # a model whose LangChain cache is off already is kept as given


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
    assert served(fresh) == {
        "hit": False,
        "kind": "miss",
        "similarity": None,
        "matched_prompt": None,
        "age_seconds": None,
        "key": served(fresh)["key"],  # where the answer was stored
        "shared": False,
        "prompt": QUESTION,
    }
    assert kind(other) == "miss" and served(other)["key"] != served(fresh)["key"]
    metadata = served(hit)
    assert metadata["hit"] is True and metadata["kind"] == "semantic" and 0.8 <= metadata["similarity"] < 1
    assert metadata["matched_prompt"] == QUESTION and metadata["prompt"] == PARAPHRASE
    assert metadata["key"] == served(fresh)["key"]  # the entry the miss stored
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
    assert [served(answer)["hit"] for answer in answers] == [True, False, True]


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
    assert sorted(kind(answer) for answer in answers) == ["miss"] + ["shared"] * 5  # one computed it
    assert all(served(answer)["hit"] is (kind(answer) == "shared") for answer in answers)
    assert lc_cache.engine.stats["stores"] == 1
    assert lc_cache.engine.stats["shared_hits"] == 5 and lc_cache.engine.stats["misses"] == 1


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
    kinds = [kind(answer) for answer, _ in results]
    assert kinds.count("miss") == 1  # the call that computed it, in its own thread:
    assert inner.threads == [
        thread for (_, thread), served_as in zip(results, kinds, strict=True) if served_as == "miss"
    ]
    assert set(kinds) <= {"miss", "shared", "exact"}
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
    assert [chunk.chunk_position for chunk in streamed].count("last") == 1
    assert kind(streamed[-1]) == "miss" and kind(added(streamed)) == "miss"
    assert all(CACHE_METADATA_KEY not in chunk.response_metadata for chunk in streamed[:-1])
    # the assembled message was stored: invoke and astream both serve it now
    assert (await chat.ainvoke(PARAPHRASE)).content == ANSWER
    replayed = [chunk async for chunk in chat.astream(PARAPHRASE)]
    assert inner.calls == 1
    assert len(replayed) > 2 and added(replayed).content == ANSWER
    assert kind(added(replayed)) == "semantic"


def test_stream_miss_then_hit_sync(lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]) -> None:
    inner = chat_model(ANSWER, "wrong")
    chat = wrap(inner, lc_cache)
    streamed = list(chat.stream(QUESTION))
    assert added(streamed).content == ANSWER
    replayed = list(chat.stream(PARAPHRASE))
    assert inner.calls == 1
    assert [chunk.content for chunk in replayed[:3]] == ["The ", "capital ", "of "]
    assert added(replayed).content == ANSWER
    assert kind(replayed[-1]) == "semantic"
    assert replayed[-1].chunk_position == "last"


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
    assert chat.model.i == 0  # type: ignore[attr-defined]  # both responses used once, then the cache answered
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
        chat = SemanticCacheChatModel(model=inner, semantic_cache=lenient)
        request = request_for_messages([HumanMessage(QUESTION)], inner._get_llm_string())
        assert request is not None
        await lenient.store(request.question, [{"not": "a generation"}], request.scope)
        assert (await chat.ainvoke(QUESTION)).content == ANSWER
        assert (await chat.ainvoke(QUESTION)).content == ANSWER  # replaced: served now
        await lenient.store(request.question, ["garbage"], request.scope)
        assert added([chunk async for chunk in chat.astream(PARAPHRASE)]).content == "streamed"
        assert added([chunk async for chunk in chat.astream(PARAPHRASE)]).content == "streamed"  # replaced
        assert inner.calls == 2
        assert lenient.stats["undecodable_entries"] == 2  # the engine read them, recomputed, replaced them


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
        chat = SemanticCacheChatModel(model=inner, semantic_cache=lenient)
        assert (await ask(chat)).content == "Paris."
        assert lenient.stats["unstorable_answers"] == 1 and lenient.stats["stores"] == 0
        assert (await ask(chat)).content == "again"
        assert inner.calls == 2
    with pytest.raises(InvalidInputError):  # a cache asked to raise errors raises this one too
        await ask(wrap(unstorable(), lc_cache))


# -- LangChain's own call path runs around the wrapper --------------------------------------------------------


def test_no_private_method_of_langchain_is_overridden() -> None:
    for name in ("_generate_with_cache", "_agenerate_with_cache"):
        assert getattr(SemanticCacheChatModel, name) is getattr(BaseChatModel, name)


async def test_rate_limiters_of_the_wrapper_and_of_the_model_apply(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    around, inside = CountingRateLimiter(), CountingRateLimiter()
    inner = chat_model(ANSWER, "8849 meters", rate_limiter=inside)
    chat = SemanticCacheChatModel(model=inner, semantic_cache=lc_cache, rate_limiter=around)
    await chat.ainvoke(QUESTION)
    chat.invoke(PARAPHRASE)  # a hit
    await chat.ainvoke(OTHER)
    assert inner.calls == 2
    assert around.acquired == 3  # the wrapper's: every call (LangChain's path)
    assert inside.acquired == 2  # the model's: only the calls that reached the model


async def test_output_version_of_the_wrapper_applies_to_misses_and_hits(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    inner = chat_model(ANSWER)
    chat = SemanticCacheChatModel(model=inner, semantic_cache=lc_cache, output_version="v1")
    fresh, hit = await chat.ainvoke(QUESTION), await chat.ainvoke(PARAPHRASE)
    assert fresh.content == hit.content == [{"type": "text", "text": ANSWER}]
    assert (kind(fresh), kind(hit), inner.calls) == ("miss", "semantic", 1)


async def test_an_invoke_under_a_streaming_handler_streams_its_tokens(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    """LangChain's `_should_stream`: astream_events (LangGraph's message stream alike) gets the tokens of an
    ainvoke inside a chain, live on a miss and replayed on a hit, from the wrapper's run only."""
    inner = chat_model(ANSWER)
    chat = wrap(inner, lc_cache)

    async def ask(question: str) -> AIMessage:
        return await chat.ainvoke(question)

    for question, served_as in ((QUESTION, "miss"), (PARAPHRASE, "semantic")):
        events = [event async for event in RunnableLambda(ask).astream_events(question, version="v2")]
        streamed = [event for event in events if event["event"] == "on_chat_model_stream"]
        assert len(streamed) > 2 and {event["name"] for event in streamed} == {"SemanticCacheChatModel"}
        assert "".join(str(event["data"]["chunk"].content) for event in streamed) == ANSWER
        (end,) = (event for event in events if event["event"] == "on_chat_model_end")
        assert kind(end["data"]["output"]) == served_as
    assert inner.calls == 1


# -- the cache is this model's only cache ---------------------------------------------------------------------


def test_the_cache_keyword_is_renamed_and_langchains_cache_stays_off(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    inner = chat_model(ANSWER)
    chat = SemanticCacheChatModel(model=inner, semantic_cache=lc_cache)
    assert chat.semantic_cache is lc_cache and chat.cache is False
    with pytest.warns(DeprecationWarning, match="semantic_cache") as warned:
        old_style = SemanticCacheChatModel(model=inner, cache=lc_cache)
    assert warned[0].filename == __file__  # points at the caller
    assert old_style.semantic_cache is lc_cache and old_style.cache is False
    with pytest.warns(DeprecationWarning):
        assert SemanticCacheChatModel(model=inner, cache=lc_cache.engine).semantic_cache.engine is lc_cache.engine
    for other in (None, True, InMemoryCache()):
        with pytest.raises(ValidationError, match="must stay False"):
            SemanticCacheChatModel(model=inner, semantic_cache=lc_cache, cache=other)
    with pytest.raises(ValidationError, match="once"):
        SemanticCacheChatModel(model=inner, semantic_cache=lc_cache, cache=lc_cache)


async def test_with_the_same_cache_set_globally_each_answer_is_stored_once(
    global_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    inner = chat_model(ANSWER, "second call")  # cache=None: LangChain would consult the global cache
    chat = wrap(inner, global_cache)
    assert (await chat.ainvoke(QUESTION)).content == ANSWER
    assert global_cache.engine.stats["stores"] == 1 and global_cache.engine.stats["misses"] == 1
    hit = chat.invoke(QUESTION)
    assert added([chunk async for chunk in chat.astream(PARAPHRASE)]).content == ANSWER
    assert inner.calls == 1 and global_cache.engine.stats["stores"] == 1
    assert kind(hit) == "exact"
    assert (await inner.ainvoke(PARAPHRASE)).content == ANSWER  # the model itself, through set_llm_cache
    assert inner.calls == 1
    assert inner.cache is None and chat.model.cache is False  # the caller's model is left as it was


async def test_a_global_cache_of_its_own_sees_nothing_of_the_wrappers_calls(
    global_cache: SemanticCache, embedder: BagOfWordsEmbedder, chat_model: Callable[..., CountingChatModel]
) -> None:
    own = SemanticCache(embedder=embedder, threshold=0.8, on_error="raise")
    inner = chat_model(ANSWER, "second call")
    chat = wrap(inner, own)
    assert [(await chat.ainvoke(QUESTION)).content, chat.invoke(PARAPHRASE).content] == [ANSWER, ANSWER]
    assert inner.calls == 1 and own.engine.stats["stores"] == 1
    assert global_cache.engine.stats["stores"] == 0 and global_cache.engine.stats["misses"] == 0


async def test_a_prompt_it_cannot_cache_goes_to_the_model_unmarked(
    lc_cache: SemanticCache, embedder: BagOfWordsEmbedder, chat_model: Callable[..., CountingChatModel]
) -> None:
    inner = chat_model("one", "two", "three")
    chat = wrap(inner, lc_cache)
    only_system = [SystemMessage("Tell a joke.")]
    answers = [await chat.ainvoke(only_system), chat.invoke(only_system), added(list(chat.stream(only_system)))]
    assert [answer.content for answer in answers] == ["one", "two", "three"]
    assert all(CACHE_METADATA_KEY not in answer.response_metadata for answer in answers)
    assert embedder.calls == 0 and lc_cache.engine.stats["stores"] == 0


# -- only what changes the answer is in the partition ---------------------------------------------------------


def _conversation(run: str, *, tool_result: str = "18 degrees", city: str = "Paris") -> list[BaseMessage]:
    """One visible conversation; `run` changes only what the model does not read (ids, metadata, usage)."""
    usage = {"input_tokens": len(run), "output_tokens": 3, "total_tokens": len(run) + 3}
    return [
        SystemMessage("Be brief.", id=f"{run}-system"),
        HumanMessage("What is the weather like?", id=f"{run}-human"),
        AIMessage(
            "",
            id=f"{run}-ai",
            tool_calls=[{"name": "get_weather", "args": {"city": city}, "id": f"call-{run}"}],
            response_metadata={"id": f"resp-{run}", "semantic_cache": {"hit": run == "b"}},
            usage_metadata=usage,  # type: ignore[arg-type]
        ),
        ToolMessage(tool_result, tool_call_id=f"call-{run}", id=f"{run}-tool", artifact={"raw": run}),
        AIMessage("18 degrees in Paris.", id=f"{run}-ai-2", response_metadata={"id": f"resp-{run}-2"}),
        HumanMessage(QUESTION, id=f"{run}-question"),
    ]


async def test_the_same_visible_history_with_other_ids_and_metadata_hits(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    inner = chat_model(ANSWER, "wrong")
    chat = wrap(inner, lc_cache)
    first = await chat.ainvoke(_conversation("a"))
    again = await chat.ainvoke(_conversation("b"))
    assert (again.content, inner.calls) == (ANSWER, 1)
    assert (kind(first), kind(again)) == ("miss", "exact")


async def test_what_the_model_reads_of_the_history_still_partitions(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    inner = chat_model("1", "2", "3", "4")
    chat = wrap(inner, lc_cache)
    other_reply = _conversation("a")
    other_reply[4] = AIMessage("It is freezing.")
    for conversation in (
        _conversation("a"),
        _conversation("a", tool_result="31 degrees"),
        _conversation("a", city="Lyon"),
        other_reply,
    ):
        assert kind(await chat.ainvoke(conversation)) == "miss"
    assert inner.calls == 4


async def test_a_served_message_fed_back_as_history_hits(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    inner = chat_model("Paris.", "Lyon.", "wrong")
    chat = wrap(inner, lc_cache)
    fresh = await chat.ainvoke([HumanMessage(QUESTION)])
    served_message = await chat.ainvoke([HumanMessage(PARAPHRASE)])
    follow_up = HumanMessage("And its second largest city?")
    assert (await chat.ainvoke([HumanMessage(QUESTION), fresh, follow_up])).content == "Lyon."
    again = await chat.ainvoke([HumanMessage(QUESTION), served_message, follow_up])
    assert (again.content, inner.calls) == ("Lyon.", 2)
    streamed = list(chat.stream([HumanMessage(QUESTION), added(list(chat.stream(PARAPHRASE))), follow_up]))
    assert (added(streamed).content, inner.calls) == ("Lyon.", 2)
    assert (kind(served_message), kind(again), kind(streamed[-1])) == ("semantic", "exact", "exact")


async def test_an_agent_loop_asked_again_calls_no_model(lc_cache: SemanticCache) -> None:
    usage = {"input_tokens": 20, "output_tokens": 5, "total_tokens": 25}
    call = {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}
    inner = ToolCallingFakeChatModel(
        messages=itertools.cycle(
            [
                AIMessage("", tool_calls=[call], response_metadata={"id": "resp_1"}, usage_metadata=usage),
                AIMessage("It is sunny in Paris.", response_metadata={"id": "resp_2"}, usage_metadata=usage),
            ]
        )
    )

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    agent = wrap(inner, lc_cache).bind_tools([get_weather])

    async def run(question: str) -> str:
        messages: list[BaseMessage] = [SystemMessage("Use the tools."), HumanMessage(question)]
        while True:
            reply = await agent.ainvoke(messages)
            messages.append(reply)
            if not isinstance(reply, AIMessage) or not reply.tool_calls:
                return str(reply.content)
            for tool_call in reply.tool_calls:
                messages.append(ToolMessage(get_weather(**tool_call["args"]), tool_call_id=str(tool_call["id"])))

    assert [await run("What is the weather in Paris?") for _ in range(3)] == ["It is sunny in Paris."] * 3
    assert inner.calls == 2


# -- streams are single-flight too ------------------------------------------------------------------------------


def test_concurrent_identical_sync_streams_call_the_model_once(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    inner = chat_model(ANSWER, "second call", sleep=0.01)
    chat = wrap(inner, lc_cache)
    start = threading.Barrier(4)

    def consume(_: int) -> AIMessageChunk:
        start.wait()
        return added(list(chat.stream(QUESTION)))

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(consume, range(4)))
    assert [answer.content for answer in answers] == [ANSWER] * 4
    assert inner.calls == 1 and lc_cache.engine.stats["stores"] == 1
    kinds = [kind(answer) for answer in answers]
    assert kinds.count("miss") == 1 and set(kinds) <= {"miss", "shared", "exact"}


async def test_a_sync_and_an_async_stream_share_one_model_call(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    inner = chat_model(ANSWER, "second call", sleep=0.01)
    chat = wrap(inner, lc_cache)

    async def consume() -> AIMessageChunk:
        return added([chunk async for chunk in chat.astream(QUESTION)])

    answers = await asyncio.gather(asyncio.to_thread(lambda: added(list(chat.stream(QUESTION)))), consume())
    assert [answer.content for answer in answers] == [ANSWER] * 2
    assert inner.calls == 1
    assert sorted(kind(answer) for answer in answers) in (["miss", "shared"], ["exact", "miss"])


# -- the adapter translates; the engine does the rest -----------------------------------------------------------


def test_the_adapter_schedules_nothing_itself() -> None:
    """No queues, threads, tasks or flights in the adapter; the chat model reaches the engine through resolve*."""
    package = Path(langchain_semantic_cache.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}  # fmt: skip
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"asyncio", "threading", "concurrent", "queue", "multiprocessing"}, path.name
        names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        names |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        assert not names & {"ensure_future", "create_task", "Queue", "Thread", "get_or_compute"}, path.name
        if path.name == "chat_model.py":
            assert not names & {"lookup", "store", "run_sync"}
            assert {"resolve", "resolve_sync", "resolve_stream", "resolve_stream_sync"} <= names
