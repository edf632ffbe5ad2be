"""Per-call cache options, delete by key and the temperature policy, through the LangChain adapters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.globals import set_llm_cache
from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableLambda
from langchain_fakes import CountingChatModel, SerializableChatModel
from langchain_semantic_cache import CACHE_METADATA_KEY, SemanticCache, SemanticCacheChatModel, SemanticCacheRunnable
from langchain_semantic_cache._options import temperature_in_llm_string

from semantic_llm_cache import InvalidInputError, NeverAbove
from semantic_llm_cache import SemanticCache as CoreSemanticCache
from tests.fakes import BagOfWordsEmbedder

QUESTION = "What is the capital city of France?"
PARAPHRASE = "what is the capital of France"


def info(message: Any) -> dict[str, Any]:
    value = message.response_metadata[CACHE_METADATA_KEY]
    assert isinstance(value, dict)
    return value


async def test_chat_model_takes_cache_options_per_call(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    model = chat_model("one", "two", "three", "four")
    chat = SemanticCacheChatModel(model=model, semantic_cache=lc_cache)
    first = await chat.ainvoke([HumanMessage(QUESTION)], cache_options={"where": {"doc": "v1"}, "ttl": 600})
    assert first.content == "one" and info(first)["kind"] == "miss"
    again = await chat.ainvoke([HumanMessage(PARAPHRASE)], cache_options={"where": {"doc": "v1"}})
    assert again.content == "one" and info(again)["kind"] == "semantic"
    strict = await chat.ainvoke([HumanMessage(PARAPHRASE)], cache_options={"threshold": 1.0})
    assert strict.content == "two" and info(strict)["kind"] == "miss"  # the paraphrase is below 1.0
    bypassed = chat.invoke([HumanMessage(QUESTION)], cache_options={"bypass": True})
    assert bypassed.content == "three"
    refreshed = chat.invoke([HumanMessage(QUESTION)], cache_options={"refresh": True})
    assert refreshed.content == "four"
    assert chat.invoke([HumanMessage(QUESTION)]).content == "four" and model.calls == 4
    bound = chat.bind(cache_options={"bypass": True})
    bound.invoke([HumanMessage(QUESTION)])
    assert model.calls == 5  # bound options apply to every call of the binding


def test_cache_options_never_reach_the_model_or_the_partition(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    model = chat_model("one", "two")
    chat = SemanticCacheChatModel(model=model, semantic_cache=lc_cache)
    chat.invoke([HumanMessage(QUESTION)], cache_options={"ttl": 60})
    # the same partition as a call without options: served
    assert info(chat.invoke([HumanMessage(QUESTION)]))["kind"] == "exact" and model.calls == 1
    with pytest.raises(InvalidInputError, match="unknown cache_options"):
        chat.invoke([HumanMessage(QUESTION)], cache_options={"treshold": 0.9})


async def test_streams_take_cache_options(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    model = chat_model("stream one", "stream two")
    chat = SemanticCacheChatModel(model=model, semantic_cache=lc_cache)
    streamed = [str(chunk.content) async for chunk in chat.astream([HumanMessage(QUESTION)])]
    assert "".join(streamed) == "stream one"
    fresh = "".join(
        str(chunk.content) for chunk in chat.stream([HumanMessage(QUESTION)], cache_options={"refresh": True})
    )
    assert fresh == "stream two" and model.calls == 2


async def test_runnable_takes_cache_options_from_its_config() -> None:
    calls: list[str] = []

    def answer(inputs: dict[str, Any]) -> str:
        calls.append(inputs["question"])
        return f"answer {len(calls)}"

    core = CoreSemanticCache(embedder=BagOfWordsEmbedder(), threshold=0.8, on_error="raise")
    cached = SemanticCacheRunnable(RunnableLambda(answer), question_key="question", semantic_cache=core)
    inputs = {"question": QUESTION, "context": "doc 1"}
    assert await cached.ainvoke(inputs) == "answer 1"
    assert await cached.ainvoke(inputs) == "answer 1"
    refresh = {"configurable": {"cache_options": {"refresh": True}}}
    assert await cached.ainvoke(inputs, refresh) == "answer 2"
    assert cached.invoke(inputs) == "answer 2" and len(calls) == 2


def test_delete_key_removes_what_a_hit_named(lc_cache: SemanticCache, chat_model: Callable[..., Any]) -> None:
    model = chat_model("one", "two")
    chat = SemanticCacheChatModel(model=model, semantic_cache=lc_cache)
    key = info(chat.invoke([HumanMessage(QUESTION)]))["key"]
    assert isinstance(key, str)
    assert lc_cache.delete_key(key) is True and lc_cache.delete_key(key) is False
    assert chat.invoke([HumanMessage(QUESTION)]).content == "two"


def test_temperature_policy_through_set_llm_cache_and_the_wrapper() -> None:
    core = CoreSemanticCache(
        embedder=BagOfWordsEmbedder(), threshold=0.8, on_error="raise", temperature_policy=NeverAbove(0.5)
    )
    lc_cache = SemanticCache(cache=core)
    hot = SerializableChatModel(answer="sampled", temperature=0.9)
    cold = SerializableChatModel(answer="deterministic", temperature=0.0)
    set_llm_cache(lc_cache)
    try:
        hot.invoke([HumanMessage(QUESTION)])
        hot.invoke([HumanMessage(QUESTION)])
        assert hot.calls == 2  # never served, never stored
        cold.invoke([HumanMessage(QUESTION)])
        cold.invoke([HumanMessage(QUESTION)])
        assert cold.calls == 1
    finally:
        set_llm_cache(None)
    wrapped = SemanticCacheChatModel(model=SerializableChatModel(answer="hot", temperature=0.0), semantic_cache=core)
    wrapped.invoke([HumanMessage(PARAPHRASE)], temperature=0.9)
    wrapped.invoke([HumanMessage(PARAPHRASE)], temperature=0.9)
    assert wrapped.model.calls == 2  # type: ignore[attr-defined]
    assert core.stats["temperature_skips"] >= 4


@pytest.mark.parametrize(
    ("llm_string", "expected"),
    [
        ('{"lc": 1, "kwargs": {"temperature": 0.7}}---[(\'stop\', None)]', 0.7),
        ("{}---[('_type', 'openai-chat'), ('stop', None), ('temperature', 0.2)]", 0.2),
        ("a repr string---[('stop', None)]", None),
        ("not json at all", None),
    ],
)
def test_reads_the_temperature_from_llm_string(llm_string: str, expected: float | None) -> None:
    assert temperature_in_llm_string(llm_string) == expected
