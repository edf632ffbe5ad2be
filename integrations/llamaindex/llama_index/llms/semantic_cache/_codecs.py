"""LlamaIndex responses <-> the JSON payloads the cache stores; streamed answers assembled and replayed."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse
from llama_index.llms.semantic_cache._keys import message_json
from llama_index.llms.semantic_cache.events import CACHE_INFO_KEY, CacheOutcome

R = TypeVar("R", CompletionResponse, ChatResponse)

# A word and the whitespace after it (or leading whitespace): the pieces joined give back the text exactly.
_PIECE = re.compile(r"\S+\s*|\s+")


def with_info(response: R, outcome: CacheOutcome) -> R:
    """A copy of `response` whose additional_kwargs say how the cache answered."""
    return response.model_copy(
        update={"additional_kwargs": {**response.additional_kwargs, CACHE_INFO_KEY: outcome.info()}}
    )


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


def _streamed_text(deltas: Sequence[str | None], last_text: str | None) -> str:
    # Consumers of a stream read its deltas, so the deltas are what was answered; `text` only if none came.
    if any(delta is not None for delta in deltas):
        return "".join(delta or "" for delta in deltas)
    return last_text or ""


class Codec(Generic[R]):
    """How one response type is stored, read back, assembled from a stream and replayed as one."""

    def encode(self, response: R) -> Any:
        """The JSON payload for `response`, or None when JSON cannot hold it faithfully."""
        raise NotImplementedError

    def decode(self, payload: Any) -> R | None:
        """The response a stored payload stands for, or None if the payload is not one of ours."""
        raise NotImplementedError

    def assemble(self, deltas: Sequence[str | None], last: R | None) -> Any:
        """The payload for a finished stream (None: do not store it)."""
        raise NotImplementedError

    def replay(self, payload: Any) -> list[R] | None:
        """The stored answer as a stream of chunks whose deltas join to the whole text."""
        raise NotImplementedError


class CompletionCodec(Codec[CompletionResponse]):
    def encode(self, response: CompletionResponse) -> Any:
        return {"text": response.text} if isinstance(response.text, str) else None

    def decode(self, payload: Any) -> CompletionResponse | None:
        if isinstance(payload, dict) and isinstance(payload.get("text"), str):
            return CompletionResponse(text=payload["text"])
        return None

    def assemble(self, deltas: Sequence[str | None], last: CompletionResponse | None) -> Any:
        text = _streamed_text(deltas, None if last is None else last.text)
        return {"text": text} if text else None

    def replay(self, payload: Any) -> list[CompletionResponse] | None:
        response = self.decode(payload)
        if response is None:
            return None
        chunks, text = [], ""
        for piece in _PIECE.findall(response.text) or [""]:
            text += piece
            chunks.append(CompletionResponse(text=text, delta=piece))
        return chunks


class ChatCodec(Codec[ChatResponse]):
    def encode(self, response: ChatResponse) -> Any:
        message = message_json(response.message)
        return None if message is None else {"message": message}

    def decode(self, payload: Any) -> ChatResponse | None:
        if not isinstance(payload, dict) or not isinstance(payload.get("message"), dict):
            return None
        try:
            return ChatResponse(message=ChatMessage.model_validate(payload["message"]))
        except ValueError:
            return None

    def assemble(self, deltas: Sequence[str | None], last: ChatResponse | None) -> Any:
        if last is None:
            return None
        text = _streamed_text(deltas, last.message.content)
        if not text:
            return None
        message = last.message
        if message.content != text:
            message = message.model_copy(deep=True)
            try:
                message.content = text
            except ValueError:  # several blocks: which one the deltas belong to is unknown, so do not store
                return None
        return self.encode(ChatResponse(message=message))

    def replay(self, payload: Any) -> list[ChatResponse] | None:
        response = self.decode(payload)
        if response is None:
            return None
        final = response.message
        pieces = _PIECE.findall(final.content or "") or [""]
        chunks, text = [], ""
        for position, piece in enumerate(pieces):
            text += piece
            is_last = position == len(pieces) - 1
            message = final if is_last else ChatMessage(role=final.role, content=text)
            chunks.append(ChatResponse(message=message, delta=piece))
        return chunks


COMPLETION = CompletionCodec()
CHAT = ChatCodec()
