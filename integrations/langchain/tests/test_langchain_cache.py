"""The semantic `BaseCache`: set_llm_cache and per-model cache=, partitions, serialization, sync and async."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from langchain_core.load import dumps
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, Generation
from langchain_core.prompts import ChatPromptTemplate
from langchain_fakes import BagOfWordsEmbeddings, CountingChatModel, CountingLLM, ToolCallingFakeChatModel
from langchain_semantic_cache import CACHE_METADATA_KEY, SemanticCache

from semantic_llm_cache import CacheBackendError, ConfigurationError
from semantic_llm_cache import SemanticCache as CoreSemanticCache
from tests.fakes import BagOfWordsEmbedder

ROOT = Path(__file__).resolve().parents[3]
QUESTION = "What is the capital city of France?"
PARAPHRASE = "what is the capital of France"
OTHER = "How tall is Mount Everest in meters?"
LLM_STRING = "[('_type', 'test-model'), ('stop', None)]"


INFO_KEYS = {"hit", "kind", "similarity", "matched_prompt", "age_seconds", "key", "shared", "prompt"}


def served_metadata(message: AIMessage) -> dict[str, Any]:
    """How the cache served `message` (Resolution.info()): present on hits and misses alike."""
    value = message.response_metadata.get(CACHE_METADATA_KEY)
    assert isinstance(value, dict) and set(value) == INFO_KEYS, value
    return value


# -- construction -----------------------------------------------------------------------------------------


async def test_built_from_a_core_cache_or_from_its_options(cache: CoreSemanticCache) -> None:
    assert SemanticCache(cache=cache).engine is cache
    built = SemanticCache(embedder=BagOfWordsEmbedder(), threshold=0.9, namespace="tenant-a")
    assert isinstance(built.engine, CoreSemanticCache)
    assert built.engine.config.threshold == 0.9
    assert built.engine.config.namespace == "tenant-a"
    with pytest.raises(ConfigurationError):
        SemanticCache(cache=cache, threshold=0.5)
    with pytest.raises(ConfigurationError):
        SemanticCache(cache="not a cache")  # type: ignore[arg-type]


# -- chat models through set_llm_cache and cache= -----------------------------------------------------------


async def test_paraphrase_is_served_from_cache_with_its_similarity(
    global_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    model = chat_model("Paris", "Berlin")
    first = await model.ainvoke(QUESTION)
    second = await model.ainvoke(PARAPHRASE)
    assert (first.content, second.content, model.calls) == ("Paris", "Paris", 1)
    assert served_metadata(first)["hit"] is False and served_metadata(first)["kind"] == "miss"
    served = served_metadata(second)
    assert served["hit"] is True and served["kind"] == "semantic"
    assert 0.8 <= served["similarity"] < 1.0  # type: ignore[operator]
    assert served["matched_prompt"] == QUESTION


async def test_different_question_misses(
    global_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    model = chat_model("Paris", "8849 meters")
    await model.ainvoke(QUESTION)
    answer = await model.ainvoke(OTHER)
    assert (answer.content, model.calls) == ("8849 meters", 2)
    stored = await global_cache.engine.lookup(OTHER, _scope_of(dumps([HumanMessage(OTHER)]), model._get_llm_string()))
    assert stored is not None
    assert served_metadata(answer) == {
        "hit": False,
        "kind": "miss",
        "similarity": None,
        "matched_prompt": None,
        "age_seconds": None,
        "key": stored.key,  # where the answer was stored
        "shared": False,
        "prompt": OTHER,
    }


def test_per_model_cache_field_and_sync_invoke(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    cached = chat_model("Paris", "Lyon", cache=lc_cache)
    uncached = chat_model("Paris", "Lyon")  # no global cache configured: never cached
    assert [cached.invoke(QUESTION).content, cached.invoke(PARAPHRASE).content] == ["Paris", "Paris"]
    assert [uncached.invoke(QUESTION).content, uncached.invoke(QUESTION).content] == ["Paris", "Lyon"]
    assert (cached.calls, uncached.calls) == (1, 2)
    exact = cached.invoke(QUESTION)
    assert served_metadata(exact) == {**served_metadata(exact), "kind": "exact", "similarity": 1.0}


async def test_two_models_never_share_or_overwrite_answers(
    global_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    model_a, model_b = chat_model("A1", "A2"), chat_model("B1", "B2")
    assert (await model_a.ainvoke(QUESTION)).content == "A1"
    assert (await model_b.ainvoke(QUESTION)).content == "B1"  # same prompt, other model: no hit, no overwrite
    assert (await model_a.ainvoke(QUESTION)).content == "A1"
    # langchain-redis 0.2.6: an exact entry of model A hid model B's valid paraphrase entry. Not here.
    assert (await model_b.ainvoke(PARAPHRASE)).content == "B1"
    assert (model_a.calls, model_b.calls) == (1, 1)


async def test_call_parameters_partition_answers(
    global_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    model = chat_model("cold", "hot", "hot again")
    assert (await model.ainvoke(QUESTION, temperature=0.0)).content == "cold"
    assert (await model.ainvoke(QUESTION, temperature=1.0)).content == "hot"
    assert (await model.ainvoke(PARAPHRASE, temperature=0.0)).content == "cold"
    assert (await model.ainvoke(QUESTION, temperature=0.0, stop=["\n"])).content == "hot again"
    assert model.calls == 3


async def test_system_prompts_and_earlier_turns_partition_answers(
    global_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    model = chat_model("Arr, Paris", "Paris, as stipulated", "Paris again")
    pirate = [SystemMessage("You are a pirate."), HumanMessage(QUESTION)]
    lawyer = [SystemMessage("You are a lawyer."), HumanMessage(QUESTION)]
    assert (await model.ainvoke(pirate)).content == "Arr, Paris"
    assert (await model.ainvoke(lawyer)).content == "Paris, as stipulated"
    assert (await model.ainvoke([SystemMessage("You are a pirate."), HumanMessage(PARAPHRASE)])).content == "Arr, Paris"
    assert (await model.ainvoke([SystemMessage("You are a lawyer."), HumanMessage(PARAPHRASE)])).content == (
        "Paris, as stipulated"
    )
    follow_up = [SystemMessage("You are a pirate."), HumanMessage("Hi"), AIMessage("Ahoy"), HumanMessage(QUESTION)]
    assert (await model.ainvoke(follow_up)).content == "Paris again"
    assert model.calls == 3


async def test_only_the_last_human_message_text_is_embedded(
    global_cache: SemanticCache, embedder: BagOfWordsEmbedder, chat_model: Callable[..., CountingChatModel]
) -> None:
    model = chat_model("Ahoy")
    conversation = [
        SystemMessage("You are a pirate."),
        HumanMessage("Hello there"),
        AIMessage("Hi"),
        HumanMessage(QUESTION),
    ]
    await model.ainvoke(conversation)
    await model.ainvoke([*conversation[:-1], HumanMessage(PARAPHRASE)])
    assert embedder.texts and set(embedder.texts) <= {QUESTION, PARAPHRASE}
    assert not any("lc" in text or "{" in text for text in embedder.texts)


async def test_prompt_templates_cache_on_the_filled_question(
    global_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    template = ChatPromptTemplate.from_messages([("system", "Answer as {persona}."), ("human", "{question}")])
    chain = template | chat_model("Paris", "other")
    model = chain.last
    first = await chain.ainvoke({"persona": "a guide", "question": QUESTION})
    again = await chain.ainvoke({"persona": "a guide", "question": PARAPHRASE})
    other = await chain.ainvoke({"persona": "a poet", "question": PARAPHRASE})
    assert [first.content, again.content, other.content] == ["Paris", "Paris", "other"]
    assert model.calls == 2


async def test_multimodal_question_keeps_its_images_in_the_partition(
    global_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    model = chat_model("a cat", "a dog")

    def ask(text: str, image: str) -> list[HumanMessage]:
        return [
            HumanMessage(content=[{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image}}])
        ]

    assert (await model.ainvoke(ask("What animal is in this picture?", "https://x/cat.png"))).content == "a cat"
    assert (await model.ainvoke(ask("What animal is in this photo?", "https://x/dog.png"))).content == "a dog"
    assert (await model.ainvoke(ask("What animal is in this photo?", "https://x/cat.png"))).content == "a cat"
    assert model.calls == 2


async def test_conversation_without_human_text_is_not_cached(
    global_cache: SemanticCache, embedder: BagOfWordsEmbedder, chat_model: Callable[..., CountingChatModel]
) -> None:
    model = chat_model("one", "two")
    only_system = [SystemMessage("Tell a joke.")]
    assert [(await model.ainvoke(only_system)).content, (await model.ainvoke(only_system)).content] == ["one", "two"]
    assert embedder.calls == 0
    assert global_cache.engine.stats["stores"] == 0


async def test_history_is_partitioned_by_what_the_model_reads(
    global_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    """Message ids, response and usage metadata (the cache's own hit info included) never split a partition:
    a message the cache served, fed back as history, finds the answer given after the fresh one."""
    model = chat_model("Paris.", "Lyon.", "wrong")
    fresh = await model.ainvoke([HumanMessage(QUESTION)])
    served = await model.ainvoke([HumanMessage(PARAPHRASE)])
    assert (served_metadata(fresh)["kind"], served_metadata(served)["kind"]) == ("miss", "semantic")
    follow_up = HumanMessage("And its second largest city?")
    assert (await model.ainvoke([HumanMessage(QUESTION), fresh, follow_up])).content == "Lyon."
    served.id, served.response_metadata["id"] = "another-run", "resp-2"
    again = await model.ainvoke([HumanMessage(QUESTION, id="h-1"), served, follow_up])
    assert (again.content, served_metadata(again)["kind"], model.calls) == ("Lyon.", "exact", 2)


# -- stored values ------------------------------------------------------------------------------------------


async def test_tool_calls_and_usage_metadata_round_trip(global_cache: SemanticCache) -> None:
    message = AIMessage(
        content="",
        tool_calls=[{"name": "get_weather", "args": {"city": "Paris", "days": 3}, "id": "call_1"}],
        usage_metadata={"input_tokens": 12, "output_tokens": 7, "total_tokens": 19},
        response_metadata={"model_name": "fake-1", "finish_reason": "tool_calls"},
    )
    model = ToolCallingFakeChatModel(messages=iter([message]))  # a second model call would raise StopIteration
    fresh = await model.ainvoke("What's the weather in Paris for three days?")
    served = await model.ainvoke("What is the weather in Paris for three days?")
    assert model.calls == 1
    assert served.tool_calls == fresh.tool_calls == message.tool_calls
    assert isinstance(served, AIMessage) and served.usage_metadata is not None
    assert {key: served.usage_metadata[key] for key in ("input_tokens", "output_tokens", "total_tokens")} == {  # type: ignore[literal-required]
        "input_tokens": 12,
        "output_tokens": 7,
        "total_tokens": 19,
    }
    assert served.response_metadata["model_name"] == "fake-1"
    assert served_metadata(served)["hit"] is True
    assert global_cache.engine.stats["stores"] == 1


async def test_bound_tools_partition_answers(global_cache: SemanticCache) -> None:
    def weather(city: str) -> str:
        """Weather in a city."""
        return city

    def news(city: str) -> str:
        """News of a city."""
        return city

    model = ToolCallingFakeChatModel(messages=iter(["with weather", "with news"]))
    assert (await model.bind_tools([weather]).ainvoke(QUESTION)).content == "with weather"
    assert (await model.bind_tools([news]).ainvoke(QUESTION)).content == "with news"
    assert (await model.bind_tools([weather]).ainvoke(PARAPHRASE)).content == "with weather"
    assert model.calls == 2


async def test_stored_value_is_langchain_json_and_a_hit_is_a_list(lc_cache: SemanticCache) -> None:
    prompt = dumps([HumanMessage(QUESTION)])
    generation = ChatGeneration(message=AIMessage("Paris", id="run-1"), generation_info={"finish_reason": "stop"})
    await lc_cache.aupdate(prompt, LLM_STRING, [generation])
    entry = await lc_cache.engine.lookup(QUESTION, _scope_of(prompt))
    assert entry is not None
    stored = entry.response
    assert json.loads(json.dumps(stored)) == stored
    assert stored[0]["id"] == ["langchain", "schema", "output", "ChatGeneration"]
    assert stored[0]["kwargs"]["message"]["kwargs"].get("id") is None  # never serve one run's id to another
    hit = await lc_cache.alookup(prompt, LLM_STRING)
    assert isinstance(hit, list) and isinstance(hit[0], ChatGeneration)
    assert hit[0].message.content == "Paris"
    assert hit[0].generation_info is not None and hit[0].generation_info["finish_reason"] == "stop"
    assert hit[0].generation_info[CACHE_METADATA_KEY]["kind"] == "exact"


def _scope_of(prompt: str, llm_string: str = LLM_STRING):  # type: ignore[no-untyped-def]
    from langchain_semantic_cache._convert import request_for_prompt

    request = request_for_prompt(prompt, llm_string)
    assert request is not None
    return request.scope


async def test_unreadable_entry_is_a_miss_or_an_error_when_asked(
    cache: CoreSemanticCache, embedder: BagOfWordsEmbedder
) -> None:
    prompt = dumps([HumanMessage(QUESTION)])
    scope = _scope_of(prompt)
    # a serialized object of a class that may not be loaded (a prompt template runs code on load)
    forged = [json.loads(dumps(ChatPromptTemplate.from_messages([("human", "{x}")])))]
    async with CoreSemanticCache(embedder=embedder, threshold=0.8) as lenient:
        await lenient.store(QUESTION, forged, scope)
        assert await SemanticCache(cache=lenient).alookup(prompt, LLM_STRING) is None
    await cache.store(QUESTION, forged, scope)
    with pytest.raises(CacheBackendError):
        await SemanticCache(cache=cache).alookup(prompt, LLM_STRING)


async def test_serialized_objects_other_than_messages_are_never_loaded_nor_embedded(
    lc_cache: SemanticCache, embedder: BagOfWordsEmbedder
) -> None:
    payload = dumps([ChatPromptTemplate.from_messages([("human", "{x}")])])
    assert await lc_cache.alookup(payload, LLM_STRING) is None
    await lc_cache.aupdate(payload, LLM_STRING, [Generation(text="x")])
    assert embedder.calls == 0 and lc_cache.engine.stats["stores"] == 0


async def test_unstorable_generation_is_skipped_unless_errors_are_raised(
    cache: CoreSemanticCache, embedder: BagOfWordsEmbedder
) -> None:
    bad = [Generation(text="x", generation_info={"logprob": -math.inf})]
    async with CoreSemanticCache(embedder=embedder, threshold=0.8) as lenient:
        await SemanticCache(cache=lenient).aupdate(QUESTION, LLM_STRING, bad)
        assert lenient.stats["stores"] == 0
    with pytest.raises(ValueError):
        await SemanticCache(cache=cache).aupdate(QUESTION, LLM_STRING, bad)


# -- plain LLMs ---------------------------------------------------------------------------------------------


async def test_plain_llm_prompt_is_embedded_as_is(global_cache: SemanticCache, embedder: BagOfWordsEmbedder) -> None:
    llm = CountingLLM(responses=["Paris", "8849 m"])
    await llm.agenerate([QUESTION])
    result = await llm.agenerate([PARAPHRASE, OTHER])
    served, fresh = (generations[0] for generations in result.generations)
    assert (served.text, fresh.text, llm.calls) == ("Paris", "8849 m", 2)
    assert served.generation_info is not None
    assert served.generation_info[CACHE_METADATA_KEY]["kind"] == "semantic"
    assert fresh.generation_info is not None and fresh.generation_info[CACHE_METADATA_KEY]["kind"] == "miss"
    assert embedder.texts[0] == QUESTION and PARAPHRASE in embedder.texts


def test_plain_llm_sync(lc_cache: SemanticCache) -> None:
    llm = CountingLLM(responses=["Paris", "other"], cache=lc_cache)
    assert [llm.invoke(QUESTION), llm.invoke(PARAPHRASE), llm.invoke(OTHER)] == ["Paris", "Paris", "other"]
    assert llm.calls == 2


# -- async is native; sync works everywhere -----------------------------------------------------------------


async def test_async_methods_never_use_a_thread_pool(lc_cache: SemanticCache, monkeypatch: pytest.MonkeyPatch) -> None:
    import langchain_core.caches

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("BaseCache fell back to run_in_executor")

    monkeypatch.setattr(langchain_core.caches, "run_in_executor", refuse)
    threads_before = {thread.ident for thread in threading.enumerate()}
    await lc_cache.aupdate(QUESTION, LLM_STRING, [Generation(text="Paris")])
    hit = await lc_cache.alookup(PARAPHRASE, LLM_STRING)
    assert hit is not None and hit[0].text == "Paris"
    await lc_cache.aclear()
    assert await lc_cache.alookup(QUESTION, LLM_STRING) is None
    assert {thread.ident for thread in threading.enumerate()} == threads_before


async def test_sync_methods_inside_a_running_event_loop(
    lc_cache: SemanticCache, chat_model: Callable[..., CountingChatModel]
) -> None:
    asyncio.get_running_loop()  # as in a Jupyter cell
    lc_cache.update(QUESTION, LLM_STRING, [Generation(text="Paris")])
    hit = lc_cache.lookup(PARAPHRASE, LLM_STRING)
    assert hit is not None and hit[0].text == "Paris"
    model = chat_model("Rome", cache=lc_cache)
    assert [model.invoke(QUESTION).content, model.invoke(PARAPHRASE).content] == ["Rome", "Rome"]
    assert model.calls == 1
    lc_cache.clear()
    assert lc_cache.lookup(QUESTION, LLM_STRING) is None


def test_sync_methods_from_many_threads_share_one_loop(lc_cache: SemanticCache) -> None:
    questions = [f"question number {index} about topic {index * 7}" for index in range(24)]

    def work(question: str) -> str:
        lc_cache.update(question, LLM_STRING, [Generation(text=f"answer to {question}")])
        hit = lc_cache.lookup(question, LLM_STRING)
        assert hit is not None
        return hit[0].text

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(work, questions))
    assert answers == [f"answer to {question}" for question in questions]
    loop_threads = [thread for thread in threading.enumerate() if thread.name == "semantic-llm-cache-sync"]
    assert len(loop_threads) == 1


def test_sync_methods_from_a_plain_script() -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from langchain_core.globals import set_llm_cache
        from langchain_core.language_models import FakeListChatModel
        from langchain_semantic_cache import SemanticCache
        from tests.fakes import BagOfWordsEmbedder

        set_llm_cache(SemanticCache(embedder=BagOfWordsEmbedder(), threshold=0.8, on_error="raise"))
        model = FakeListChatModel(responses=["Paris", "wrong"])
        first = model.invoke({QUESTION!r})
        second = model.invoke({PARAPHRASE!r})
        print(first.content, second.content, second.response_metadata["semantic_cache"]["kind"])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Paris", "Paris", "semantic"]


async def test_clear_deletes_this_caches_namespace(embedder: BagOfWordsEmbedder) -> None:
    shared = CoreSemanticCache(embedder=embedder, threshold=0.8, namespace="tenant-a")
    tenant_a = SemanticCache(cache=shared)
    tenant_b = SemanticCache(cache=CoreSemanticCache(backend=shared.backend, embedder=embedder, namespace="tenant-b"))
    await tenant_a.aupdate(QUESTION, LLM_STRING, [Generation(text="a")])
    await tenant_b.aupdate(QUESTION, LLM_STRING, [Generation(text="b")])
    await tenant_a.aclear()
    assert await tenant_a.alookup(QUESTION, LLM_STRING) is None
    assert await tenant_b.alookup(QUESTION, LLM_STRING) is not None
    await tenant_a.aclear(namespace=None)
    assert await tenant_b.alookup(QUESTION, LLM_STRING) is None
    with pytest.raises(TypeError):
        await tenant_a.aclear(everything=True)


# -- any LangChain Embeddings as the embedder ---------------------------------------------------------------


async def test_langchain_embeddings_as_the_embedder(chat_model: Callable[..., CountingChatModel]) -> None:
    embeddings = BagOfWordsEmbeddings()
    lc_cache = SemanticCache(embedder=embeddings, threshold=0.8, on_error="raise")
    model = chat_model("Paris", "wrong", cache=lc_cache)
    assert [(await model.ainvoke(QUESTION)).content, (await model.ainvoke(PARAPHRASE)).content] == ["Paris", "Paris"]
    assert model.calls == 1
    assert set(embeddings.documents) == {QUESTION, PARAPHRASE}  # the texts, never JSON
    assert lc_cache.engine.embedder.name.startswith("langchain:")


# -- the real bundled model ---------------------------------------------------------------------------------


@pytest.mark.model
async def test_real_model_paraphrase_hit_and_different_question_miss() -> None:
    lc_cache = SemanticCache(on_error="raise")
    model = CountingChatModel(responses=["Use the reset link.", "Go to settings."], cache=lc_cache)
    assert (await model.ainvoke("How do I reset my password?")).content == "Use the reset link."
    served = await model.ainvoke("How can I reset my password?")
    assert served.content == "Use the reset link."
    metadata = served_metadata(served)
    assert metadata["kind"] == "semantic"
    assert lc_cache.engine.config.threshold <= metadata["similarity"] < 1.0  # type: ignore[operator]
    assert (await model.ainvoke("How do I delete my account?")).content == "Go to settings."
    assert model.calls == 2


def test_never_cache_passes_through_the_options_and_keeps_card_numbers_out(
    chat_model: Callable[..., CountingChatModel],
) -> None:
    card = "The card on file is 4111 1111 1111 1111."
    lc_cache = SemanticCache(embedder=BagOfWordsEmbedder(), threshold=0.8)  # never_cache on by default
    model = chat_model(card, card, cache=lc_cache)
    assert [model.invoke(QUESTION).content, model.invoke(QUESTION).content] == [card, card]
    assert model.calls == 2 and lc_cache.engine.stats["never_cache_payment_card"] == 2
    allowed = SemanticCache(embedder=BagOfWordsEmbedder(), threshold=0.8, never_cache=False)
    other = chat_model(card, card, cache=allowed)
    assert [other.invoke(QUESTION).content, other.invoke(QUESTION).content] == [card, card] and other.calls == 1
