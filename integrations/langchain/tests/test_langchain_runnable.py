"""SemanticCacheRunnable: a chain cached on its question; every other input, and the chain, must match exactly.

The RAG tests use the real bundled model: the failure they guard against (a long shared context dominating the
vector of the whole prompt) depends on it. The mechanics run over the bag-of-words fake on every backend.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.load import dumpd
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import (
    ConfigurableField,
    Runnable,
    RunnableLambda,
    RunnableParallel,
    RunnablePassthrough,
)
from langchain_fakes import CountingChatModel, SerializableChatModel
from langchain_semantic_cache import (
    CACHE_METADATA_KEY,
    SemanticCache,
    SemanticCacheRunnable,
    with_semantic_cache,
)
from pydantic import BaseModel

from semantic_llm_cache import InvalidInputError
from semantic_llm_cache import SemanticCache as CoreSemanticCache
from semantic_llm_cache.cache import default_embedder
from tests.fakes import BagOfWordsEmbedder

POLICY = (
    "Acme Corporation Employee Handbook, section 4: time off, remote work and equipment. This section applies to "
    "every permanent employee, full time or part time, from their first day of employment. Vacation: every "
    "employee receives 25 paid vacation days per calendar year, accrued monthly. Part-time employees receive "
    "vacation days in proportion to their contracted hours. Vacation requests should be submitted through the HR "
    "portal at least two weeks in advance and approved by your manager. Up to five unused vacation days may be "
    "carried over into the first quarter of the next year; any others expire on December 31. Sick leave: "
    "employees receive 10 paid sick days per year. For an absence longer than three consecutive working days, a "
    "doctor's note is required. Sick days do not carry over and are not paid out when you leave the company. "
    "Remote work: employees may work from home up to two days per week, with their manager's approval. Fully "
    "remote arrangements need the approval of both the department head and HR, and are reviewed every six "
    "months. While working remotely you must be reachable during core hours, from 10:00 to 16:00 in your local "
    "time zone. Equipment: every employee is issued a company laptop on their first day. Laptops are replaced "
    "every three years, or sooner if they fail and cannot be repaired. Accessories such as monitors, keyboards "
    "and headsets can be ordered through the IT portal, up to a budget of 500 euros every two years. Lost or "
    "stolen equipment must be reported to IT security within 24 hours. Parental leave: every parent, whatever "
    "their gender, receives 16 weeks of fully paid parental leave after the birth or adoption of a child. "
    "Parental leave can be taken in up to three blocks during the first year. Please tell your manager and HR at "
    "least eight weeks before your leave begins, so that your work can be planned and covered."
)  # 317 words
OTHER_POLICY = POLICY.replace("Acme", "Globex").replace("25 paid vacation days", "30 paid vacation days")
QUESTIONS = [
    "How many vacation days do I get?",
    "How many sick days do I get?",
    "Can I work from home?",
    "When is my laptop replaced?",
    "How long is parental leave?",
]
ANSWERS = ["25 days.", "10 days.", "Two days a week.", "Every three years.", "16 weeks."]
RAG_PROMPT = ChatPromptTemplate(
    [("system", "Answer only from the context."), ("human", "Context:\n{context}\n\nQuestion: {question}")]
)
HISTORY_PROMPT = ChatPromptTemplate(
    [
        ("system", "Answer only from the context."),
        MessagesPlaceholder("history"),
        ("human", "Context:\n{context}\n\nQuestion: {question}"),
    ]
)
INFO_KEYS = {"hit", "kind", "similarity", "matched_prompt", "age_seconds", "key", "shared", "prompt"}


class InfoRecorder(BaseCallbackHandler):
    """Collects the "semantic_cache" events: how each call was served (any output type)."""

    def __init__(self) -> None:
        self.infos: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if name == CACHE_METADATA_KEY:
            assert set(data) == INFO_KEYS, data
            with self.lock:
                self.infos.append(data)

    @property
    def kinds(self) -> list[str]:
        return [info["kind"] for info in self.infos]


class RunRecorder(BaseCallbackHandler):
    """Which runs started, with their tags, parents and metadata."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, UUID, UUID | None, list[str], dict[str, Any]]] = []

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.runs.append((kwargs.get("name") or "", run_id, kwargs.get("parent_run_id"), kwargs.get("tags") or [],
                          kwargs.get("metadata") or {}))  # fmt: skip

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.runs.append(("chat_model", run_id, kwargs.get("parent_run_id"), kwargs.get("tags") or [],
                          kwargs.get("metadata") or {}))  # fmt: skip


def rag_chain(model: Runnable[Any, Any], prompt: ChatPromptTemplate = RAG_PROMPT) -> Runnable[dict[str, Any], str]:
    return prompt | model | StrOutputParser()


def ask(question: str, context: Any = POLICY, **others: Any) -> dict[str, Any]:
    return {"context": context, "question": question, **others}


@pytest.fixture
def real_cache() -> SemanticCache:
    """The bundled all-MiniLM-L6-v2 model, the calibrated threshold, errors raised so they show."""
    return SemanticCache(cache=CoreSemanticCache(embedder=default_embedder(), on_error="raise"))


@pytest.fixture
def embedded_texts(real_cache: SemanticCache, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the real model is asked to embed through `real_cache`."""
    texts: list[str] = []
    embedder = real_cache.engine.embedder
    original = embedder.embed

    async def spy(batch: Sequence[str]) -> Any:
        texts.extend(batch)
        return await original(batch)

    monkeypatch.setattr(embedder, "embed", spy)
    return texts


def make_policy_bot(
    real_cache: SemanticCache, prompt: ChatPromptTemplate = RAG_PROMPT
) -> tuple[SemanticCacheRunnable[str], CountingChatModel]:
    model = CountingChatModel(responses=[*ANSWERS, "#6", "#7", "#8"])
    return SemanticCacheRunnable(rag_chain(model, prompt), semantic_cache=real_cache, name="policy-bot"), model


# -- 1. RAG: cached on the question, the context in the partition (the real model) ---------------------------


@pytest.mark.model
def test_rag_chain_answers_each_question_over_a_long_shared_context_with_its_own_answer(
    real_cache: SemanticCache, embedded_texts: list[str]
) -> None:
    bot, model = make_policy_bot(real_cache)
    events = InfoRecorder()
    config: Any = {"callbacks": [events]}
    assert len(POLICY.split()) > 300  # past the model's 256-token window as a whole prompt
    assert [bot.invoke(ask(question), config) for question in QUESTIONS] == ANSWERS
    assert model.calls == 5 and events.kinds == ["miss"] * 5

    assert bot.invoke(ask("How many sick days do I get?"), config) == "10 days."
    assert bot.invoke(ask("How many days of vacation do I get?"), config) == "25 days."  # a paraphrase
    assert model.calls == 5
    assert events.kinds[5:] == ["exact", "semantic"]
    paraphrase = events.infos[6]
    assert paraphrase["matched_prompt"] == "How many vacation days do I get?"
    assert real_cache.engine.config.threshold <= paraphrase["similarity"] < 1.0

    assert bot.invoke(ask("How many vacation days do I get?", context=OTHER_POLICY), config) == "#6"
    assert model.calls == 6 and events.kinds[-1] == "miss"  # another context: another partition

    # only the questions were ever embedded (or the words where two of them differ), never the context
    asked = [*QUESTIONS, "How many days of vacation do I get?"]
    assert embedded_texts and all(any(text in question for question in asked) for text in embedded_texts)


@pytest.mark.model
async def test_rag_chain_partitions_by_the_visible_chat_history(real_cache: SemanticCache) -> None:
    bot, model = make_policy_bot(real_cache, HISTORY_PROMPT)

    def history(office: str, run: str) -> list[BaseMessage]:
        return [
            HumanMessage(f"I work in the {office} office.", id=f"{run}-1"),
            AIMessage("Noted.", id=f"{run}-2", response_metadata={"id": f"resp-{run}"},
                      usage_metadata={"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}),
        ]  # fmt: skip

    question = "How many vacation days do I get?"
    assert await bot.ainvoke(ask(question, history=history("Berlin", "a"))) == ANSWERS[0]
    assert await bot.ainvoke(ask(question, history=history("Paris", "b"))) == ANSWERS[1]  # another history
    assert await bot.ainvoke(ask(question, history=history("Berlin", "c"))) == ANSWERS[0]  # other ids: a hit
    assert await bot.ainvoke(ask("How many days of vacation do I get?", history=history("Berlin", "d"))) == ANSWERS[0]
    assert model.calls == 2


# -- 3. every way to call it; single-flight -----------------------------------------------------------------

QUESTION = "What is the capital city of France?"
PARAPHRASE = "what is the capital of France"
ANSWER = "The capital of France is Paris."
CONTEXT = [Document("France is a country in Europe. Its capital is Paris.", metadata={"source": "atlas", "page": 3})]


def cached_chain(
    lc_cache: SemanticCache, *responses: str, name: str = "atlas-bot", **model_fields: Any
) -> tuple[SemanticCacheRunnable[str], CountingChatModel]:
    model = CountingChatModel(responses=list(responses) or [ANSWER, "#2", "#3"], **model_fields)
    return SemanticCacheRunnable(rag_chain(model), semantic_cache=lc_cache, name=name), model


async def test_invoke_then_every_other_way_is_served_from_the_cache(lc_cache: SemanticCache) -> None:
    bot, model = cached_chain(lc_cache)
    events = InfoRecorder()
    config: Any = {"callbacks": [events]}
    assert bot.invoke(ask(QUESTION, CONTEXT), config) == ANSWER
    assert await bot.ainvoke(ask(PARAPHRASE, CONTEXT), config) == ANSWER
    assert bot.batch([ask(QUESTION, CONTEXT), ask(PARAPHRASE, CONTEXT)], config) == [ANSWER, ANSWER]
    assert await bot.abatch([ask(QUESTION, CONTEXT), ask(PARAPHRASE, CONTEXT)], config) == [ANSWER, ANSWER]
    streamed = list(bot.stream(ask(PARAPHRASE, CONTEXT), config))
    astreamed = [chunk async for chunk in bot.astream(ask(QUESTION, CONTEXT), config)]
    assert "".join(streamed) == "".join(astreamed) == ANSWER
    assert len(streamed) == len(ANSWER.split())  # a replay: word by word
    assert model.calls == 1
    kinds = events.kinds  # a batch's two calls run concurrently: their events may come in either order
    assert kinds[:2] == ["miss", "semantic"] and kinds[6:] == ["semantic", "exact"]
    assert sorted(kinds[2:4]) == sorted(kinds[4:6]) == ["exact", "semantic"] and len(kinds) == 8


@pytest.mark.parametrize("way", ["stream", "astream"])
async def test_a_streamed_miss_is_stored_once_read_to_the_end(lc_cache: SemanticCache, way: str) -> None:
    bot, model = cached_chain(lc_cache)
    if way == "stream":
        chunks = list(bot.stream(ask(QUESTION, CONTEXT)))
    else:
        chunks = [chunk async for chunk in bot.astream(ask(QUESTION, CONTEXT))]
    assert "".join(chunks) == ANSWER and len(chunks) == len(ANSWER)  # live: the fake model streams characters
    assert bot.invoke(ask(PARAPHRASE, CONTEXT)) == ANSWER
    assert model.calls == 1 and lc_cache.engine.stats["stores"] == 1


async def test_a_stream_stopped_early_stores_nothing(lc_cache: SemanticCache) -> None:
    bot, model = cached_chain(lc_cache)
    stream = bot.stream(ask(QUESTION, CONTEXT))
    assert next(stream) == ANSWER[0]
    stream.close()
    assert bot.invoke(ask(QUESTION, CONTEXT)) == "#2"
    assert model.calls == 2


def test_concurrent_identical_invokes_in_threads_make_one_model_call(lc_cache: SemanticCache) -> None:
    bot, model = cached_chain(lc_cache, sleep=0.3)
    events = InfoRecorder()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: bot.invoke(ask(QUESTION, CONTEXT), {"callbacks": [events]}), range(4)))
    assert answers == [ANSWER] * 4
    assert model.calls == 1
    assert sorted(events.kinds) == ["miss", "shared", "shared", "shared"]


async def test_concurrent_identical_ainvokes_and_astreams_make_one_model_call(lc_cache: SemanticCache) -> None:
    bot, model = cached_chain(lc_cache, sleep=0.3)

    async def streamed() -> str:
        return "".join([chunk async for chunk in bot.astream(ask(QUESTION, CONTEXT))])

    answers = await asyncio.gather(*(bot.ainvoke(ask(QUESTION, CONTEXT)) for _ in range(3)), streamed())
    assert answers == [ANSWER] * 4
    assert model.calls == 1


async def test_a_message_output_carries_how_it_was_served(lc_cache: SemanticCache) -> None:
    model = CountingChatModel(responses=[ANSWER, "#2"])
    bot = SemanticCacheRunnable(RAG_PROMPT | model, semantic_cache=lc_cache, name="atlas-messages")
    fresh = await bot.ainvoke(ask(QUESTION, CONTEXT))
    hit = bot.invoke(ask(PARAPHRASE, CONTEXT))
    assert isinstance(fresh, AIMessage) and isinstance(hit, AIMessage)
    assert fresh.content == hit.content == ANSWER
    assert fresh.response_metadata[CACHE_METADATA_KEY]["kind"] == "miss"
    assert hit.response_metadata[CACHE_METADATA_KEY]["kind"] == "semantic"
    assert hit.id is None  # one run's message id is never served to another

    chunks = list(bot.stream(ask(QUESTION, CONTEXT)))
    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert total.content == ANSWER
    assert chunks[-1].response_metadata[CACHE_METADATA_KEY]["kind"] == "exact"

    live = [chunk async for chunk in bot.astream(ask("How tall is Mount Everest?", CONTEXT))]
    assert live[-1].response_metadata[CACHE_METADATA_KEY]["kind"] == "miss"
    served = bot.invoke(ask("How tall is Mount Everest?", CONTEXT))  # the assembled stream, stored
    assert (served.content, model.calls) == ("#2", 2)
    stored = [entry.response for _, entry in await lc_cache.engine.backend.iterate()]
    assert len(stored) == 2 and CACHE_METADATA_KEY not in str(stored) and "lc_run" not in str(stored)


async def test_outputs_with_messages_and_documents_round_trip(lc_cache: SemanticCache) -> None:
    model = CountingChatModel(responses=[ANSWER])
    chain = RunnableParallel(answer=RAG_PROMPT | model, sources=RunnableLambda(lambda inputs: inputs["context"]))
    bot = SemanticCacheRunnable(chain, semantic_cache=lc_cache, name="with-sources")
    fresh = bot.invoke(ask(QUESTION, CONTEXT))
    hit = await bot.ainvoke(ask(PARAPHRASE, CONTEXT))
    assert hit["sources"] == CONTEXT and hit["sources"] is not fresh["sources"]
    assert isinstance(hit["answer"], AIMessage) and hit["answer"].content == ANSWER
    assert model.calls == 1
    entries = [entry for _, entry in await lc_cache.engine.backend.iterate()]
    assert entries[0].response["format"] == "langchain"
    assert "lc_run" not in str(entries[0].response)  # no run ids stored


async def test_a_stream_of_other_chunks_is_not_stored_but_replays_an_invoked_answer(lc_cache: SemanticCache) -> None:
    calls: list[str] = []

    def answer(inputs: dict[str, Any]) -> dict[str, Any]:
        calls.append(inputs["question"])
        return {"answer": "Paris", "confidence": 0.9}

    bot = SemanticCacheRunnable(RunnableLambda(answer), semantic_cache=lc_cache, name="dicts")
    assert list(bot.stream(ask(QUESTION, CONTEXT))) == [{"answer": "Paris", "confidence": 0.9}]
    assert lc_cache.engine.stats["stores"] == 0  # how dict chunks add up is the chain's business: not guessed
    assert bot.invoke(ask(QUESTION, CONTEXT)) == {"answer": "Paris", "confidence": 0.9}
    assert [chunk async for chunk in bot.astream(ask(PARAPHRASE, CONTEXT))] == [{"answer": "Paris", "confidence": 0.9}]
    assert len(calls) == 2


def test_the_wrapped_chain_runs_with_the_callers_config_on_a_miss(lc_cache: SemanticCache) -> None:
    bot, model = cached_chain(lc_cache)
    runs = RunRecorder()
    config: Any = {"callbacks": [runs], "tags": ["rag"], "metadata": {"user": "ada"}}
    bot.invoke(ask(QUESTION, CONTEXT), config)
    (_, wrapper_id, _, tags, metadata), *children = runs.runs
    assert tags == ["rag"] and metadata["user"] == "ada"
    chat_runs = [run for run in children if run[0] == "chat_model"]
    assert len(chat_runs) == 1 and "rag" in chat_runs[0][3] and chat_runs[0][4]["user"] == "ada"
    sequence = next(run for run in children if run[0] == "RunnableSequence")
    assert sequence[2] == wrapper_id  # the chain is a child run of the wrapper's

    runs.runs.clear()
    bot.invoke(ask(PARAPHRASE, CONTEXT), config)
    assert [run[0] for run in runs.runs] == ["atlas-bot"]  # a hit: no chain, no model
    assert model.calls == 1


def test_configurable_fields_given_in_the_config_partition_answers(lc_cache: SemanticCache) -> None:
    terse = CountingChatModel(responses=["Paris."])
    chatty = CountingChatModel(responses=[ANSWER])
    model = terse.configurable_alternatives(ConfigurableField(id="llm"), default_key="terse", chatty=chatty)
    bot = SemanticCacheRunnable(rag_chain(model), semantic_cache=lc_cache, name="configurable")
    assert bot.invoke(ask(QUESTION, CONTEXT)) == "Paris."
    assert bot.invoke(ask(QUESTION, CONTEXT), {"configurable": {"llm": "chatty"}}) == ANSWER
    assert bot.invoke(ask(PARAPHRASE, CONTEXT), {"configurable": {"llm": "chatty", "thread_id": "t-1"}}) == ANSWER
    assert bot.invoke(ask(PARAPHRASE, CONTEXT)) == "Paris."
    assert (terse.calls, chatty.calls) == (1, 1)


def test_nested_after_retrieval_in_a_larger_chain(lc_cache: SemanticCache) -> None:
    bot, model = cached_chain(lc_cache)
    retrieved: list[str] = []

    def retrieve(question: str) -> list[Document]:
        retrieved.append(question)
        return CONTEXT

    pipeline = {"context": RunnableLambda(retrieve), "question": RunnablePassthrough()} | bot
    assert pipeline.invoke(QUESTION) == ANSWER
    assert "".join(pipeline.stream(PARAPHRASE)) == ANSWER
    assert model.calls == 1 and retrieved == [QUESTION, PARAPHRASE]  # retrieval runs; the model does not


def test_schemas_are_the_chains(lc_cache: SemanticCache) -> None:
    bot, _ = cached_chain(lc_cache)
    assert set(bot.get_input_schema().model_json_schema()["properties"]) == {"context", "question"}
    assert bot.get_output_schema().model_json_schema()["type"] == "string"
    assert dumpd(bot)["type"] == "not_implemented"  # the cache itself is never serialized


# -- 4. inputs with no exact form: the chain runs, nothing is stored ---------------------------------------


class Opaque:
    pass


class Answer(BaseModel):
    text: str


@pytest.mark.parametrize(
    "inputs",
    [
        ask(QUESTION, Opaque()),
        ask(QUESTION, [Document("x", metadata={"score": Opaque()})]),
        ask(QUESTION, CONTEXT, threshold=math.nan),
        ask(QUESTION, CONTEXT, options={1: "a"}),
        {"context": CONTEXT, "question": ["not", "text"]},
        {"context": CONTEXT},
        ask("   ", CONTEXT),
    ],
    ids=["object", "object-in-metadata", "nan", "non-string-key", "question-not-text", "no-question", "blank"],
)
def test_an_input_with_no_exact_form_runs_the_chain_and_stores_nothing(
    lc_cache: SemanticCache, inputs: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Any] = []
    chain = RunnableLambda(lambda values: seen.append(values) or f"answer {len(seen)}")
    bot = SemanticCacheRunnable(chain, semantic_cache=lc_cache, name="lambda")
    with caplog.at_level(logging.WARNING, logger="langchain_semantic_cache"):
        assert bot.invoke(inputs) == "answer 1"
        assert bot.invoke(inputs) == "answer 2"
        assert "".join(bot.stream(inputs)) == "answer 3"
    assert seen == [inputs] * 3
    assert lc_cache.engine.stats["stores"] == 0 and lc_cache.engine.stats["misses"] == 0
    warnings = [record.getMessage() for record in caplog.records if "without the cache" in record.getMessage()]
    assert len(warnings) <= 1  # once per reason (a blank question says nothing)


def test_a_non_dict_input_runs_the_chain(lc_cache: SemanticCache) -> None:
    bot = SemanticCacheRunnable(RunnableLambda(lambda text: text.upper()), semantic_cache=lc_cache, name="upper")
    assert bot.invoke("abc") == "ABC"  # type: ignore[arg-type]
    assert lc_cache.engine.stats["misses"] == 0


async def test_an_output_json_cannot_hold_is_returned_not_stored(embedder: BagOfWordsEmbedder) -> None:
    calls: list[int] = []

    def structured(inputs: dict[str, Any]) -> Answer:
        calls.append(1)
        return Answer(text="Paris")

    async with CoreSemanticCache(embedder=embedder, threshold=0.8) as lenient:
        bot = SemanticCacheRunnable(RunnableLambda(structured), semantic_cache=lenient, name="structured")
        assert bot.invoke(ask(QUESTION, CONTEXT)) == Answer(text="Paris")
        assert await bot.ainvoke(ask(QUESTION, CONTEXT)) == Answer(text="Paris")
        assert len(calls) == 2 and lenient.stats["unstorable_answers"] == 2 and lenient.stats["stores"] == 0
    async with CoreSemanticCache(embedder=embedder, threshold=0.8, on_error="raise") as strict:
        bot = SemanticCacheRunnable(RunnableLambda(structured), semantic_cache=strict, name="structured")
        with pytest.raises(InvalidInputError):
            bot.invoke(ask(QUESTION, CONTEXT))


async def test_an_unreadable_entry_is_computed_again(embedder: BagOfWordsEmbedder) -> None:
    async with CoreSemanticCache(embedder=embedder, threshold=0.8) as lenient:
        bot, model = cached_chain(SemanticCache(cache=lenient))
        bot.invoke(ask(QUESTION, CONTEXT))
        ((key, entry),) = await lenient.backend.iterate()
        entry.response = {"format": "pickle", "value": "gASVBQAAAAAAAACMAXiULg=="}
        await lenient.backend.set(key, entry)
        assert bot.invoke(ask(QUESTION, CONTEXT)) == "#2"
        assert model.calls == 2 and lenient.stats["undecodable_entries"] == 1


# -- 5. chains never share -----------------------------------------------------------------------------------


def test_two_chains_with_the_same_inputs_never_share(lc_cache: SemanticCache) -> None:
    first, first_model = cached_chain(lc_cache, "first", name="first")
    second, second_model = cached_chain(lc_cache, "second", name="second")
    assert first.invoke(ask(QUESTION, CONTEXT)) == "first"
    assert second.invoke(ask(QUESTION, CONTEXT)) == "second"
    other_prompt = ChatPromptTemplate([("human", "Reply in French.\n{context}\n{question}")])
    third = SemanticCacheRunnable(rag_chain(first_model, other_prompt), semantic_cache=lc_cache, name="first")
    assert third.invoke(ask(QUESTION, CONTEXT)) == "first"  # the same name, another prompt: not shared
    assert (first_model.calls, second_model.calls) == (2, 1)


def test_serializable_chains_are_told_apart_by_their_serialization(lc_cache: SemanticCache) -> None:
    def bot(temperature: float) -> tuple[SemanticCacheRunnable[str], SerializableChatModel]:
        model = SerializableChatModel(answer=f"at {temperature}", temperature=temperature)
        return with_semantic_cache(rag_chain(model), semantic_cache=lc_cache), model

    (cold, cold_model), (warm, warm_model) = bot(0.0), bot(0.7)
    assert cold.invoke(ask(QUESTION, CONTEXT)) == "at 0.0"
    assert warm.invoke(ask(QUESTION, CONTEXT)) == "at 0.7"
    again, again_model = bot(0.0)  # an equal chain, built again (another process, a restart): shares
    assert again.invoke(ask(PARAPHRASE, CONTEXT)) == "at 0.0"
    assert (cold_model.calls, warm_model.calls, again_model.calls) == (1, 1, 0)


def test_a_chain_with_no_serialization_and_no_name_is_private_to_its_wrapper(
    lc_cache: SemanticCache, caplog: pytest.LogCaptureFixture
) -> None:
    model = CountingChatModel(responses=["1", "2", "3"])
    chain = rag_chain(model)
    with caplog.at_level(logging.WARNING, logger="langchain_semantic_cache"):
        one = SemanticCacheRunnable(chain, semantic_cache=lc_cache)
        two = SemanticCacheRunnable(chain, semantic_cache=lc_cache)
    assert sum("pass name=" in record.getMessage() for record in caplog.records) == 2
    assert [one.invoke(ask(QUESTION, CONTEXT)), two.invoke(ask(QUESTION, CONTEXT))] == ["1", "2"]
    assert one.invoke(ask(PARAPHRASE, CONTEXT)) == "1"
    assert model.calls == 2


def test_namespaces_and_question_keys_are_checked(lc_cache: SemanticCache) -> None:
    chain = RunnableLambda(lambda values: "x")
    with pytest.raises(ValueError):
        SemanticCacheRunnable(chain, semantic_cache=lc_cache, name="x", namespace="")
    with pytest.raises(ValueError):
        SemanticCacheRunnable(chain, semantic_cache=lc_cache, name="x", question_key="")
    tenant_a = SemanticCacheRunnable(chain, semantic_cache=lc_cache, name="x", namespace="a")
    tenant_b = SemanticCacheRunnable(chain, semantic_cache=lc_cache, name="x", namespace="b")
    tenant_a.invoke(ask(QUESTION, CONTEXT))
    events = InfoRecorder()
    tenant_b.invoke(ask(QUESTION, CONTEXT), {"callbacks": [events]})
    assert events.kinds == ["miss"]


def test_accepts_a_core_cache_or_makes_one(cache: CoreSemanticCache) -> None:
    chain = RunnableLambda(lambda values: "x")
    assert SemanticCacheRunnable(chain, semantic_cache=cache, name="x").semantic_cache.engine is cache
    assert isinstance(SemanticCacheRunnable(chain, name="x").semantic_cache.engine, CoreSemanticCache)
