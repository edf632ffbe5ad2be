"""Scope -> partition id, and (partition, prompt) -> exact key. Hashing and whitespace normalisation only."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from semantic_llm_cache.errors import InvalidInputError
from semantic_llm_cache.values import check_text, shown

_WHITESPACE = re.compile(r"\s+")
PARTITION_VERSION = 1


@dataclass(frozen=True)
class Scope:
    """What must match exactly before two prompts may share an answer.

    namespace: the tenant (defaults to the cache's namespace).
    model: the model's identity, e.g. "openai:gpt-4o-mini".
    params: call parameters that change answers (temperature, max_tokens, stop, tools...), any JSON values.
    context: the conversation around the prompt (system prompt, earlier turns), any JSON value.
    Each distinct Scope is a partition; semantic search never looks outside the caller's partition.
    """

    namespace: str | None = None
    model: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    context: Any = None

    def __post_init__(self) -> None:
        if self.namespace is not None and (not isinstance(self.namespace, str) or not self.namespace):
            raise InvalidInputError(f"Scope.namespace must be a non-empty string or None, got {shown(self.namespace)}")
        if self.model is not None and not isinstance(self.model, str):
            raise InvalidInputError(f"Scope.model must be a string or None, got {type(self.model).__name__}")
        if not isinstance(self.params, Mapping):
            raise InvalidInputError(
                f"Scope.params must be a dict of call parameters (use {{}} for none), got {type(self.params).__name__}"
            )
        for name in self.params:
            if not isinstance(name, str):
                raise InvalidInputError(f"Scope.params keys must be strings, got {shown(name)}")

    def with_namespace(self, namespace: str) -> Scope:
        """A copy with `namespace` filled in when this scope names none."""
        if self.namespace is not None:
            return self
        return Scope(namespace=namespace, model=self.model, params=self.params, context=self.context)


def canonical_json(value: Any, what: str = "value") -> str:
    """Deterministic JSON (sorted keys, no spaces); raises InvalidInputError for values JSON cannot hold."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"{what} must be JSON-serialisable (str, numbers, bool, None, lists, dicts): {exc}"
        ) from exc
    except RecursionError:
        raise InvalidInputError(f"{what} nests lists and dicts too deep to serialise") from None
    check_text(text, what)
    return text


def partition_id(scope: Scope, default_namespace: str, embedder_name: str) -> str:
    """The 32-hex-digit id of the partition `scope` falls in, for vectors of `embedder_name`."""
    if not isinstance(scope, Scope):
        raise InvalidInputError(
            f"scope must be a Scope (e.g. Scope(namespace=..., model=..., params={{...}})), got {type(scope).__name__}"
        )
    namespace = scope.namespace if scope.namespace is not None else default_namespace
    if not isinstance(namespace, str) or not namespace:
        raise InvalidInputError(f"namespace must be a non-empty string, got {shown(namespace)}")
    identity = {
        "version": PARTITION_VERSION,
        "namespace": namespace,
        "model": scope.model,
        "params": dict(scope.params),
        "context": scope.context,
        "embedder": embedder_name,
    }
    return hashlib.sha256(canonical_json(identity, "Scope").encode()).hexdigest()[:32]


def normalize_prompt(prompt: object) -> str:
    """Collapse runs of whitespace and trim the ends; nothing else (never drop words or change case)."""
    if not isinstance(prompt, str):
        raise InvalidInputError(f"prompt must be a string, got {type(prompt).__name__}")
    normalized = _WHITESPACE.sub(" ", prompt).strip()
    if not normalized:
        raise InvalidInputError("prompt is empty (or only whitespace); there is nothing to cache")
    check_text(normalized, "prompt")
    return normalized


def exact_key(partition: str, normalized_prompt: str) -> str:
    """Key of the exact entry for a prompt: "<partition id>:<hash of the normalised prompt>"."""
    digest = hashlib.sha256(f"{partition}\x1f{normalized_prompt}".encode()).hexdigest()[:32]
    return f"{partition}:{digest}"


def partition_of_key(key: str) -> str:
    """The partition id an exact key belongs to."""
    partition, _, digest = key.partition(":")
    if not partition or not digest:
        raise InvalidInputError(f"not a cache key: {shown(key)}")
    return partition
