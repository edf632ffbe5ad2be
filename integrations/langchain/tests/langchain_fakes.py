"""Fake LangChain models and embeddings for the integration tests: they count how often they are really called,
so a test that expects a hit asserts that the count did not move.

Test modules import helpers from here, never from a conftest: `conftest` is the name of several modules (the
root one and each test folder's), so `from conftest import ...` finds whichever was imported last.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel, FakeListChatModel, FakeListLLM, GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.rate_limiters import BaseRateLimiter
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import PrivateAttr

from tests.fakes import BagOfWordsEmbedder


class CallLog:
    """The calls that reached a fake model. Private, so a copy of the model shares it: SemanticCacheChatModel
    keeps a copy of its model with LangChain's cache turned off, and the test reads the counts off the original
    (a public field would be the copy's own)."""

    def __init__(self) -> None:
        self.calls = 0
        self.threads: list[int] = []


class CountingChatModel(FakeListChatModel):
    """FakeListChatModel that counts the calls that reached the model (invoke and stream alike).

    `threads` lists the thread of each invoke-style call.
    """

    _log: CallLog = PrivateAttr(default_factory=CallLog)

    @property
    def calls(self) -> int:
        return self._log.calls

    @property
    def threads(self) -> list[int]:
        return self._log.threads

    def _call(self, *args: Any, **kwargs: Any) -> str:
        self._log.calls += 1
        self._log.threads.append(threading.get_ident())
        return super()._call(*args, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        self._log.calls += 1
        yield from super()._stream(messages, stop, run_manager, **kwargs)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        self._log.calls += 1
        async for chunk in super()._astream(messages, stop, run_manager, **kwargs):
            yield chunk


class SerializableChatModel(BaseChatModel):
    """A chat model LangChain can serialize, as it does a provider's (ChatOpenAI, ChatAnthropic...): its fields
    are its configuration, so `dumpd` tells two configurations apart. It answers `answer` and counts calls."""

    answer: str
    temperature: float = 0.0
    _log: CallLog = PrivateAttr(default_factory=CallLog)

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @property
    def calls(self) -> int:
        return self._log.calls

    @property
    def _llm_type(self) -> str:
        return "serializable-fake"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._log.calls += 1
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=self.answer))])


class CountingLLM(FakeListLLM):
    calls: int = 0

    def _call(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        return super()._call(*args, **kwargs)

    async def _acall(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        return await super()._acall(*args, **kwargs)


class ToolCallingFakeChatModel(GenericFakeChatModel):
    """GenericFakeChatModel (scripted AIMessages, tool calls included) that counts calls and can bind tools."""

    _log: CallLog = PrivateAttr(default_factory=CallLog)

    @property
    def calls(self) -> int:
        return self._log.calls

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._log.calls += 1
        return super()._generate(messages, stop, run_manager, **kwargs)

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: str | None = None, **kwargs: Any) -> Runnable[Any, Any]:
        return self.bind(tools=[convert_to_openai_tool(tool) for tool in tools], **kwargs)


class CountingRateLimiter(BaseRateLimiter):
    """A rate limiter that never waits and counts how often it was asked."""

    def __init__(self) -> None:
        self.acquired = 0

    def acquire(self, *, blocking: bool = True) -> bool:
        self.acquired += 1
        return True

    async def aacquire(self, *, blocking: bool = True) -> bool:
        self.acquired += 1
        return True


class BagOfWordsEmbeddings(Embeddings):
    """A LangChain `Embeddings` over the shared bag-of-words fake (sync methods only, as many providers have)."""

    def __init__(self) -> None:
        self.fake = BagOfWordsEmbedder(name="bag-of-words-embeddings")
        self.documents: list[str] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.documents.extend(texts)
        return [self.fake.vector(text).tolist() for text in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.fake.vector(text).tolist()
