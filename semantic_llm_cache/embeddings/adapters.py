"""Wrap user-supplied embedders: plain callables, LangChain `Embeddings`, LlamaIndex `BaseEmbedding`."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from semantic_llm_cache.embeddings.base import Embedder, Matrix, normalized_matrix
from semantic_llm_cache.errors import ConfigurationError


def _describe(obj: Any) -> str:
    kind = type(obj)
    model = getattr(obj, "model_name", None) or getattr(obj, "model", None)
    base = f"{kind.__module__}.{kind.__qualname__}"
    return f"{base}:{model}" if isinstance(model, str) and model else base


class CallableEmbedder:
    """Any sync or async callable `texts -> vectors` as an Embedder.

    Sync callables run in a worker thread (`asyncio.to_thread`) so a slow one never blocks the event loop.
    `name` should identify the model (it partitions the cache); it defaults to the callable's qualified name.
    """

    def __init__(
        self,
        function: Callable[[list[str]], Any],
        *,
        name: str | None = None,
        dimension: int | None = None,
        run_in_thread: bool = True,
    ) -> None:
        if not callable(function):
            raise ConfigurationError(f"embedder must be callable, got {type(function).__name__}")
        self._function = function
        qualified = getattr(function, "__qualname__", None) or type(function).__qualname__
        self._name = name or f"{getattr(function, '__module__', None) or 'callable'}.{qualified}"
        self._dimension = dimension
        call_method = getattr(type(function), "__call__", None)  # noqa: B004 - an instance's async __call__
        self._is_async = inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(call_method)
        self._run_in_thread = run_in_thread

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int | None:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> Matrix:
        batch = list(texts)
        if self._is_async:
            raw = await self._function(batch)
        elif self._run_in_thread:
            raw = await asyncio.to_thread(self._function, batch)
        else:
            raw = self._function(batch)
            if inspect.isawaitable(raw):
                raw = await raw
        matrix = normalized_matrix(raw, len(batch), self._dimension)
        self._dimension = int(matrix.shape[1])
        return matrix


class LangChainEmbedder(CallableEmbedder):
    """A LangChain `Embeddings` object (uses `aembed_documents`: prompts are compared with prompts)."""

    def __init__(self, embeddings: Any, *, name: str | None = None, dimension: int | None = None) -> None:
        super().__init__(
            embeddings.aembed_documents, name=name or f"langchain:{_describe(embeddings)}", dimension=dimension
        )


class LlamaIndexEmbedder(CallableEmbedder):
    """A LlamaIndex `BaseEmbedding` (uses `aget_text_embedding_batch`)."""

    def __init__(self, embedding: Any, *, name: str | None = None, dimension: int | None = None) -> None:
        super().__init__(
            embedding.aget_text_embedding_batch, name=name or f"llamaindex:{_describe(embedding)}", dimension=dimension
        )


def as_embedder(obj: Any, *, name: str | None = None) -> Embedder:
    """Return `obj` as an Embedder: an Embedder as is; a LangChain or LlamaIndex embedding model; a callable."""
    if isinstance(obj, Embedder) and not callable(obj):
        return obj
    if hasattr(obj, "aembed_documents") and hasattr(obj, "embed_query"):
        return LangChainEmbedder(obj, name=name)
    if hasattr(obj, "aget_text_embedding_batch"):
        return LlamaIndexEmbedder(obj, name=name)
    if isinstance(obj, Embedder):
        return obj
    if callable(obj):
        return CallableEmbedder(obj, name=name)
    raise ConfigurationError(
        f"cannot use {type(obj).__name__} as an embedder: pass an Embedder, a LangChain Embeddings, a LlamaIndex "
        "BaseEmbedding, or a callable that maps a list of texts to a list of vectors"
    )
