"""Fakes for the LlamaIndex integration tests: an LLM that counts its calls, a LlamaIndex embedding over the
bag-of-words test embedder, and an instrumentation handler that records events.

(A module with its own name: several test folders have a conftest.py, so `from conftest import` is ambiguous.)
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.llms import LLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback

from tests.fakes import BagOfWordsEmbedder

_PIECE = re.compile(r"\S+\s*")


class CountingLLM(LLM):
    """Answers "answer <n> to: <question>" (n counts the calls), natively in all eight methods.

    `calls` lists (method, question) per call; `delay` slows every async call, and every sync stream before its
    first chunk, so concurrent callers overlap.
    """

    model_name: str = "counting-model"
    temperature: float = 0.0
    is_chat: bool = False
    delay: float = 0.0
    _calls: list[tuple[str, str]] = PrivateAttr(default_factory=list)

    @property
    def calls(self) -> list[tuple[str, str]]:
        return self._calls

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=self.model_name, is_chat_model=self.is_chat)

    def _answer(self, method: str, question: str) -> str:
        self._calls.append((method, question))
        return f"answer {len(self._calls)} to: {question}"

    @staticmethod
    def _question(messages: Sequence[ChatMessage]) -> str:
        return messages[-1].content or ""

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._answer("complete", prompt))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        await asyncio.sleep(self.delay)
        return CompletionResponse(text=self._answer("acomplete", prompt))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        text = self._answer("stream_complete", prompt)

        def gen() -> CompletionResponseGen:
            time.sleep(self.delay)
            so_far = ""
            for piece in _PIECE.findall(text):
                so_far += piece
                yield CompletionResponse(text=so_far, delta=piece)

        return gen()

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        await asyncio.sleep(self.delay)
        text = self._answer("astream_complete", prompt)

        async def gen() -> CompletionResponseAsyncGen:
            so_far = ""
            for piece in _PIECE.findall(text):
                so_far += piece
                yield CompletionResponse(text=so_far, delta=piece)

        return gen()

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        text = self._answer("chat", self._question(messages))
        return ChatResponse(message=ChatMessage(role="assistant", content=text))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        await asyncio.sleep(self.delay)
        text = self._answer("achat", self._question(messages))
        return ChatResponse(message=ChatMessage(role="assistant", content=text))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        text = self._answer("stream_chat", self._question(messages))

        def gen() -> ChatResponseGen:
            time.sleep(self.delay)
            so_far = ""
            for piece in _PIECE.findall(text):
                so_far += piece
                yield ChatResponse(message=ChatMessage(role="assistant", content=so_far), delta=piece)

        return gen()

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        await asyncio.sleep(self.delay)
        text = self._answer("astream_chat", self._question(messages))

        async def gen() -> ChatResponseAsyncGen:
            so_far = ""
            for piece in _PIECE.findall(text):
                so_far += piece
                yield ChatResponse(message=ChatMessage(role="assistant", content=so_far), delta=piece)

        return gen()


class BagOfWordsEmbedding(BaseEmbedding):
    """The bag-of-words test embedder as a LlamaIndex BaseEmbedding (to prove any BaseEmbedding can embed)."""

    _words: BagOfWordsEmbedder = PrivateAttr(default_factory=BagOfWordsEmbedder)

    def _get_text_embedding(self, text: str) -> list[float]:
        return [float(value) for value in self._words.vector(text)]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)


class EventRecorder(BaseEventHandler):
    """Keeps every instrumentation event it is handed."""

    events: list[BaseEvent] = Field(default_factory=list)

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)
