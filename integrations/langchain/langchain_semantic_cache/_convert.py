"""Translate LangChain's types to the engine's and back: prompt -> (question, Scope), generations <-> JSON, and
a chain's inputs -> an exact partition, its outputs <-> JSON.

Nothing here searches, stores or schedules; that is the engine's job.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from langchain_core._api import suppress_langchain_beta_warning
from langchain_core.documents import Document
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
from langchain_core.messages.utils import message_chunk_to_message
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, GenerationChunk

from semantic_llm_cache import Computed, Scope

logger = logging.getLogger("langchain_semantic_cache")

CACHE_METADATA_KEY = "semantic_cache"
"""Key under which a generation's `generation_info` and its message's `response_metadata` say how the cache served
it: `semantic_llm_cache.Resolution.info(question)` (hit, kind, similarity, matched_prompt, age_seconds, key, shared,
prompt)."""

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
AnyGeneration = TypeVar("AnyGeneration", bound=Generation)
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
        messages = _load([_without_unread_fields(item) for item in raw], MESSAGE_CLASSES)
    except Exception as exc:  # disallowed class or malformed payload: uncacheable, never an error for the call
        logger.debug("prompt looks like serialized LangChain objects but is not a message list: %s", exc)
        return []
    return [message for message in messages if isinstance(message, BaseMessage)]


def _without_unread_fields(item: dict[str, Any]) -> dict[str, Any]:
    """A serialized message without the fields no partition uses (see `visible_history`), before it is loaded:
    LangChain serves a cached AIMessage with `usage_metadata={"total_cost": 0}`, which does not load back."""
    kwargs = item.get("kwargs")
    if item.get("type") != "constructor" or not isinstance(kwargs, dict):
        return item
    unread = {"id", "response_metadata", "usage_metadata"}
    return {**item, "kwargs": {name: value for name, value in kwargs.items() if name not in unread}}


def request_for_messages(messages: Sequence[BaseMessage], llm_string: str) -> CacheRequest | None:
    """Embed the last human message's text; what the model reads of the rest of the conversation goes into the
    partition exactly (see `visible_history`).

    The question's own non-text parts (images, its name) stay in the partition too, with its text blanked.
    """
    position = next((index for index in range(len(messages) - 1, -1, -1) if _is_human(messages[index])), None)
    if position is None:
        return None
    question, remainder = _split_text(messages[position].content)
    if not question.strip():
        return None
    return CacheRequest(question, Scope(model=llm_string, context=visible_history(messages, position, remainder)))


def visible_history(
    messages: Sequence[BaseMessage], question_at: int, question_remainder: str | list[str | dict[str, Any]]
) -> list[Any]:
    """What changes the answer of each message: its role, content, name, tool calls and tool results.

    Left out, because the model's answer does not depend on them: message ids, `response_metadata` (the
    provider's response id, the cache's own `semantic_cache` info), `usage_metadata` and a tool result's
    `artifact`. Tool-call ids are random per run, so each is replaced by its order of first appearance: a tool
    result still points at its own call, and the same conversation held with other ids falls in one partition.
    """
    label = ToolCallLabels()
    return [
        visible_message(message, label, question_remainder if index == question_at else message.content)
        for index, message in enumerate(messages)
    ]


class ToolCallLabels:
    """Tool-call ids replaced by their order of first appearance (`call-0`, `call-1`...): one instance per
    conversation, so a tool result and its call get the same label wherever they appear in it."""

    def __init__(self) -> None:
        self._labels: dict[str, str] = {}

    def __call__(self, call_id: Any) -> Any:
        if not isinstance(call_id, str):
            return call_id
        return self._labels.setdefault(call_id, f"call-{len(self._labels)}")


def visible_message(original: BaseMessage, label: Callable[[Any], Any], content: Any) -> Any:
    """What the model reads of one message (see `visible_history`), with `content` as its content."""
    message = message_chunk_to_message(original)
    visible: dict[str, Any] = {
        "role": message.role if isinstance(message, ChatMessage) else message.type,
        "content": content,
    }
    if message.name is not None:
        visible["name"] = message.name
    if message.additional_kwargs:
        visible["additional_kwargs"] = _with_labelled_tool_calls(message.additional_kwargs, label)
    if isinstance(message, AIMessage):
        if message.tool_calls:
            visible["tool_calls"] = [
                {"name": call["name"], "args": call["args"], "id": label(call["id"])} for call in message.tool_calls
            ]
        if message.invalid_tool_calls:
            visible["invalid_tool_calls"] = [
                {"name": call["name"], "args": call["args"], "id": label(call["id"]), "error": call["error"]}
                for call in message.invalid_tool_calls
            ]
    elif isinstance(message, ToolMessage):
        visible["tool_call_id"] = label(message.tool_call_id)
        visible["status"] = message.status
    return dumpd(visible)


def _with_labelled_tool_calls(extra: dict[str, Any], label: Callable[[Any], Any]) -> dict[str, Any]:
    """`additional_kwargs` with the ids of its raw (OpenAI-format) `tool_calls` labelled as the parsed ones."""
    raw_calls = extra.get("tool_calls")
    if not isinstance(raw_calls, list):
        return extra
    calls = [{**call, "id": label(call.get("id"))} if isinstance(call, dict) else call for call in raw_calls]
    return {**extra, "tool_calls": calls}


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


def with_cache_info(generations: list[AnyGeneration], info: dict[str, Any]) -> list[AnyGeneration]:
    """Record how the answer was served (`Resolution.info()`) in each generation's `generation_info` and, for
    chat generations, its message's `response_metadata`, under CACHE_METADATA_KEY."""
    for generation in generations:
        generation.generation_info = {**(generation.generation_info or {}), CACHE_METADATA_KEY: info}
        if isinstance(generation, ChatGeneration):
            generation.message.response_metadata = {**generation.message.response_metadata, CACHE_METADATA_KEY: info}
    return generations


def chunk_with_cache_info(chunk: AIMessageChunk, info: dict[str, Any]) -> AIMessageChunk:
    """A copy of a stream's last chunk saying how the answer was served (the chunk itself may be stored)."""
    return chunk.model_copy(update={"response_metadata": {**chunk.response_metadata, CACHE_METADATA_KEY: info}})


def info_chunk(info: dict[str, Any]) -> AIMessageChunk:
    """An empty last chunk saying how the answer was served, for a stream that sent no last chunk."""
    return AIMessageChunk(content="", response_metadata={CACHE_METADATA_KEY: info}, chunk_position="last")


# -- the chat-model wrapper's answers -------------------------------------------------------------------


def chat_generations(generations: Sequence[Generation]) -> list[ChatGeneration]:
    """Chat generations as they are (a plain generation, e.g. from old cache data, becomes an AIMessage)."""
    return [
        generation
        if isinstance(generation, ChatGeneration)
        else ChatGeneration(message=AIMessage(content=generation.text), generation_info=generation.generation_info)
        for generation in generations
    ]


def encode_chat_answer(generations: Sequence[ChatGeneration]) -> Computed:
    """A chat answer for the engine: LangChain's JSON of it and the tokens it cost (an empty answer is shared
    with concurrent identical calls but not stored)."""
    return Computed(dump_generations(generations), tokens=total_tokens(generations), store=bool(generations))


def decode_chat_answer(value: Any) -> list[ChatGeneration]:
    """Inverse of encode_chat_answer; raises for an entry that is not a LangChain answer."""
    return [] if value == [] else chat_generations(load_generations(value))


def assemble_stream(chunks: Sequence[AIMessageChunk]) -> Computed | None:
    """The answer a stream added up to, for the engine to store (None, nothing, for an empty stream)."""
    if not chunks:
        return None
    merged: AIMessageChunk = functools.reduce(operator.add, chunks)
    return encode_chat_answer([ChatGeneration(message=message_chunk_to_message(merged))])


def replay_stream(value: Any) -> list[AIMessageChunk]:
    """A stored chat answer as the chunks of a stream; raises for an entry that is not a LangChain answer."""
    generations = decode_chat_answer(value)
    if not generations:
        raise ValueError("a cached LangChain answer to replay holds no generation")
    return replay_chunks(generations[0].message)


def as_chunks(message: BaseMessage) -> list[AIMessageChunk]:
    """A model that cannot stream yields its whole message once (not a chunk): split it as a replay would."""
    return [message] if isinstance(message, AIMessageChunk) else replay_chunks(message)


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


# -- chains (SemanticCacheRunnable) -------------------------------------------------------------------------

# A chain's output is loaded back as messages and documents only (plain data classes, as above).
OUTPUT_CLASSES: tuple[type[Serializable], ...] = (*MESSAGE_CLASSES, Document)
_MAX_DEPTH = 100  # as the engine's JSON values; deeper (or self-referencing) inputs are not cached


class UncacheableInput(ValueError):
    """A chain input with no exact JSON form: the call runs the chain without the cache (never a guess).

    `kind` names the reason in a few words (the same for every input that fails the same way)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def canonical_inputs(inputs: Mapping[Any, Any]) -> dict[str, Any]:
    """The exact, JSON form of a chain's inputs that keeps only what changes the answer: a message as
    `visible_message` (role, content, name, tool calls and results; tool-call ids labelled once for the whole
    input), a Document as its page_content and metadata, JSON values as they are. Raises UncacheableInput for
    anything else (objects, NaN, non-string keys).

    The form is unambiguous: a dict with an "lc" key is one of the typed forms below, and an input dict that has
    one itself is wrapped (as is a tuple), so no two inputs that could be answered differently share a form.
    """
    label = ToolCallLabels()
    canonical: dict[str, Any] = {}
    for name, value in inputs.items():
        if not isinstance(name, str):
            raise UncacheableInput(f"the input has a non-string key {_shown(name)}", "non-string key")
        canonical[name] = _canonical(value, label, repr(name), 0)
    return canonical


def _canonical(value: Any, label: ToolCallLabels, where: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise UncacheableInput(f"input {where} nests more than {_MAX_DEPTH} levels deep (or contains itself)", "depth")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UncacheableInput(f"input {where} is {value}, which JSON cannot hold", "non-finite number")
        return value
    if isinstance(value, BaseMessage):
        visible = visible_message(value, label, value.content)
        if _has_unserializable(visible):
            raise UncacheableInput(
                f"input {where} is a message whose content holds objects that are not JSON", "message"
            )
        return {"lc": 1, "type": "message", "message": visible}
    if isinstance(value, Document):
        metadata = _canonical(value.metadata, label, f"{where}.metadata", depth + 1)
        return {"lc": 1, "type": "document", "page_content": value.page_content, "metadata": metadata}
    if isinstance(value, (list, tuple)):
        items = [_canonical(item, label, f"{where}[{index}]", depth + 1) for index, item in enumerate(value)]
        return items if isinstance(value, list) else {"lc": 1, "type": "tuple", "items": items}
    if isinstance(value, dict):
        fields: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise UncacheableInput(f"input {where} has a non-string key {_shown(key)}", "non-string key")
            fields[key] = _canonical(item, label, f"{where}[{key!r}]", depth + 1)
        return {"lc": 1, "type": "dict", "fields": fields} if "lc" in fields else fields
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    raise UncacheableInput(f"input {where} is a {kind}, which has no exact JSON form", kind)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"<{type(value).__name__}>"


def _has_unserializable(serialized: Any) -> bool:
    """Whether LangChain's JSON of something holds an object it could only write as its repr."""
    pending = [serialized]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if node.get("lc") == 1 and node.get("type") == "not_implemented":
                return True
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return False


def runnable_serialization(runnable: Any) -> tuple[Any, bool]:
    """LangChain's JSON of a runnable (`dumpd`) and whether it is complete: every part serializable. The parts
    LangChain cannot serialize keep only their class path (their repr may hold memory addresses or versions,
    which would change the identity from one process to the next); (None, False) when it cannot be dumped."""
    try:
        serialized = dumpd(runnable)
    except Exception as exc:  # a user object whose serialization raises: no identity from it
        logger.debug("cannot serialize the runnable %s: %s", type(runnable).__name__, exc)
        return None, False
    complete = not _has_unserializable(serialized)
    return (serialized if complete else _without_reprs(serialized)), complete


def _without_reprs(node: Any) -> Any:
    if isinstance(node, dict):
        skipped = "repr" if node.get("lc") == 1 and node.get("type") == "not_implemented" else None
        return {key: _without_reprs(value) for key, value in node.items() if key != skipped}
    if isinstance(node, list):
        return [_without_reprs(item) for item in node]
    return node


def encode_output(output: Any) -> Computed:
    """A chain's answer for the engine: LangChain's JSON of it (`dumpd`; plain JSON values stay as they are),
    if it loads back equal to itself with only message and document classes; else the answer as it is, which
    the engine shares with concurrent callers but does not store (not JSON: logged and counted, or raised
    with `on_error="raise"`). Message ids and a previous hit's `semantic_cache` info are not stored."""
    stored = _without_run_fields(output)
    try:
        serialized = dumpd(stored)
        faithful = not _has_unserializable(serialized) and _load(serialized, OUTPUT_CLASSES) == stored
    except Exception as exc:  # an object LangChain cannot write or read back: not stored, see above
        logger.debug("a chain output of type %s does not round-trip through dumpd/load: %s", type(output), exc)
        faithful = False
    if not faithful:
        return Computed({"format": "object", "value": output})
    tokens = output.usage_metadata["total_tokens"] if isinstance(output, AIMessage) and output.usage_metadata else None
    return Computed({"format": "langchain", "value": serialized}, tokens=tokens)


def decode_output(value: Any) -> Any:
    """Inverse of encode_output (a fresh copy each time); raises for an entry that is not a chain's answer."""
    if not isinstance(value, dict) or set(value) != {"format", "value"}:
        raise ValueError("a cached chain answer is a {'format', 'value'} dict")
    if value["format"] == "langchain":
        return _load(value["value"], OUTPUT_CLASSES)
    if value["format"] == "object":  # an answer shared with concurrent callers in this process, never stored
        return value["value"]
    raise ValueError(f"unknown format of a cached chain answer: {_shown(value['format'])}")


def _without_run_fields(output: Any) -> Any:
    """The output without what belongs to one run: message ids and the cache's own info (also nested)."""
    if isinstance(output, BaseMessage):
        metadata = {key: value for key, value in output.response_metadata.items() if key != CACHE_METADATA_KEY}
        return output.model_copy(update={"id": None, "response_metadata": metadata})
    if isinstance(output, list):
        return [_without_run_fields(item) for item in output]
    if isinstance(output, dict):
        return {key: _without_run_fields(value) for key, value in output.items()}
    return output


def output_with_cache_info(output: Any, info: dict[str, Any]) -> Any:
    """A message output (a copy) with `info` in its `response_metadata`; any other output as it is."""
    if isinstance(output, BaseMessage):
        return output.model_copy(update={"response_metadata": {**output.response_metadata, CACHE_METADATA_KEY: info}})
    return output


def assemble_output(chunks: Sequence[Any]) -> Computed | None:
    """What a chain's stream added up to, for the engine to store: strings concatenated, message chunks added
    (`+`). Any other stream (e.g. a JSON parser's growing dicts) stores nothing: how its chunks add up to the
    answer is the chain's business, not a guess to make here."""
    if chunks and all(isinstance(chunk, str) for chunk in chunks):
        return encode_output("".join(chunks))
    if chunks and all(isinstance(chunk, AIMessageChunk) for chunk in chunks):
        merged: AIMessageChunk = functools.reduce(operator.add, chunks)
        return encode_output(message_chunk_to_message(merged))
    return None


def replay_output(value: Any) -> Iterable[Any]:
    """A stored chain answer as a stream: a string as its words, a message as a model's chunks (see
    `replay_chunks`), anything else as one chunk holding the whole answer."""
    output = decode_output(value)
    if isinstance(output, str):
        return _WORD.findall(output) or [output]
    if isinstance(output, AIMessage):
        return replay_chunks(output)
    return [output]
