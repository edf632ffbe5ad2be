"""Metrics: the stats' lookup histogram, and the Prometheus and OpenTelemetry exports scraped after real traffic."""

from __future__ import annotations

import threading

import pytest

from semantic_llm_cache.stats import LOOKUP_BUCKETS, CacheStats


def test_lookup_histogram_counts_each_lookup_in_cumulative_buckets() -> None:
    stats = CacheStats()
    for seconds in (0.0001, 0.0005, 0.003, 0.2, 42.0):
        stats.observe_lookup(seconds)
    totals = stats.totals()
    assert totals.buckets == LOOKUP_BUCKETS
    by_bound = dict(zip(totals.buckets, totals.bucket_counts, strict=True))
    assert by_bound[0.0005] == 2  # `le`: a lookup of exactly a bound is in that bucket
    assert by_bound[0.001] == 2 and by_bound[0.005] == 3 and by_bound[0.25] == 4 and by_bound[10.0] == 4
    assert totals.lookup_count == 5  # the +Inf bucket
    assert totals.lookup_seconds == pytest.approx(42.2036)
    stats.reset()
    assert stats.totals().lookup_count == 0 and sum(stats.totals().bucket_counts) == 0


def test_lookup_listeners_get_each_duration_and_cannot_fail_a_lookup() -> None:
    stats = CacheStats()
    seen: list[float] = []

    def broken(seconds: float) -> None:
        raise RuntimeError("exporter down")

    stats.on_lookup(broken)
    remove = stats.on_lookup(seen.append)
    stats.observe_lookup(0.01)
    remove()
    stats.observe_lookup(0.02)
    assert seen == [0.01]
    assert stats.totals().lookup_count == 2


def test_totals_are_consistent_while_other_threads_count() -> None:
    stats = CacheStats()

    def work() -> None:
        for _ in range(2000):
            stats.count("misses")
            stats.observe_lookup(0.001)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        totals = stats.totals()
        assert list(totals.bucket_counts) == sorted(totals.bucket_counts)
        assert totals.lookup_count >= totals.bucket_counts[-1]
    for thread in threads:
        thread.join()
    assert stats["misses"] == 8000 and stats.totals().lookup_count == 8000
