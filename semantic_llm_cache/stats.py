"""Counters, lookup latency (percentiles and a fixed-bucket histogram) and savings of one SemanticCache."""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# Upper bounds, in seconds, of the lookup-latency histogram (`le` buckets; one more, +Inf, counts the rest).
LOOKUP_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

_logger = logging.getLogger("semantic_llm_cache")


@dataclass(frozen=True)
class StatsTotals:
    """A consistent copy of every counter and of the lookup histogram, taken under the lock (for exporters).

    `bucket_counts[i]` counts the lookups that took at most `buckets[i]` seconds (cumulative, as Prometheus's
    `le` buckets); `lookup_count` counts them all and `lookup_seconds` sums their durations.
    """

    counts: dict[str, int]
    buckets: tuple[float, ...]
    bucket_counts: tuple[int, ...]
    lookup_count: int
    lookup_seconds: float
    saved_seconds: float
    saved_tokens: int


class CacheStats:
    """Thread-safe counters. Latencies keep the most recent `window` lookups for percentiles, and every lookup
    in fixed histogram buckets (`LOOKUP_BUCKETS`) for metrics exporters."""

    def __init__(self, window: int = 10_000, buckets: tuple[float, ...] = LOOKUP_BUCKETS) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._latencies: deque[float] = deque(maxlen=window)
        self._buckets = tuple(sorted(buckets))
        self._bucket_hits = [0] * (len(self._buckets) + 1)  # per bucket, not cumulative; the last is +Inf
        self._lookup_seconds = 0.0
        self._listeners: tuple[Callable[[float], None], ...] = ()
        self.saved_seconds = 0.0
        self.saved_tokens = 0

    def count(self, name: str, amount: int = 1) -> None:
        """Add `amount` to counter `name`."""
        with self._lock:
            self._counts[name] += amount

    def observe_lookup(self, seconds: float) -> None:
        """Record the duration of one lookup (and pass it to the listeners added with `on_lookup`)."""
        with self._lock:
            self._latencies.append(seconds)
            self._bucket_hits[bisect.bisect_left(self._buckets, seconds)] += 1
            self._lookup_seconds += seconds
            listeners = self._listeners
        for listener in listeners:
            try:
                listener(seconds)
            except Exception:  # an exporter's failure must never fail a lookup
                _logger.debug("semantic cache: a lookup listener failed", exc_info=True)

    def on_lookup(self, listener: Callable[[float], None]) -> Callable[[], None]:
        """Call `listener(seconds)` after each lookup (in the caller's thread: it must be quick and not block).
        Returns a function that removes it."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

        def remove() -> None:
            with self._lock:
                self._listeners = tuple(other for other in self._listeners if other is not listener)

        return remove

    def add_savings(self, seconds: float | None, tokens: int | None) -> None:
        """Credit a hit with the compute time and tokens its entry cost when it was made."""
        with self._lock:
            self.saved_seconds += seconds or 0.0
            self.saved_tokens += tokens or 0

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def reset(self) -> None:
        """Zero every counter and forget recorded latencies (exporters see a counter reset)."""
        with self._lock:
            self._counts.clear()
            self._latencies.clear()
            self._bucket_hits = [0] * (len(self._buckets) + 1)
            self._lookup_seconds = 0.0
            self.saved_seconds = 0.0
            self.saved_tokens = 0

    def totals(self) -> StatsTotals:
        """Every counter, the lookup histogram and the savings, read at once (quick: safe to call at scrape time
        from any thread)."""
        with self._lock:
            counts = dict(self._counts)
            per_bucket = list(self._bucket_hits)
            lookup_seconds = self._lookup_seconds
            saved_seconds, saved_tokens = self.saved_seconds, self.saved_tokens
        cumulative = list(itertools.accumulate(per_bucket))
        return StatsTotals(
            counts=counts,
            buckets=self._buckets,
            bucket_counts=tuple(cumulative[:-1]),
            lookup_count=cumulative[-1],
            lookup_seconds=lookup_seconds,
            saved_seconds=saved_seconds,
            saved_tokens=saved_tokens,
        )

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
