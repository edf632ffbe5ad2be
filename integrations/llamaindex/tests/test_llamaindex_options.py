"""Per-call cache options, delete by key and the temperature policy through SemanticCacheLLM."""

from __future__ import annotations

import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.llms.semantic_cache import CACHE_INFO_KEY, SemanticCacheLLM
from llamaindex_fakes import CountingLLM

from semantic_llm_cache import InvalidInputError, NeverAbove, SemanticCache
from tests.fakes import BagOfWordsEmbedder

QUESTION = "Tell me the capital city of France"
PARAPHRASE = "Tell me the capital of France"


def make_cache(**options: object) -> SemanticCache:
    return SemanticCache(embedder=BagOfWordsEmbedder(), threshold=0.8, on_error="raise", **options)  # type: ignore[arg-type]


async def test_call_kwargs_carry_cache_options() -> None:
    inner = CountingLLM()
    llm = SemanticCacheLLM(llm=inner, cache=make_cache())
    first = await llm.acomplete(QUESTION, cache_options={"where": {"doc": "v1"}, "ttl": 600})
    assert first.text == f"answer 1 to: {QUESTION}"
    hit = await llm.acomplete(PARAPHRASE, cache_options={"where": {"doc": "v1"}})
    assert hit.additional_kwargs[CACHE_INFO_KEY]["kind"] == "semantic"
    assert (await llm.acomplete(PARAPHRASE, cache_options={"where": {"doc": "v2"}})).text.startswith("answer 2")
    nearby = "Tell me the capital city of France now"
    assert llm.complete(nearby).additional_kwargs[CACHE_INFO_KEY]["kind"] == "semantic"
    assert llm.complete(nearby, cache_options={"threshold": 1.0}).text.startswith("answer 3")
    assert llm.complete(QUESTION, cache_options={"bypass": True}).text.startswith("answer 4")
    assert llm.complete(QUESTION, cache_options={"refresh": True}).text.startswith("answer 5")
    assert llm.complete(QUESTION).text.startswith("answer 5") and len(inner.calls) == 5
    # the options never reached the wrapped LLM's kwargs nor changed the partition
    chat = llm.chat([ChatMessage(role="user", content=QUESTION)], cache_options={"ttl": 60})
    assert chat.message.content.startswith("answer 6")
    assert llm.chat([ChatMessage(role="user", content=QUESTION)]).message.content.startswith("answer 6")
    streamed = "".join(r.delta or "" for r in llm.stream_complete(QUESTION, cache_options={"refresh": True}))
    assert streamed.startswith("answer 7")
    with pytest.raises(InvalidInputError, match="unknown cache_options"):
        llm.complete(QUESTION, cache_options={"bypas": True})


async def test_delete_key_and_temperature_policy() -> None:
    inner = CountingLLM()
    llm = SemanticCacheLLM(llm=inner, cache=make_cache(temperature_policy=NeverAbove(0.5)))
    key = llm.complete(QUESTION).additional_kwargs[CACHE_INFO_KEY]["key"]
    assert isinstance(key, str) and llm.delete_key(key) is True and await llm.adelete_key(key) is False
    assert llm.complete(QUESTION).text.startswith("answer 2")
    hot = SemanticCacheLLM(llm=CountingLLM(temperature=0.9), cache=llm.cache)
    hot.complete(QUESTION)
    hot.complete(QUESTION)
    assert len(hot.llm.calls) == 2  # type: ignore[attr-defined]
    llm.complete(PARAPHRASE, temperature=0.9)  # a call's own temperature counts too
    assert len(inner.calls) == 3
