"""Wrap user-supplied embedders: plain callables, LangChain `Embeddings`, LlamaIndex `BaseEmbedding`."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from semantic_llm_cache.embeddings.base import Embedder, Matrix, normalized_matrix
from semantic_llm_cache.errors import ConfigurationError

logger = logging.getLogger("semantic_llm_cache")

# Attributes that name the model behind an embedding object, most specific first, and the settings that change
# its vectors for one model (OpenAI's `dimensions`, a HuggingFace `revision`...).
_MODEL_ATTRIBUTES = ("model_name", "model_id", "model", "deployment", "deployment_name", "model_path")
_SETTING_ATTRIBUTES = ("dimensions", "dimension", "revision", "normalize", "truncate_dim", "embed_batch_size_dim")


def _model_identity(obj: Any) -> str | None:
    """`model[;setting=value...]` read from the object's model attributes, or None when it names no model."""
    model = next(
        (value for name in _MODEL_ATTRIBUTES if isinstance(value := getattr(obj, name, None), str) and value), None
    )
    if model is None:
        return None
    settings = [
        f"{name}={value}"
        for name in _SETTING_ATTRIBUTES
        if isinstance(value := getattr(obj, name, None), (int, str)) and not isinstance(value, bool)
    ]
    return ";".join([model, *settings])


def _unwrapped(function: Any) -> Any:
    """The function under any functools.partial layers."""
    while isinstance(function, functools.partial):
        function = function.func
    return function


def default_embedder_name(obj: Any, kind: str | None = None) -> str:
    """A name for an embedder given without `name=`: its type and the model it names.

    Two different models must never share a name (the name partitions the cache). When the object names no
    model (a plain function, a lambda, a partial, a class without a model attribute), nothing stable tells two
    of them apart, so the name is unique to this object: its entries are never shared with another object,
    process or restart. A warning says to pass `name=` to share them.
    """
    function = _unwrapped(obj)
    owner = getattr(function, "__self__", function)  # a bound method's instance holds the model's attributes
    qualified = getattr(function, "__qualname__", None) or type(function).__qualname__
    module = getattr(function, "__module__", None) or type(owner).__module__
    base = f"{kind}:" if kind else ""
    base += f"{module}.{qualified}"
    model = _model_identity(owner)
    if model is not None:
        return f"{base}:{model}"
    unique = f"{base}#{uuid.uuid4().hex[:16]}"
    logger.warning(
        "semantic cache: the embedder %s names no model, so its entries are private to this object (not shared "
        "with other processes or after a restart); pass name='<model id>' to share them",
        base,
    )
    return unique


class CallableEmbedder:
    """Any sync or async callable `texts -> vectors` as an Embedder.

    Sync callables run in a worker thread (`asyncio.to_thread`) so a slow one never blocks the event loop.
    `max_tokens` and `count_tokens` state the model's window: a prompt longer than that is cached exactly only,
    never matched on a vector of its first part. Without them the window is unknown and not checked.
    `name` identifies the model (it partitions the cache: two embedders with one name share entries, so give
    each model its own). Without it, the name comes from the model the object names (`model_name`, `model`...)
    or, failing that, is unique to this object (see `default_embedder_name`).
    """

    def __init__(
        self,
        function: Callable[[list[str]], Any],
        *,
        name: str | None = None,
        dimension: int | None = None,
        run_in_thread: bool = True,
        max_tokens: int | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        if not callable(function):
            raise ConfigurationError(f"embedder must be callable, got {type(function).__name__}")
        if (max_tokens is None) != (count_tokens is None):
            raise ConfigurationError("give max_tokens and count_tokens together (the window, and how to measure it)")
        self.max_tokens = max_tokens
        self._count_tokens = count_tokens
        self._function = function
        self._name = name or default_embedder_name(function)
        #: False when the name had to be made unique to this object (see default_embedder_name): no other
        #: process, and no later run, can read what it stores.
        self.stable_name = "#" not in self._name or name is not None
        self._dimension = dimension
        call_method = getattr(type(function), "__call__", None)  # noqa: B004 - an instance's async __call__
        self._is_async = inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(call_method)
        self._run_in_thread = run_in_thread

    @property
    def name(self) -> str:
        return self._name

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in the model's own tokenizer (only when `count_tokens` was given)."""
        return 0 if self._count_tokens is None else int(self._count_tokens(text))

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
            embeddings.aembed_documents,
            name=name or default_embedder_name(embeddings, "langchain"),
            dimension=dimension,
        )


class LlamaIndexEmbedder(CallableEmbedder):
    """A LlamaIndex `BaseEmbedding` (uses `aget_text_embedding_batch`)."""

    def __init__(self, embedding: Any, *, name: str | None = None, dimension: int | None = None) -> None:
        super().__init__(
            embedding.aget_text_embedding_batch,
            name=name or default_embedder_name(embedding, "llamaindex"),
            dimension=dimension,
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
