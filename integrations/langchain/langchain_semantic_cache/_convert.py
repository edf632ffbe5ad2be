"""Translate LangChain's types to the engine's and back: prompt -> (question, Scope), generations <-> JSON.

Nothing here searches, stores or schedules; that is the engine's job.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core._api import suppress_langchain_beta_warning
from langchain_core.load import dumpd, load
from langchain_core.load.serializable import Serializable
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    ChatMessageChunk,
    FunctionMessage,
    FunctionMessageChunk,
    HumanMessage,
    HumanMessageChunk,
    SystemMessage,
    SystemMessageChunk,
    ToolMessage,
    ToolMessageChunk,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, GenerationChunk

from semantic_llm_cache import CacheHit, Scope

logger = logging.getLogger("langchain_semantic_cache")

CACHE_METADATA_KEY = "semantic_cache"
"""Key under which a served generation's `generation_info` and message `response_metadata` say how it was served."""

# Only plain data classes: loading one runs nothing but pydantic validation (never a model or a prompt template).
MESSAGE_CLASSES: tuple[type[Serializable], ...] = (
    HumanMessage,
    HumanMessageChunk,
    AIMessage,
    AIMessageChunk,
    SystemMessage,
    SystemMessageChunk,
    ToolMessage,
    ToolMessageChunk,
    ChatMessage,
    ChatMessageChunk,
    FunctionMessage,
    FunctionMessageChunk,
)
GENERATION_CLASSES: tuple[type[Serializable], ...] = (
    Generation,
    GenerationChunk,
    ChatGeneration,
    ChatGenerationChunk,
    *MESSAGE_CLASSES,
)
_HUMAN_ROLES = frozenset({"human", "user"})
_WORD = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True)
class CacheRequest:
    """What the engine sees of one LangChain call: the text to embed and the partition it lives in."""

    question: str
    scope: Scope


def _load(value: Any, allowed: Sequence[type[Serializable]]) -> Any:
    with suppress_langchain_beta_warning():  # `load` is marked beta; the warning says nothing to our users
        return load(value, allowed_objects=allowed)


def request_for_prompt(prompt: str, llm_string: str) -> CacheRequest | None:
    """The request for a prompt as `BaseCache` receives it; None when it carries no text to embed.

    A chat model's prompt is its serialized message list; anything else is a plain LLM prompt, embedded as is.
    """
    messages = _parse_messages(prompt)
    if messages is None:
        return CacheRequest(prompt, Scope(model=llm_string)) if prompt.strip() else None
    if not messages:  # a serialized LangChain payload we may not load: never fall back to embedding it
        return None
    return request_for_messages(messages, llm_string)


def _parse_messages(prompt: str) -> list[BaseMessage] | None:
    """The messages of a serialized message list; None for a plain prompt; [] for one that may not be loaded."""
    if not prompt.startswith("[{"):
        return None
    try:
        raw = json.loads(prompt)
    except ValueError:
        return None
    if not isinstance(raw, list) or not all(isinstance(item, dict) and "lc" in item for item in raw):
        return None
    try:
        messages = _load(raw, MESSAGE_CLASSES)
    except Exception as exc:  # disallowed class or malformed payload: uncacheable, never an error for the call
        logger.debug("prompt looks like serialized LangChain objects but is not a message list: %s", exc)
        return []
    return [message for message in messages if isinstance(message, BaseMessage)]


def request_for_messages(messages: Sequence[BaseMessage], llm_string: str) -> CacheRequest | None:
    """Embed the last human message's text; the rest of the conversation goes into the partition exactly.

    The question's own non-text parts (images, names, extra kwargs) stay in the partition too, with its text
    blanked. Message ids are dropped, as LangChain drops them before its own cache lookup.
    """
    position = next((index for index in range(len(messages) - 1, -1, -1) if _is_human(messages[index])), None)
    if position is None:
        return None
    question, remainder = _split_text(messages[position].content)
    if not question.strip():
        return None
    context: list[Any] = []
    for index, message in enumerate(messages):
        update: dict[str, Any] = {"id": None}
        if index == position:
            update["content"] = remainder
        context.append(dumpd(message.model_copy(update=update)))
    return CacheRequest(question, Scope(model=llm_string, context=context))


def _is_human(message: BaseMessage) -> bool:
    return isinstance(message, HumanMessage) or (isinstance(message, ChatMessage) and message.role in _HUMAN_ROLES)


def _split_text(content: str | list[str | dict[str, Any]]) -> tuple[str, str | list[str | dict[str, Any]]]:
    """(the text, the content with its text blanked but every other block and the layout kept)."""
    if isinstance(content, str):
        return content, ""
    texts: list[str] = []
    remainder: list[str | dict[str, Any]] = []
    for block in content:
        if isinstance(block, str):
            texts.append(block)
            remainder.append("")
        elif block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
            remainder.append({**block, "text": ""})
        else:
            remainder.append(block)
    return "\n".join(texts), remainder


# -- generations ----------------------------------------------------------------------------------------


def dump_generations(generations: Sequence[Generation]) -> list[Any]:
    """LangChain's own JSON of `generations`, without run-specific ids or a previous hit's cache marker."""
    dumped: list[Any] = []
    for generation in generations:
        info = {key: value for key, value in (generation.generation_info or {}).items() if key != CACHE_METADATA_KEY}
        update: dict[str, Any] = {"generation_info": info or None}
        if isinstance(generation, ChatGeneration):
            metadata = generation.message.response_metadata
            # a served message id would be shared by every later hit; LangGraph's reducers replace by id
            update["message"] = generation.message.model_copy(
                update={"id": None, "response_metadata": {k: v for k, v in metadata.items() if k != CACHE_METADATA_KEY}}
            )
        dumped.append(dumpd(generation.model_copy(update=update)))
    return dumped


def load_generations(value: Any) -> list[Generation]:
    """Inverse of dump_generations (only generation and message classes may be loaded)."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"a cached LangChain answer is a non-empty list of generations, got {type(value).__name__}")
    generations = _load(value, GENERATION_CLASSES)
    if not all(isinstance(generation, Generation) for generation in generations):
        raise ValueError("a cached LangChain answer holds something other than generations")
    return list(generations)


def total_tokens(generations: Sequence[Generation]) -> int | None:
    """The tokens the answer cost, from the messages' usage metadata (None when no model reported them)."""
    counts = [
        generation.message.usage_metadata["total_tokens"]
        for generation in generations
        if isinstance(generation, ChatGeneration)
        and isinstance(generation.message, AIMessage)
        and generation.message.usage_metadata
    ]
    return sum(counts) if counts else None


def hit_metadata(hit: CacheHit) -> dict[str, Any]:
    """How a generation was served: the match kind, its cosine similarity, the prompt it matched, its age."""
    return {
        "hit": True,
        "kind": hit.kind,
        "similarity": hit.similarity,
        "matched_prompt": hit.prompt,
        "age_seconds": hit.age,
    }


def mark_served(generations: list[Generation], metadata: dict[str, Any]) -> list[Generation]:
    """Record `metadata` in each generation's `generation_info` and, for chat generations, its message."""
    for generation in generations:
        generation.generation_info = {**(generation.generation_info or {}), CACHE_METADATA_KEY: metadata}
        if isinstance(generation, ChatGeneration):
            generation.message.response_metadata = {
                **generation.message.response_metadata,
                CACHE_METADATA_KEY: metadata,
            }
    return generations


# -- streaming ------------------------------------------------------------------------------------------


def replay_chunks(message: BaseMessage) -> list[AIMessageChunk]:
    """A cached message as the chunks a streaming model would have sent: the words, then the rest.

    The chunks add up to the message again: tool calls travel as tool-call chunks with JSON arguments, and
    the usage and response metadata come once, on the last chunk.
    """
    content = message.content
    chunks: list[AIMessageChunk] = []
    if isinstance(content, str):
        chunks.extend(AIMessageChunk(content=word, id=message.id) for word in _WORD.findall(content))
    elif content:
        chunks.append(AIMessageChunk(content=content, id=message.id))
    last: dict[str, Any] = {
        "content": "" if isinstance(content, str) else [],
        "id": message.id,
        "name": message.name,
        "additional_kwargs": message.additional_kwargs,
        "response_metadata": message.response_metadata,
        "chunk_position": "last",
    }
    if isinstance(message, AIMessage):
        calls: list[tuple[str | None, str | None, str | None]] = [
            (call["name"], json.dumps(call["args"]), call["id"]) for call in message.tool_calls
        ]
        calls += [(call["name"], call["args"], call["id"]) for call in message.invalid_tool_calls]
        last["tool_call_chunks"] = [
            {"name": name, "args": args, "id": call_id, "index": index, "type": "tool_call_chunk"}
            for index, (name, args, call_id) in enumerate(calls)
        ]
        last["usage_metadata"] = message.usage_metadata
    chunks.append(AIMessageChunk(**last))
    return chunks
