"""LlamaIndex calls -> (the text to embed, the Scope that must match exactly). Translation only, no cache logic."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock
from llama_index.core.llms import LLM

from semantic_llm_cache import Scope

PAYLOAD_VERSION = 1
"""Part of every partition: bump it when the stored payload format changes, so old entries are never read."""

# Field-name parts that mark credentials: they never change an answer, and must not reach the cache.
_SECRET_PARTS = frozenset(
    {
        "key",
        "apikey",
        "secret",
        "password",
        "passwd",
        "token",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "header",
        "headers",
        "cookie",
        "cookies",
    }
)


@dataclass(frozen=True)
class Request:
    """A cacheable call: `prompt` is embedded, `scope` partitions."""

    prompt: str
    scope: Scope


@dataclass(frozen=True)
class Bypass:
    """A call the cache cannot key faithfully; it goes straight to the wrapped LLM."""

    reason: str


@dataclass(frozen=True)
class TemplateKey:
    """Keying for one `predict` call of a prompt template: the question alone is embedded.

    `owner` is the id of the wrapper whose predict set it; `messages`/`prompt` is the exact formatted input that
    predict is about to send, so the key is used for that call only. `context` is the same input formatted with a
    placeholder instead of the question: everything but the question, matched exactly.
    """

    owner: int
    question: str
    context: Any
    messages: list[ChatMessage] | None = None
    prompt: str | None = None


def _is_secret(field_name: str) -> bool:
    return any(part in _SECRET_PARTS for part in field_name.lower().split("_"))


def _qualified_name(function: Any) -> str | None:
    if function is None:
        return None
    return f"{getattr(function, '__module__', None)}.{getattr(function, '__qualname__', type(function).__qualname__)}"


def llm_identity(llm: LLM) -> tuple[str, dict[str, Any]]:
    """Scope.model and Scope.params for `llm`: its class and model name; its settings (minus credentials)."""
    metadata = llm.metadata
    cls = type(llm)
    model = f"{cls.__module__}.{cls.__qualname__}:{metadata.model_name}"
    secrets = {name for name in type(llm).model_fields if _is_secret(name)}
    try:
        settings: dict[str, Any] = llm.model_dump(mode="json", exclude=secrets)
    except Exception:  # some field is not JSON: keep the others, and the type of each one that is not
        settings = {}
        for name, field in type(llm).model_fields.items():
            if field.exclude or name in secrets:
                continue
            try:
                settings[name] = llm.model_dump(mode="json", include={name}).get(name)
            except Exception:
                settings[name] = f"<{type(getattr(llm, name, None)).__qualname__}>"
    # Excluded from the dump, but they turn messages and completions into the text the model sees.
    settings["messages_to_prompt"] = _qualified_name(llm.messages_to_prompt)
    settings["completion_to_prompt"] = _qualified_name(llm.completion_to_prompt)
    return model, {"settings": settings, "metadata": metadata.model_dump(mode="json")}


def _params(llm: LLM, api: str, kwargs: Mapping[str, Any], **extra: Any) -> tuple[str, dict[str, Any]]:
    model, identity = llm_identity(llm)
    return model, {"payload_version": PAYLOAD_VERSION, "api": api, **extra, "call_kwargs": dict(kwargs), **identity}


def completion_request(
    llm: LLM,
    prompt: str,
    formatted: bool,
    kwargs: Mapping[str, Any],
    namespace: str | None,
    template: TemplateKey | None = None,
) -> Request | Bypass:
    """Key a completion: the prompt as given (formatted or not), or the template's question."""
    model, params = _params(llm, "complete", kwargs, formatted=formatted)
    if template is not None:
        return Request(template.question, Scope(namespace, model, params, {"template": template.context}))
    if not isinstance(prompt, str) or not prompt.strip():
        return Bypass("empty prompt")
    return Request(prompt, Scope(namespace, model, params, None))


def _message_json(message: ChatMessage) -> Any:
    return message.model_dump(mode="json")


def chat_request(
    llm: LLM,
    messages: Sequence[ChatMessage],
    kwargs: Mapping[str, Any],
    namespace: str | None,
    template: TemplateKey | None = None,
) -> Request | Bypass:
    """Key a chat: the last user message's text is embedded; every other message goes into the context exactly."""
    model, params = _params(llm, "chat", kwargs)
    if template is not None:
        return Request(template.question, Scope(namespace, model, params, {"template": template.context}))
    messages = list(messages)
    turn_index = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].role == MessageRole.USER), None)
    if turn_index is None:
        return Bypass("no user message")
    turn = messages[turn_index]
    texts = [block.text for block in turn.blocks if isinstance(block, TextBlock)]
    question = "\n".join(texts)
    if not question.strip():
        return Bypass("the last user message has no text")
    try:
        context = {
            "before": [_message_json(message) for message in messages[:turn_index]],
            "turn": {
                "text_blocks": len(texts),
                "other_blocks": [
                    [position, block.model_dump(mode="json")]
                    for position, block in enumerate(turn.blocks)
                    if not isinstance(block, TextBlock)
                ],
                "additional_kwargs": turn.model_dump(mode="json", include={"additional_kwargs"})["additional_kwargs"],
            },
            "after": [_message_json(message) for message in messages[turn_index + 1 :]],
        }
    except Exception:
        return Bypass("the messages are not JSON-serialisable")
    return Request(question, Scope(namespace, model, params, context))


def message_json(message: ChatMessage) -> Any:
    """The message as JSON, or None unless it reads back equal (then storing it would change the answer)."""
    try:
        payload = _message_json(message)
        restored = ChatMessage.model_validate(payload)
    except Exception:
        return None
    return payload if restored == message else None
