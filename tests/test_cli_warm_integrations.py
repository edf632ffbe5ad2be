"""`warm --for langchain|llamaindex --llm MODULE:ATTRIBUTE`: what the CLI warms, the integration serves, without
calling its model (issue 15: entries warmed with "model": "echo-1" were invisible to a LangChain model).

The integrations are imported from this worktree (not whichever copy the virtualenv's editable install names), so
the test checks the CLI against the integration code of the same commit.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from semantic_llm_cache import SemanticCache
from semantic_llm_cache.backends.url import backend_from_url
from semantic_llm_cache.cli import app
from tests.fakes import BagOfWordsEmbedder

REPOSITORY = Path(__file__).resolve().parents[1]
for _folder in ("integrations/llamaindex", "integrations/langchain"):
    if str(REPOSITORY / _folder) not in sys.path:
        sys.path.insert(0, str(REPOSITORY / _folder))

FAKE_EMBEDDER = "tests.fakes:BagOfWordsEmbedder"
MODEL_ANSWER = "the model was called"
WARMED = [
    {"prompt": "How do I reset my password?", "response": "Open Settings > Security."},
    {"prompt": "What are your opening hours?", "response": "9 to 5, Monday to Friday."},
]


def run(*arguments: str) -> Result:
    return CliRunner(env={"COLUMNS": "250"}).invoke(app, list(arguments))


def warm_for(integration: str, llm: str, tmp_path: Path, namespace: str = "default") -> str:
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps(record) + "\n" for record in WARMED), encoding="utf-8")
    url = f"sqlite:///{tmp_path}/cache.db"
    result = run("warm", url, str(records), "--embedder", FAKE_EMBEDDER, "--for", integration, "--llm", llm,
                 "--namespace", namespace)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"stored {len(WARMED)} entries" in result.stdout
    return url


def core_cache(url: str, namespace: str = "default") -> SemanticCache:
    return SemanticCache(backend_from_url(url), embedder=BagOfWordsEmbedder(), threshold=0.8, namespace=namespace,
                         on_error="raise")  # fmt: skip


# -- LangChain ------------------------------------------------------------------------------------------------

langchain_core = pytest.importorskip("langchain_core")


def _langchain_models() -> tuple[Any, Any]:
    from langchain_core.language_models import FakeListChatModel, FakeListLLM

    return FakeListChatModel(responses=[MODEL_ANSWER]), FakeListLLM(responses=[MODEL_ANSWER])


chat_model, completion_model = _langchain_models()


@pytest.fixture
def langchain_cache_of() -> Iterator[Any]:
    from langchain_core.globals import set_llm_cache

    langchain_semantic_cache = pytest.importorskip("langchain_semantic_cache")
    assert Path(langchain_semantic_cache.__file__).is_relative_to(REPOSITORY)

    def install(url: str, namespace: str = "default") -> Any:
        cache = langchain_semantic_cache.SemanticCache(cache=core_cache(url, namespace))
        set_llm_cache(cache)
        return cache

    try:
        yield install
    finally:
        set_llm_cache(None)


def test_warm_for_langchain_serves_a_chat_model_without_calling_it(tmp_path: Path, langchain_cache_of: Any) -> None:
    url = warm_for("langchain", "tests.test_cli_warm_integrations:chat_model", tmp_path, namespace="shop")
    langchain_cache_of(url, namespace="shop")
    answer = asyncio.run(chat_model.ainvoke("How do I reset my password?"))
    assert answer.content == "Open Settings > Security."
    paraphrase = chat_model.invoke("how do I reset my password please")  # a semantic hit too
    assert paraphrase.content == "Open Settings > Security."
    assert chat_model.invoke("Something never warmed?").content == MODEL_ANSWER  # and a miss calls the model


def test_warm_for_langchain_serves_the_caching_chat_model_wrapper_too(tmp_path: Path) -> None:
    from langchain_semantic_cache import SemanticCacheChatModel

    url = warm_for("langchain", "tests.test_cli_warm_integrations:chat_model", tmp_path)
    wrapper = SemanticCacheChatModel(model=chat_model, semantic_cache=core_cache(url))
    assert asyncio.run(wrapper.ainvoke("What are your opening hours?")).content == "9 to 5, Monday to Friday."
    streamed = "".join(str(chunk.content) for chunk in wrapper.stream("How do I reset my password?"))
    assert streamed == "Open Settings > Security."


@pytest.mark.parametrize("integration", ["langchain", "llamaindex"])
def test_warm_for_an_integration_puts_a_record_in_its_own_namespace(tmp_path: Path, integration: str) -> None:
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({**WARMED[0], "namespace": "tenant-7"}) + "\n" + json.dumps(WARMED[1]) + "\n")
    url = f"sqlite:///{tmp_path}/cache.db"
    model = "chat_model" if integration == "langchain" else "llamaindex_completion_model"
    result = run("warm", url, str(records), "--embedder", FAKE_EMBEDDER, "--for", integration, "--llm",
                 f"tests.test_cli_warm_integrations:{model}")  # fmt: skip
    assert result.exit_code == 0, result.output

    def ask(namespace: str, prompt: str) -> str:
        if integration == "langchain":
            from langchain_semantic_cache import SemanticCacheChatModel

            wrapper = SemanticCacheChatModel(model=chat_model, semantic_cache=core_cache(url, namespace))
            return str(wrapper.invoke(prompt).content)
        from llama_index.llms.semantic_cache import SemanticCacheLLM

        return SemanticCacheLLM(llm=llamaindex_completion_model, cache=core_cache(url, namespace)).complete(prompt).text

    assert ask("tenant-7", "How do I reset my password?") == "Open Settings > Security."
    assert ask("default", "How do I reset my password?") != "Open Settings > Security."  # another tenant's
    assert ask("default", "What are your opening hours?") == "9 to 5, Monday to Friday."
    assert ask("tenant-7", "What are your opening hours?") != "9 to 5, Monday to Friday."


def test_warm_for_langchain_serves_an_llm_without_calling_it(tmp_path: Path, langchain_cache_of: Any) -> None:
    url = warm_for("langchain", "tests.test_cli_warm_integrations:completion_model", tmp_path)
    langchain_cache_of(url)
    assert asyncio.run(completion_model.ainvoke("What are your opening hours?")) == "9 to 5, Monday to Friday."
    assert completion_model.invoke("Something never warmed?") == MODEL_ANSWER


def test_without_for_a_warmed_entry_is_not_in_the_integrations_partition(
    tmp_path: Path, langchain_cache_of: Any
) -> None:
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({**WARMED[0], "model": "echo-1"}) + "\n", encoding="utf-8")
    url = f"sqlite:///{tmp_path}/cache.db"
    assert run("warm", url, str(records), "--embedder", FAKE_EMBEDDER).exit_code == 0
    langchain_cache_of(url)
    model = _langchain_models()[0]
    assert model.invoke("How do I reset my password?").content == MODEL_ANSWER  # the miss, as documented


# -- LlamaIndex -----------------------------------------------------------------------------------------------


def _llamaindex_models() -> tuple[Any, Any]:
    try:
        from llama_index.core.base.llms.types import LLMMetadata
        from llama_index.core.llms import MockLLM
    except ImportError:
        return None, None

    class ChatMockLLM(MockLLM):
        """MockLLM that says it is a chat model (LlamaIndex keys its completions as chats)."""

        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(model_name="chat-mock", is_chat_model=True)

    return MockLLM(), ChatMockLLM()


llamaindex_completion_model, llamaindex_chat_model = _llamaindex_models()


@pytest.mark.parametrize("name", ["llamaindex_completion_model", "llamaindex_chat_model"])
def test_warm_for_llamaindex_serves_complete_without_calling_the_llm(tmp_path: Path, name: str) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.llms.types import ChatMessage, MessageRole
    from llama_index.llms import semantic_cache
    from llama_index.llms.semantic_cache import SemanticCacheLLM

    assert Path(semantic_cache.__file__).is_relative_to(REPOSITORY)
    inner = globals()[name]
    url = warm_for("llamaindex", f"tests.test_cli_warm_integrations:{name}", tmp_path)
    llm = SemanticCacheLLM(llm=inner, cache=core_cache(url))
    served = asyncio.run(llm.acomplete("How do I reset my password?"))
    assert served.text == "Open Settings > Security."  # MockLLM would have echoed the prompt
    assert llm.complete("how do I reset my password please").text == "Open Settings > Security."
    assert llm.complete("Something never warmed?").text == "Something never warmed?"  # a miss: MockLLM echoes
    if inner.metadata.is_chat_model:  # a chat model's complete(prompt) is chat([user: prompt]): served there too
        chat = llm.chat([ChatMessage(role=MessageRole.USER, content="What are your opening hours?")])
        assert chat.message.content == "9 to 5, Monday to Friday."


# -- mistakes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "line", "fragment"),
    [
        (["--for", "langchain"], WARMED[0], "--for and --llm go together"),
        (["--llm", "x:y"], WARMED[0], "--for and --llm go together"),
        (["--for", "haystack", "--llm", "x:y"], WARMED[0], "--for must be one of langchain, llamaindex"),
        (["--for", "langchain", "--llm", "tests.test_cli_warm_integrations:chat_model"], {**WARMED[0], "model": "m"},
         "holds only \"prompt\", \"response\" and optionally \"namespace\" (got model)"),
        (["--for", "langchain", "--llm", "tests.test_cli_warm_integrations:chat_model"], {**WARMED[0], "response": 3},
         "response must be the answer's text (a string), got 3"),
        (["--for", "langchain", "--llm", "tests.test_cli_warm_integrations:nothing_here"], WARMED[0],
         "cannot load --llm"),
        (["--for", "llamaindex", "--llm", "tests.test_cli_warm_integrations:chat_model"], WARMED[0],
         "--llm must name a LlamaIndex LLM, got FakeListChatModel"),
        (["--for", "langchain", "--llm", "tests.test_cli_warm_integrations:llamaindex_chat_model"], WARMED[0],
         "--llm must name a LangChain chat model or LLM"),
    ],
)  # fmt: skip
def test_warm_for_an_integration_names_each_mistake_in_one_line(
    tmp_path: Path, options: list[str], line: dict[str, Any], fragment: str
) -> None:
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps(line) + "\n", encoding="utf-8")
    result = run("warm", f"sqlite:///{tmp_path}/cache.db", str(records), "--embedder", FAKE_EMBEDDER, *options)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert not (tmp_path / "cache.db").exists()  # found before anything was opened
