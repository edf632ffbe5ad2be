"""Per-call cache options and the sampling temperature of a LangChain call."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from semantic_llm_cache import SemanticCache as CoreSemanticCache
from semantic_llm_cache.call_options import resolve_options
from semantic_llm_cache.temperature import as_temperature

OPTIONS_KEY = "cache_options"
"""The call keyword (chat model) or `config["configurable"]` key (runnable) holding per-call options."""

_PARAM_TEMPERATURE = re.compile(r"\('temperature', ([-+0-9.eE]+)\)")


def call_options(engine: CoreSemanticCache, raw: Any, temperature: float | None) -> dict[str, Any]:
    """`resolve` keyword arguments for one call: its `cache_options`, and what the engine's temperature policy
    asks of a call sampled at `temperature`."""
    return resolve_options(raw, engine.temperature_options(temperature))


def temperature_of_call(model: Any, kwargs: Mapping[str, Any]) -> float | None:
    """The temperature a chat model call samples at: the call's `temperature`, else the model's."""
    if "temperature" in kwargs:
        return as_temperature(kwargs["temperature"])
    return as_temperature(getattr(model, "temperature", None))


def temperature_in_llm_string(llm_string: str) -> float | None:
    """The temperature LangChain's `llm_string` states (its serialized model, or its sorted call parameters)."""
    serialized, _, params = llm_string.partition("---")
    found = _PARAM_TEMPERATURE.search(params)
    if found is not None:
        try:
            return as_temperature(float(found.group(1)))
        except ValueError:
            return None
    try:
        kwargs = json.loads(serialized).get("kwargs", {})
    except (ValueError, AttributeError):
        return None
    return as_temperature(kwargs.get("temperature")) if isinstance(kwargs, dict) else None
