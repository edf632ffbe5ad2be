"""LlamaIndex responses <-> the JSON payloads the cache stores; streamed answers assembled and replayed.

Two payloads: {"text": ...} for completions and {"message": <ChatMessage JSON>} for chats. The completion methods
of a chat model store and read the chat payload, because they share entries with its chat methods.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from llama_index.core.base.llms.generic_utils import completion_response_to_chat_response
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, MessageRole
from llama_index.llms.semantic_cache._keys import message_json
from llama_index.llms.semantic_cache.events import CACHE_INFO_KEY

from semantic_llm_cache import Computed

R = TypeVar("R", CompletionResponse, ChatResponse)

# A word and the whitespace after it (or leading whitespace): the pieces joined give back the text exactly.
_PIECE = re.compile(r"\S+\s*|\s+")


def with_info(response: R, info: dict[str, Any]) -> R:
    """A copy of `response` whose additional_kwargs say how the cache answered."""
    return response.model_copy(update={"additional_kwargs": {**response.additional_kwargs, CACHE_INFO_KEY: info}})


# Where providers put token counts: LlamaIndex's own token counter reads the same keys.
_TOKEN_KEYS = (
    ("total_tokens",),
    ("prompt_tokens", "input_tokens", "prompt_token_count"),
    ("completion_tokens", "output_tokens", "candidates_token_count"),
)


def reported_tokens(response: CompletionResponse | ChatResponse) -> int | None:
    """The tokens the wrapped LLM reported for `response` (its raw usage, else its additional_kwargs); None if none.

    Only non-negative integers count: an odd value from a provider must never reach the cache's savings.
    """
    try:
        raw = response.raw
        usage = (
            (raw.get("usage") or raw.get("usage_metadata")) if isinstance(raw, dict) else getattr(raw, "usage", None)
        )
        for source in (_as_dict(usage), response.additional_kwargs):
            total, prompt, completion = (
                next((source[key] for key in keys if _is_count(source.get(key))), None) for keys in _TOKEN_KEYS
            )
            if total is not None:
                return int(total)
            if prompt is not None or completion is not None:
                return int(prompt or 0) + int(completion or 0)
    except Exception:  # a usage report of an unexpected shape: the answer is still served and stored
        return None
    return None


def _as_dict(usage: Any) -> dict[str, Any]:
    """A usage report as a dict: as is, or a pydantic model's fields, or a plain object's attributes."""
    if isinstance(usage, dict):
        return usage
    if hasattr(usage, "model_dump"):
        dumped = usage.model_dump()
        return dumped if isinstance(dumped, dict) else {}
    return dict(vars(usage)) if hasattr(usage, "__dict__") else {}


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _streamed_text(chunks: Sequence[CompletionResponse | ChatResponse], last_text: str | None) -> str:
    # Consumers of a stream read its deltas, so the deltas are what was answered; `text` only if none came.
    deltas = [chunk.delta for chunk in chunks]
    if any(delta is not None for delta in deltas):
        return "".join(delta or "" for delta in deltas)
    return last_text or ""


def _pieces(text: str) -> list[str]:
    return _PIECE.findall(text) or [""]


class Codec(Generic[R]):
    """How one response type is stored, read back, assembled from a stream and replayed as one.

    `computed`, `decode`, `assemble` and `replay` are what the engine's resolve calls take; `decode` and `replay`
    raise ValueError for a value that is not one of ours (the engine then treats the entry as a miss).
    """

    def encode(self, response: R) -> Any:
        """The JSON payload for `response`, or None when JSON cannot hold it faithfully."""
        raise NotImplementedError

    def read(self, payload: Any) -> R:
        """The response a stored payload stands for (ValueError if it is not one of ours)."""
        raise NotImplementedError

    def adopt(self, response: CompletionResponse | ChatResponse) -> R:
        """A response object a concurrent identical call got (an answer it could not store), as this type."""
        raise NotImplementedError

    def chunks(self, response: R) -> list[R]:
        """`response` as a stream of chunks whose deltas join to the whole text."""
        raise NotImplementedError

    def assembled(self, chunks: Sequence[R]) -> Any:
        """The payload for a finished stream (None: do not store it)."""
        raise NotImplementedError

    def computed(self, response: R) -> Computed:
        """What a compute hands the engine: the payload and the tokens it cost; or, when JSON cannot hold the
        answer, the answer itself, shared with concurrent identical calls but not stored."""
        payload = self.encode(response)
        if payload is None:
            return Computed(response, store=False)
        return Computed(payload, tokens=reported_tokens(response))

    def decode(self, value: Any) -> R:
        """A stored or shared answer (a payload, or a response object that could not be stored) as a response."""
        if isinstance(value, (CompletionResponse, ChatResponse)):
            return self.adopt(value)
        return self.read(value)

    def replay(self, value: Any) -> list[R]:
        """A stored or shared answer as the chunks of a stream."""
        return self.chunks(self.decode(value))

    def assemble(self, chunks: list[R]) -> Computed | None:
        """What a finished stream stores: its payload, and the tokens its last chunk reports."""
        payload = self.assembled(chunks)
        if payload is None:
            return None
        return Computed(payload, tokens=reported_tokens(chunks[-1]))


class CompletionCodec(Codec[CompletionResponse]):
    """Completions, stored as {"text": ...}."""

    def encode(self, response: CompletionResponse) -> Any:
        return {"text": response.text} if isinstance(response.text, str) else None

    def read(self, payload: Any) -> CompletionResponse:
        if isinstance(payload, dict) and isinstance(payload.get("text"), str):
            return CompletionResponse(text=payload["text"])
        raise ValueError("the cached entry is not a LlamaIndex completion")

    def adopt(self, response: CompletionResponse | ChatResponse) -> CompletionResponse:
        if isinstance(response, CompletionResponse):
            return response
        # chat_response_to_completion_response, without updating the other caller's message in place
        message = response.message
        return CompletionResponse(
            text=message.content or "",
            additional_kwargs={**message.additional_kwargs, **response.additional_kwargs},
            raw=response.raw,
        )

    def chunks(self, response: CompletionResponse) -> list[CompletionResponse]:
        pieces = _pieces(response.text)
        chunks, text = [], ""
        for position, piece in enumerate(pieces):
            text += piece
            is_last = position == len(pieces) - 1
            extra = dict(response.additional_kwargs) if is_last else {}
            chunks.append(CompletionResponse(text=text, delta=piece, additional_kwargs=extra))
        return chunks

    def assembled(self, chunks: Sequence[CompletionResponse]) -> Any:
        text = _streamed_text(chunks, chunks[-1].text if chunks else None)
        return self.encode(CompletionResponse(text=text)) if text else None


class CompletionViaChatCodec(CompletionCodec):
    """Completions of a chat model, stored as the chat answer they are ({"message": ...}): LlamaIndex answers
    `complete(p)` on a chat model as `chat([user: p])`, so both read and write the same entries."""

    def encode(self, response: CompletionResponse) -> Any:
        if not isinstance(response.text, str):
            return None
        return CHAT.encode(ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=response.text)))

    def read(self, payload: Any) -> CompletionResponse:
        return self.adopt(CHAT.read(payload))


class ChatCodec(Codec[ChatResponse]):
    """Chat answers, stored as {"message": <the assistant ChatMessage as JSON>}."""

    def encode(self, response: ChatResponse) -> Any:
        message = message_json(response.message)
        return None if message is None else {"message": message}

    def read(self, payload: Any) -> ChatResponse:
        if not isinstance(payload, dict) or not isinstance(payload.get("message"), dict):
            raise ValueError("the cached entry is not a LlamaIndex chat answer")
        return ChatResponse(message=ChatMessage.model_validate(payload["message"]))  # a ValidationError is a ValueError

    def adopt(self, response: CompletionResponse | ChatResponse) -> ChatResponse:
        if isinstance(response, ChatResponse):
            return response
        return completion_response_to_chat_response(
            response.model_copy(update={"additional_kwargs": dict(response.additional_kwargs)})
        )

    def chunks(self, response: ChatResponse) -> list[ChatResponse]:
        final = response.message
        pieces = _pieces(final.content or "")
        chunks, text = [], ""
        for position, piece in enumerate(pieces):
            text += piece
            is_last = position == len(pieces) - 1
            message = final if is_last else ChatMessage(role=final.role, content=text)
            chunks.append(ChatResponse(message=message, delta=piece))
        return chunks

    def assembled(self, chunks: Sequence[ChatResponse]) -> Any:
        if not chunks:
            return None
        message = chunks[-1].message
        text = _streamed_text(chunks, message.content)
        if not text:
            return None
        if message.content != text:
            message = message.model_copy(deep=True)
            try:
                message.content = text
            except ValueError:  # several blocks: which one the deltas belong to is unknown, so do not store
                return None
        return self.encode(ChatResponse(message=message))


COMPLETION = CompletionCodec()
COMPLETION_VIA_CHAT = CompletionViaChatCodec()
CHAT = ChatCodec()
