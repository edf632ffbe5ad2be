"""What the cache accepts as stored text and JSON values: one validator each, shared by every backend."""

from __future__ import annotations

import math
import reprlib
from typing import Any

from semantic_llm_cache.errors import InvalidInputError

#: How deep lists and dicts may nest in a stored value (deeper ones overflow recursive JSON codecs).
MAX_JSON_DEPTH = 100
#: The most decimal digits an integer may have (Python's JSON codec refuses longer ones by default).
MAX_INT_DIGITS = 4000
_MAX_INT_BITS = int(MAX_INT_DIGITS * math.log2(10))


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlong = 40


def shown(value: Any) -> str:
    """A short repr of a user's value for an error message: never long, never itself an error (a 5,000-digit
    int or an object whose __repr__ raises is shown by its type)."""
    try:
        return _SHORT.repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


def check_text(value: str, what: str) -> None:
    """Raise InvalidInputError unless `value` can be written as UTF-8 (no lone surrogates)."""
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{what} contains a lone surrogate ({value[exc.start : exc.end]!r} at position {exc.start}), which is "
            "not text and cannot be stored; decode your input with errors='replace' or fix its source"
        ) from None


def _render_path(trail: Any) -> str:
    """`response[0]['a']` from the nested (parent, key) pairs check_json_value builds (only on error)."""
    keys: list[Any] = []
    while isinstance(trail, tuple):
        trail, key = trail
        keys.append(key)
    return str(trail) + "".join(f"[{shown(key)}]" for key in reversed(keys))


def check_json_value(value: Any, path: str = "response") -> None:
    """Raise InvalidInputError unless `value` is a JSON value that round-trips unchanged on every backend.

    Allowed: str (UTF-8 encodable), int (up to MAX_INT_DIGITS digits), float (finite), bool, None, lists, and
    dicts with string keys, nested at most MAX_JSON_DEPTH deep. Tuples, sets, bytes, objects and NaN are refused
    rather than silently changed. Iterative: no input can exhaust the interpreter's stack.
    """
    pending: list[tuple[Any, Any, int]] = [(value, path, 0)]  # (value, its path, lazily built, depth)
    while pending:
        item, trail, depth = pending.pop()
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, str):
            if not item.isascii():
                check_text(item, _render_path(trail))
        elif isinstance(item, int):
            if item.bit_length() > _MAX_INT_BITS:
                raise InvalidInputError(
                    f"{_render_path(trail)} is an integer of more than {MAX_INT_DIGITS} digits; store it as a string"
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidInputError(f"{_render_path(trail)} contains {item}, which JSON cannot hold")
        elif isinstance(item, (list, dict)):
            if depth >= MAX_JSON_DEPTH:
                raise InvalidInputError(f"{_render_path(trail)} nests lists and dicts more than {MAX_JSON_DEPTH} deep")
            if isinstance(item, list):
                pending.extend((child, (trail, position), depth + 1) for position, child in enumerate(item))
                continue
            for key, child in item.items():
                if not isinstance(key, str):
                    raise InvalidInputError(
                        f"{_render_path(trail)} has a non-string key {shown(key)}; JSON object keys are strings"
                    )
                if not key.isascii():
                    check_text(key, f"a key of {_render_path(trail)}")
                pending.append((child, (trail, key), depth + 1))
        else:
            raise InvalidInputError(
                f"{_render_path(trail)} is a {type(item).__name__}, which is not JSON (use str, numbers, bool, None, "
                "list or dict; serialise framework objects to JSON first)"
            )


__all__ = ["MAX_INT_DIGITS", "MAX_JSON_DEPTH", "check_json_value", "check_text", "shown"]
