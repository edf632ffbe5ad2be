"""Metrics: the stats' lookup histogram, and the Prometheus and OpenTelemetry exports scraped after real traffic."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from semantic_llm_cache import ConfigurationError, SemanticCache
from semantic_llm_cache.embeddings.base import Matrix
from semantic_llm_cache.metrics import instrument_opentelemetry, register_prometheus
from semantic_llm_cache.stats import LOOKUP_BUCKETS, CacheStats
from tests.fakes import BagOfWordsEmbedder

prometheus_client = pytest.importorskip("prometheus_client")
pytest.importorskip("opentelemetry.sdk.metrics")

from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

STORED = "how do i reset my password"
NEAR = "how do i reset my password please"  # bag-of-words similarity ~0.91: a semantic hit at 0.8
PRICE = "how much is 10 dollars in euros"
OTHER_PRICE = "how much is 20 dollars in euros"  # close in words, refused by the answer guard (numbers differ)
CARD = "my card is 4111 1111 1111 1111"  # kept out by the default never_cache (payment_card)
Labels = frozenset[tuple[str, str]]


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


# -- traffic ------------------------------------------------------------------------------------------------------


class FailingEmbedder(BagOfWordsEmbedder):
    async def embed(self, texts: Sequence[str]) -> Matrix:
        raise ConnectionError("embedding service down")


def new_cache(namespace: str = "default") -> SemanticCache:
    return SemanticCache(embedder=BagOfWordsEmbedder(), threshold=0.8, namespace=namespace)


async def traffic(cache: SemanticCache, broken: SemanticCache) -> None:
    """Exact, semantic and shared hits, misses, a guard refusal, a never_cache refusal; embedder errors."""
    await cache.store(STORED, "use the reset link", tokens=10, compute_seconds=0.5)
    await cache.store(PRICE, "about 9 euros")
    assert await cache.lookup(STORED) is not None  # exact
    assert await cache.lookup(NEAR) is not None  # semantic
    assert await cache.lookup(OTHER_PRICE) is None  # guard refusal, then a miss
    assert await cache.store("what is on my card", CARD) is None  # never_cache: payment_card

    async def slow() -> str:
        await asyncio.sleep(0.05)
        return "a joke"

    await asyncio.gather(*(cache.get_or_compute("tell me a joke", slow) for _ in range(3)))  # 1 miss, 2 shared
    for _ in range(4):  # three failures open the embedder's circuit; the fourth call is refused at once
        assert await broken.lookup("is the embedder up") is None


EXPECTED_COUNTERS: dict[tuple[str, str, str], float] = {  # (family, label value, cache): value
    ("hits", "exact", "default"): 1,
    ("hits", "semantic", "default"): 1,
    ("hits", "shared", "default"): 2,
    ("misses", "", "default"): 2,
    ("stores", "", "default"): 3,
    ("refusals", "guard", "default"): 1,
    ("refusals", "shared_text", "default"): 0,
    ("refusals", "feedback", "default"): 0,
    ("not_stored", "payment_card", "default"): 1,
    ("errors", "backend", "default"): 0,
    ("errors", "embedder", "default"): 0,
    ("saved_tokens", "", "default"): 20,
    ("saved_seconds", "", "default"): 1.0,
    ("hits", "exact", "broken"): 0,
    ("misses", "", "broken"): 4,
    ("errors", "embedder", "broken"): 4,  # 3 failures + 1 short circuit
    ("events", "short_circuits", "broken"): 1,
}
LABEL_OF = {"hits": "kind", "refusals": "reason", "not_stored": "reason", "errors": "component", "events": "event"}


def labels_of(family: str, label: str, cache: str) -> Labels:
    return frozenset({("cache", cache), (LABEL_OF[family], label)} if label else {("cache", cache)})


# -- Prometheus ---------------------------------------------------------------------------------------------------


def scrape(registry: CollectorRegistry) -> dict[tuple[str, Labels], float]:
    """The registry's exposition text, parsed back: (sample name, labels) -> value."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_prometheus_scrape_shows_the_traffic_of_each_cache() -> None:
    cache, broken = new_cache(), SemanticCache(embedder=FailingEmbedder(), namespace="broken")
    registry = CollectorRegistry()
    register_prometheus(cache, registry)
    register_prometheus(broken, registry)
    await traffic(cache, broken)
    samples = await asyncio.to_thread(scrape, registry)  # as an exporter's thread scrapes

    for (family, label, name), expected in EXPECTED_COUNTERS.items():
        assert samples[(f"semantic_llm_cache_{family}_total", labels_of(family, label, name))] == expected, family
    assert samples[("semantic_llm_cache_circuit_state", frozenset({("cache", "broken"), ("component", "embedder"),
                                                                   ("state", "open")}))] == 1  # fmt: skip
    assert samples[("semantic_llm_cache_circuit_state", frozenset({("cache", "default"), ("component", "embedder"),
                                                                   ("state", "closed")}))] == 1  # fmt: skip

    totals = cache.stats.totals()
    one = frozenset({("cache", "default")})
    assert samples[("semantic_llm_cache_lookup_seconds_count", one)] == totals.lookup_count >= 4
    assert samples[("semantic_llm_cache_lookup_seconds_sum", one)] == pytest.approx(totals.lookup_seconds)
    buckets = [samples[("semantic_llm_cache_lookup_seconds_bucket", one | {("le", repr(bound))})]
               for bound in LOOKUP_BUCKETS]  # fmt: skip
    assert buckets == sorted(buckets) and buckets[-1] <= totals.lookup_count
    assert samples[("semantic_llm_cache_lookup_seconds_bucket", one | {("le", "+Inf")})] == totals.lookup_count


async def test_registering_again_is_a_no_op_and_a_taken_name_is_a_clear_error() -> None:
    registry = CollectorRegistry()
    first, second = new_cache(), new_cache()
    collector = register_prometheus(first, registry)
    assert register_prometheus(first, registry) is collector
    with pytest.raises(ConfigurationError, match=r"cache='default'.*name="):
        register_prometheus(second, registry)
    with pytest.raises(ConfigurationError, match="already registered as cache='default'"):
        register_prometheus(first, registry, name="renamed")
    assert register_prometheus(second, registry, name="second") is collector
    await first.lookup(STORED)
    samples = scrape(registry)
    assert samples[("semantic_llm_cache_misses_total", frozenset({("cache", "default")}))] == 1
    assert samples[("semantic_llm_cache_misses_total", frozenset({("cache", "second")}))] == 0

    other = CollectorRegistry()  # another registry gets a collector of its own
    assert register_prometheus(first, other) is not collector
    assert scrape(other)[("semantic_llm_cache_misses_total", frozenset({("cache", "default")}))] == 1

    del second
    gc.collect()  # a cache that is gone leaves the metrics
    assert ("semantic_llm_cache_misses_total", frozenset({("cache", "second")})) not in scrape(registry)
    collector.remove(first)
    assert not [key for key in scrape(registry) if ("cache", "default") in key[1]]


def test_a_prefix_taken_by_another_collector_is_a_clear_error() -> None:
    registry = CollectorRegistry()
    prometheus_client.Counter("semantic_llm_cache_misses", "someone else's", registry=registry)
    cache = new_cache()
    with pytest.raises(ConfigurationError, match="another prefix"):
        register_prometheus(cache, registry)
    register_prometheus(cache, registry, prefix="llm_cache")
    assert scrape(registry)[("llm_cache_misses_total", frozenset({("cache", "default")}))] == 0


def test_circuit_states_come_from_a_public_accessor_when_the_engine_has_one() -> None:
    cache = new_cache()
    cache.circuit_states = lambda: {"backend": "half-open", "embedder": "closed"}  # type: ignore[attr-defined]
    registry = CollectorRegistry()
    register_prometheus(cache, registry)
    samples = scrape(registry)
    state = frozenset({("cache", "default"), ("component", "backend")})
    assert samples[("semantic_llm_cache_circuit_state", state | {("state", "half-open")})] == 1
    assert samples[("semantic_llm_cache_circuit_state", state | {("state", "closed")})] == 0


def test_the_default_registry_is_prometheus_clients() -> None:
    cache = new_cache("metrics-default-registry")
    collector = register_prometheus(cache)
    try:
        value = prometheus_client.REGISTRY.get_sample_value(
            "semantic_llm_cache_misses_total", {"cache": "metrics-default-registry"}
        )
        assert value == 0
    finally:
        collector.remove(cache)


# -- OpenTelemetry ------------------------------------------------------------------------------------------------


def exported(reader: InMemoryMetricReader) -> dict[tuple[str, Labels], Any]:
    """The reader's data points: (instrument name, attributes) -> value (a HistogramDataPoint for histograms)."""
    data = reader.get_metrics_data()
    assert data is not None
    return {
        (metric.name, frozenset((key, str(value)) for key, value in (point.attributes or {}).items())): (
            point if isinstance(point, HistogramDataPoint) else point.value
        )
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    }


async def test_opentelemetry_exports_the_same_counters_and_a_latency_histogram() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    cache, broken = new_cache(), SemanticCache(embedder=FailingEmbedder(), namespace="broken")
    instruments = instrument_opentelemetry(cache, provider)
    assert instrument_opentelemetry(cache, provider) is instruments  # again: a no-op
    assert instrument_opentelemetry(broken, provider) is instruments
    registry = CollectorRegistry()
    register_prometheus(cache, registry)
    register_prometheus(broken, registry)
    await traffic(cache, broken)

    points = await asyncio.to_thread(exported, reader)
    samples = scrape(registry)
    for (family, label, name), expected in EXPECTED_COUNTERS.items():
        labels = labels_of(family, label, name)
        assert points[(f"semantic_llm_cache.{family}", labels)] == expected, family
        assert samples[(f"semantic_llm_cache_{family}_total", labels)] == expected, family  # one source
    state = frozenset({("cache", "broken"), ("component", "embedder"), ("state", "open")})
    assert points[("semantic_llm_cache.circuit_state", state)] == 1

    histogram = points[("semantic_llm_cache.lookup.duration", frozenset({("cache", "default")}))]
    totals = cache.stats.totals()
    assert tuple(histogram.explicit_bounds) == LOOKUP_BUCKETS
    assert histogram.count == sum(histogram.bucket_counts) == totals.lookup_count >= 4
    assert histogram.sum == pytest.approx(totals.lookup_seconds)
    instruments.remove(cache)
    await cache.lookup(STORED)
    after = exported(reader)[("semantic_llm_cache.lookup.duration", frozenset({("cache", "default")}))]
    assert after.count == histogram.count  # removed: no longer recorded
    provider.shutdown()


async def test_the_error_budget_is_exported_as_gauges() -> None:
    from tests.test_error_budget import STORED as BUDGET_STORED
    from tests.test_error_budget import Model, budget_cache, teach

    budgeted, embedder = budget_cache()
    registry = CollectorRegistry()
    register_prometheus(budgeted, registry, name="budgeted")
    register_prometheus(new_cache(), registry)
    gauges = ("estimated_error_rate", "estimated_error_upper", "error_budget_met")
    assert not any(name.endswith(gauges) for name, _ in scrape(registry))  # no evidence yet: nothing to show

    await budgeted.store(BUDGET_STORED, "A")
    await teach(budgeted, embedder, 10)  # ten agreeing checks: 0.9 becomes safe
    served = await budgeted.resolve(embedder.query(20, 0.9), Model("never"))
    assert served.hit is not None
    report = await budgeted.get_stats()
    samples = scrape(registry)
    one = frozenset({("cache", "budgeted")})
    assert samples[("semantic_llm_cache_estimated_error_rate", one)] == report["estimated_error_rate"] == 0.0
    upper = samples[("semantic_llm_cache_estimated_error_upper", one)]
    assert upper == pytest.approx(report["estimated_error_upper"]) and 0 < upper < 0.2
    assert samples[("semantic_llm_cache_error_budget_met", one)] == 1.0
    assert not any(name.endswith(gauges) and ("cache", "default") in labels for name, labels in samples)


# -- optional packages --------------------------------------------------------------------------------------------


def test_missing_packages_name_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = new_cache()
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'async-semantic-llm-cache\[prometheus\]'"):
        register_prometheus(cache, None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.metrics", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'async-semantic-llm-cache\[otel\]'"):
        instrument_opentelemetry(cache)
