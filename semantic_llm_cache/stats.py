"""Counters, lookup latency percentiles and savings of one SemanticCache."""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any

import numpy as np


class CacheStats:
    """Thread-safe counters. Latencies keep the most recent `window` lookups for percentiles."""

    def __init__(self, window: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._latencies: deque[float] = deque(maxlen=window)
        self.saved_seconds = 0.0
        self.saved_tokens = 0

    def count(self, name: str, amount: int = 1) -> None:
        """Add `amount` to counter `name`."""
        with self._lock:
            self._counts[name] += amount

    def observe_lookup(self, seconds: float) -> None:
        """Record the duration of one lookup."""
        with self._lock:
            self._latencies.append(seconds)

    def add_savings(self, seconds: float | None, tokens: int | None) -> None:
        """Credit a hit with the compute time and tokens its entry cost when it was made."""
        with self._lock:
            self.saved_seconds += seconds or 0.0
            self.saved_tokens += tokens or 0

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def reset(self) -> None:
        """Zero every counter and forget recorded latencies."""
        with self._lock:
            self._counts.clear()
            self._latencies.clear()
            self.saved_seconds = 0.0
            self.saved_tokens = 0

    def snapshot(self) -> dict[str, Any]:
        """All counters, hit rate, lookup latency p50/p95/p99 in milliseconds, and savings."""
        with self._lock:
            counts = dict(self._counts)
            latencies = np.array(self._latencies, dtype=np.float64) * 1000.0
            saved_seconds, saved_tokens = self.saved_seconds, self.saved_tokens
        hits = counts.get("exact_hits", 0) + counts.get("semantic_hits", 0) + counts.get("shared_hits", 0)
        lookups = hits + counts.get("misses", 0)
        result: dict[str, Any] = {
            name: counts.get(name, 0)
            for name in (
                "exact_hits",
                "semantic_hits",
                "shared_hits",
                "misses",
                "stores",
                "errors",
                "guard_refusals",
                "timeouts",
            )
        }
        result.update({name: value for name, value in counts.items() if name not in result})
        result["lookups"] = lookups
        result["hit_rate"] = hits / lookups if lookups else 0.0
        for label, quantile in (("p50", 50), ("p95", 95), ("p99", 99)):
            result[f"lookup_ms_{label}"] = float(np.percentile(latencies, quantile)) if latencies.size else None
        result["saved_seconds"] = saved_seconds
        result["saved_tokens"] = saved_tokens
        return result
