"""Whether a call sampled at some temperature may use the cache: serve always, never above a limit, or skip
with a probability that grows with the temperature (as GPTCache does)."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from semantic_llm_cache.errors import ConfigurationError


class TemperaturePolicy(Protocol):
    """Decides, per call, whether a call sampled at `temperature` skips the cache's lookup.

    `stores_skipped`: whether a skipped call's fresh answer is still stored (over the old one) or kept out.
    """

    stores_skipped: bool

    def skips(self, temperature: float) -> bool: ...


@dataclass(frozen=True)
class ServeAlways:
    """The default, as LangChain's own caches do: the temperature is part of the partition, nothing more."""

    stores_skipped = True

    def skips(self, temperature: float) -> bool:
        return False


@dataclass(frozen=True)
class NeverAbove:
    """Calls sampled above `limit` never use the cache: their answers are meant to vary, so none is replayed
    and none is stored. Deterministic calls (at or below the limit) are cached as usual."""

    limit: float = 0.0
    stores_skipped = False

    def __post_init__(self) -> None:
        if as_temperature(self.limit) is None or self.limit < 0:
            raise ConfigurationError(f"NeverAbove.limit must be a temperature >= 0, got {self.limit!r}")

    def skips(self, temperature: float) -> bool:
        return temperature > self.limit


@dataclass(frozen=True)
class SkipByTemperature:
    """Skip the lookup with probability `temperature / max_temperature` (1 at or above it), GPTCache-style: a
    hot call often gets a fresh sample, a cold one almost always the cached answer. Fresh samples are stored
    (each replaces the one before), so later calls are served varied answers over time."""

    stores_skipped = True
    max_temperature: float = 2.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if as_temperature(self.max_temperature) is None or self.max_temperature <= 0:
            raise ConfigurationError(f"max_temperature must be > 0, got {self.max_temperature!r}")

    def skips(self, temperature: float) -> bool:
        if temperature <= 0:
            return False
        return self.rng.random() < min(1.0, temperature / self.max_temperature)


def as_temperature(value: Any) -> float | None:
    """`value` as a temperature (a finite number, not a bool), or None when it is none."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def temperature_of(params: Mapping[str, Any]) -> float | None:
    """The sampling temperature a call's parameters state (`temperature`), or None."""
    return as_temperature(params.get("temperature"))


__all__ = ["NeverAbove", "ServeAlways", "SkipByTemperature", "TemperaturePolicy", "as_temperature", "temperature_of"]
