"""What one call may ask of the cache besides its prompt: a threshold, a metadata filter, bypass or refresh."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from semantic_llm_cache.config import validate_threshold
from semantic_llm_cache.errors import ConfigurationError, InvalidInputError
from semantic_llm_cache.values import check_text, shown

#: a semantic lookup with a metadata filter checks this many times more candidates (the filter runs on them)
WHERE_CANDIDATE_FACTOR = 8


@dataclass(frozen=True)
class CallOptions:
    """Per-call options, checked when made (bad ones raise InvalidInputError before anything is read).

    threshold: this call's cosine threshold in [0, 1] (None: the cache's).
    where: metadata field -> value; only entries whose stored `metadata` has each field equal to its value may
        answer (exact and semantic hits alike). Values are strings, numbers, booleans or None. It narrows the
        call's partition, never widens it.
    bypass: no lookup and no store: the answer is computed and returned, the cache is left alone.
    refresh: no lookup; the answer is computed and stored over the entry the prompt had.
    """

    threshold: float | None = None
    where: Mapping[str, Any] | None = None
    bypass: bool = False
    refresh: bool = False

    def __post_init__(self) -> None:
        if self.threshold is not None:
            try:
                validate_threshold(self.threshold)
            except ConfigurationError as exc:
                raise InvalidInputError(str(exc)) from exc
        for name in ("bypass", "refresh"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"{name} must be True or False, got {shown(getattr(self, name))}")
        if self.bypass and self.refresh:
            raise InvalidInputError("bypass and refresh exclude each other: bypass stores nothing, refresh stores")
        if self.where is not None:
            check_where(self.where)

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        """True when `metadata` has every field of `where` with an equal value (and of the same type)."""
        if not self.where:
            return True
        for name, wanted in self.where.items():
            if name not in metadata:
                return False
            value = metadata[name]
            if type(value) is not type(wanted) and not (_number(value) and _number(wanted)):
                return False
            if value != wanted:
                return False
        return True


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_where(where: Any) -> None:
    """A metadata filter: a dict of non-empty string fields to strings, finite numbers, booleans or None."""
    if not isinstance(where, Mapping):
        raise InvalidInputError(f"where must be a dict of metadata field -> value, got {type(where).__name__}")
    for name, value in where.items():
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"where's fields must be non-empty strings, got {shown(name)}")
        check_text(name, "where field")
        if isinstance(value, str):
            check_text(value, f"where[{name!r}]")
        elif value is not None and not isinstance(value, (bool, int, float)):
            raise InvalidInputError(
                f"where[{name!r}] must be a string, number, boolean or None (exact match), got {shown(value)}"
            )
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidInputError(f"where[{name!r}] must be finite, got {value}")


NO_OPTIONS = CallOptions()

#: what an adapter's per-call `cache_options` may hold: the keyword arguments of `SemanticCache.resolve`
OPTION_NAMES = ("threshold", "bypass", "refresh", "ttl", "where")


def resolve_options(options: Any, forced: Mapping[str, bool] | None = None) -> dict[str, Any]:
    """An adapter's per-call `cache_options` (a dict, or None) as keyword arguments for `resolve`, checked.

    forced: what the engine's temperature policy asks (`SemanticCache.temperature_options`): a bypass wins over
    the call's refresh; a forced refresh yields to the call's own bypass.
    """
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise InvalidInputError(f"cache_options must be a dict of {list(OPTION_NAMES)}, got {type(options).__name__}")
    unknown = sorted(str(name) for name in options if name not in OPTION_NAMES)
    if unknown:
        raise InvalidInputError(f"unknown cache_options {unknown}; the options are {list(OPTION_NAMES)}")
    chosen = dict(options)
    CallOptions(chosen.get("threshold"), chosen.get("where"), chosen.get("bypass", False), chosen.get("refresh", False))
    if forced and forced.get("bypass"):
        chosen.pop("refresh", None)
        chosen["bypass"] = True
    elif forced and forced.get("refresh") and not chosen.get("bypass"):
        chosen["refresh"] = True
    return chosen


__all__ = ["NO_OPTIONS", "OPTION_NAMES", "WHERE_CANDIDATE_FACTOR", "CallOptions", "check_where", "resolve_options"]
