"""Prometheus and OpenTelemetry metrics of SemanticCache instances, read from their CacheStats at collection time.

Both exporters publish the same families (Prometheus name / OpenTelemetry name, every series labelled `cache`):

- `<prefix>_hits_total{kind}` / `<prefix>.hits`: lookups answered from the cache (`exact`, `semantic`, `shared`:
  a caller that waited on another's computation of the same prompt)
- `<prefix>_misses_total`, `<prefix>_stores_total`
- `<prefix>_refusals_total{reason}`: candidates above the threshold not served (`guard`, `shared_text`, `feedback`)
- `<prefix>_errors_total{component}`: failed calls (`backend`, `embedder`; `never_cache` for a failing predicate)
- `<prefix>_not_stored_total{reason}`: answers kept out (a `never_cache` reason, `declined`, `unstorable`)
- `<prefix>_saved_tokens_total`, `<prefix>_saved_seconds_total`: what the hits' answers cost when computed
- `<prefix>_events_total{event}`: every other engine counter (`prompt_too_long`, `timeouts`, ...)
- `<prefix>_circuit_state{component,state}`: 1 for the state each circuit breaker is in
- `<prefix>_lookup_seconds` / `<prefix>.lookup.duration`: lookup latency histogram (seconds, `LOOKUP_BUCKETS`)
- with an error budget (`SemanticCache(max_error_rate=...)`): `<prefix>_estimated_error_rate` and
  `<prefix>_estimated_error_upper` (the served semantic hits' measured error and its upper confidence bound, as
  in `get_stats()`), `<prefix>_error_budget_met` (1 kept, 0 cannot be kept); absent while there is no evidence

Caches are held weakly: a cache that is garbage-collected leaves the metrics. A custom `never_cache` predicate's
reasons become label values: return a small fixed set of them.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from semantic_llm_cache.errors import ConfigurationError
from semantic_llm_cache.stats import LOOKUP_BUCKETS, StatsTotals

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from semantic_llm_cache.cache import SemanticCache

PREFIX = "semantic_llm_cache"
_INSTALL = "pip install 'async-semantic-llm-cache[{extra}]'"
_CIRCUIT_STATES = ("closed", "open", "half-open")
_logger = logging.getLogger("semantic_llm_cache")
_SUMS = frozenset({"errors", "never_cache_refusals"})  # totals of labelled counters: not exported twice


@dataclass
class _Family:
    """One metric family of one or more caches: values by label values (the `cache` label first)."""

    name: str
    kind: Literal["counter", "gauge"]
    unit: str  # OpenTelemetry unit
    description: str
    labels: tuple[str, ...] = ()
    defaults: tuple[str, ...] = ()  # label values always exported (at 0), so the series exist from the start
    values: dict[tuple[str, ...], float] = field(default_factory=dict)


def _empty_families() -> list[_Family]:
    return [
        _Family("hits", "counter", "{hit}", "Lookups answered from the cache, by kind", ("kind",),
                ("exact", "semantic", "shared")),
        _Family("misses", "counter", "{miss}", "Lookups the cache could not answer"),
        _Family("stores", "counter", "{entry}", "Answers written to the cache"),
        _Family("refusals", "counter", "{candidate}", "Candidates above the threshold that were not served, by reason",
                ("reason",), ("guard", "shared_text", "feedback")),
        _Family("errors", "counter", "{error}", "Failed calls to a component, by component", ("component",),
                ("backend", "embedder")),
        _Family("not_stored", "counter", "{answer}", "Answers kept out of the cache, by reason", ("reason",)),
        _Family("saved_tokens", "counter", "{token}", "Tokens the served hits' answers cost when computed"),
        _Family("saved_seconds", "counter", "s", "Seconds the served hits' answers took when computed"),
        _Family("events", "counter", "{event}", "Other engine counters, by event", ("event",)),
        _Family("circuit_state", "gauge", "1", "1 for the state the component's circuit breaker is in",
                ("component", "state")),
        _Family("estimated_error_rate", "gauge", "1", "The error budget's estimate of the served hits' error rate"),
        _Family("estimated_error_upper", "gauge", "1", "The upper confidence bound of that estimate"),
        _Family("error_budget_met", "gauge", "1", "1 while the error budget is kept, 0 when it cannot be"),
    ]  # fmt: skip


def _labelled(name: str) -> tuple[str, str]:
    """The family and label value of engine counter `name`."""
    for suffix, family in (("_hits", "hits"), ("_refusals", "refusals"), ("_errors", "errors")):
        if name.endswith(suffix) and name != "never_cache_refusals":
            return family, name[: -len(suffix)]
    if name in ("misses", "stores"):
        return name, ""
    if name == "not_stored":
        return "not_stored", "declined"
    if name == "unstorable_answers":
        return "not_stored", "unstorable"
    if name.startswith("never_cache_"):
        return "not_stored", name.removeprefix("never_cache_")
    return "events", name


def _circuits(cache: SemanticCache) -> dict[str, str]:
    """Each component's circuit breaker state (thread-safe reads, no I/O)."""
    public = getattr(cache, "circuit_states", None)
    if callable(public):
        return {str(component): str(state) for component, state in public().items()}
    breakers: dict[str, Any] = getattr(cache, "_breakers", {})
    return {component: str(breaker.state) for component, breaker in breakers.items()}


def _families(caches: Iterable[tuple[str, SemanticCache]]) -> tuple[list[_Family], list[tuple[str, StatsTotals]]]:
    """The families of `caches` (each read once, under its stats lock) and their totals (for the histogram)."""
    families = {family.name: family for family in _empty_families()}
    read = []
    for name, cache in caches:
        totals = cache.stats.totals()
        read.append((name, totals))
        for family in families.values():
            for value in family.defaults:
                family.values[(name, value)] = 0.0
        for counter, amount in totals.counts.items():
            if counter in _SUMS:
                continue
            family_name, label = _labelled(counter)
            key = (name,) if not label else (name, label)
            families[family_name].values[key] = families[family_name].values.get(key, 0.0) + amount
        families["saved_tokens"].values[(name,)] = float(totals.saved_tokens)
        families["saved_seconds"].values[(name,)] = totals.saved_seconds
        for component, state in _circuits(cache).items():
            for candidate in _CIRCUIT_STATES:
                families["circuit_state"].values[(name, component, candidate)] = float(state == candidate)
        for plain in ("misses", "stores"):
            families[plain].values.setdefault((name,), 0.0)
        budget = getattr(cache, "error_budget", None)
        if budget is not None:  # in-memory counts under the pools' locks: no I/O
            report = budget.report()
            for family_name in ("estimated_error_rate", "estimated_error_upper", "error_budget_met"):
                if report.get(family_name) is not None:
                    families[family_name].values[(name,)] = float(report[family_name])
    return list(families.values()), read


class _Caches:
    """Caches by their `cache` label, held weakly; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[str, weakref.ref[SemanticCache]] = {}

    def add(self, cache: SemanticCache, name: str | None) -> tuple[str, bool]:
        """Register `cache` as `name` (default: its namespace); returns the name and whether it is new."""
        label = name if name is not None else cache.config.namespace
        with self._lock:
            for other, ref in list(self._refs.items()):
                if ref() is None:
                    del self._refs[other]
                elif ref() is cache:
                    if other != label:
                        raise ConfigurationError(f"this cache is already registered as cache={other!r}")
                    return label, False
            if label in self._refs:
                raise ConfigurationError(
                    f"another cache is already registered as cache={label!r} (label defaults to the namespace): "
                    "pass name=... to tell them apart"
                )
            self._refs[label] = weakref.ref(cache)
        return label, True

    def remove(self, cache: SemanticCache) -> str | None:
        with self._lock:
            for label, ref in list(self._refs.items()):
                if ref() is cache:
                    del self._refs[label]
                    return label
        return None

    def live(self) -> list[tuple[str, SemanticCache]]:
        with self._lock:
            pairs = [(label, ref()) for label, ref in self._refs.items()]
        return sorted((label, cache) for label, cache in pairs if cache is not None)


# -- Prometheus -------------------------------------------------------------------------------------------------


class PrometheusCollector:
    """A `prometheus_client` collector of one or more caches: it reads their stats at each scrape.

    `register_prometheus` creates one per registry and prefix; add caches to it with `add`."""

    def __init__(self, prefix: str = PREFIX) -> None:
        _require_prometheus()
        self.prefix = prefix
        self._caches = _Caches()

    def add(self, cache: SemanticCache, name: str | None = None) -> str:
        """Export `cache` under label `cache=name` (default: its namespace); returns the label."""
        return self._caches.add(cache, name)[0]

    def remove(self, cache: SemanticCache) -> None:
        """Stop exporting `cache`."""
        self._caches.remove(cache)

    def describe(self) -> list[Metric]:
        return list(self._metrics([]))

    def collect(self) -> list[Metric]:
        return list(self._metrics(self._caches.live()))

    def _metrics(self, caches: list[tuple[str, SemanticCache]]) -> Iterator[Metric]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        families, read = _families(caches)
        for family in families:
            kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
            metric = kind(f"{self.prefix}_{family.name}", family.description, labels=("cache", *family.labels))
            for labels, value in sorted(family.values.items()):
                metric.add_metric(labels, value)
            yield metric
        histogram = HistogramMetricFamily(f"{self.prefix}_lookup_seconds", "Lookup latency", labels=("cache",))
        for name, totals in read:
            buckets = [(repr(float(bound)), float(count)) for bound, count in
                       zip(totals.buckets, totals.bucket_counts, strict=True)]  # fmt: skip
            histogram.add_metric((name,), [*buckets, ("+Inf", float(totals.lookup_count))], totals.lookup_seconds)
        yield histogram


_PROMETHEUS: weakref.WeakKeyDictionary[Any, dict[str, PrometheusCollector]] = weakref.WeakKeyDictionary()
_OTEL: weakref.WeakKeyDictionary[Any, dict[str, OpenTelemetryMetrics]] = weakref.WeakKeyDictionary()
_REGISTER_LOCK = threading.Lock()


def _require_prometheus() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"Prometheus metrics need prometheus_client: {_INSTALL.format(extra='prometheus')}"
        ) from exc


def register_prometheus(
    cache: SemanticCache,
    registry: CollectorRegistry | None = None,
    *,
    name: str | None = None,
    prefix: str = PREFIX,
) -> PrometheusCollector:
    """Export `cache`'s metrics to `registry` (default `prometheus_client.REGISTRY`) as `cache=name` (default:
    its namespace). One collector per registry and prefix serves every cache; registering the same cache again
    is a no-op; another cache under a label already taken raises ConfigurationError."""
    _require_prometheus()
    from prometheus_client import REGISTRY

    target = REGISTRY if registry is None else registry
    with _REGISTER_LOCK:
        collectors = _PROMETHEUS.setdefault(target, {})
        collector = collectors.get(prefix)
        if collector is None:
            collector = PrometheusCollector(prefix)
            try:
                target.register(collector)
            except ValueError as exc:  # DuplicateTimeseries: another collector already uses these names
                raise ConfigurationError(f"cannot register the cache metrics ({exc}): pass another prefix") from exc
            collectors[prefix] = collector
    collector.add(cache, name)
    return collector


# -- OpenTelemetry ----------------------------------------------------------------------------------------------


class OpenTelemetryMetrics:
    """Observable instruments of one or more caches on one meter, read at each collection, and a lookup-duration
    histogram recorded as lookups happen. `instrument_opentelemetry` creates one per meter provider and prefix."""

    def __init__(self, meter_provider: MeterProvider, prefix: str = PREFIX) -> None:
        from semantic_llm_cache import __version__

        self.prefix = prefix
        self._caches = _Caches()
        self._removers: dict[str, Callable[[], None]] = {}
        meter = meter_provider.get_meter("semantic_llm_cache", __version__)
        for family in _empty_families():
            create = meter.create_observable_counter if family.kind == "counter" else meter.create_observable_gauge
            create(f"{prefix}.{family.name}", [self._callback(family.name)], family.unit, family.description)
        name, description = f"{prefix}.lookup.duration", "Lookup latency"
        try:
            self._histogram: Histogram = meter.create_histogram(
                name, "s", description, explicit_bucket_boundaries_advisory=LOOKUP_BUCKETS
            )
        except TypeError:  # opentelemetry-api < 1.30 cannot advise boundaries: the SDK's defaults suit milliseconds
            _logger.warning("semantic cache: opentelemetry-api < 1.30: %s uses the SDK's default buckets (upgrade, "
                            "or add a View with ExplicitBucketHistogramAggregation(LOOKUP_BUCKETS))", name)  # fmt: skip
            self._histogram = meter.create_histogram(name, "s", description)

    def add(self, cache: SemanticCache, name: str | None = None) -> str:
        """Export `cache` with attribute `cache=name` (default: its namespace); returns the name. Its lookups
        enter the duration histogram from now on."""
        label, new = self._caches.add(cache, name)
        if new:
            histogram, attributes = self._histogram, {"cache": label}
            self._removers[label] = cache.stats.on_lookup(lambda seconds: histogram.record(seconds, attributes))
        return label

    def remove(self, cache: SemanticCache) -> None:
        """Stop exporting `cache`."""
        label = self._caches.remove(cache)
        remover = None if label is None else self._removers.pop(label, None)
        if remover is not None:
            remover()

    def _callback(self, family_name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        from opentelemetry.metrics import Observation

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            families, _ = _families(self._caches.live())
            family = next(family for family in families if family.name == family_name)
            return [
                Observation(value, dict(zip(("cache", *family.labels), labels, strict=True)))
                for labels, value in sorted(family.values.items())
            ]

        return observe


def _require_opentelemetry() -> None:
    try:
        from opentelemetry import metrics  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"OpenTelemetry metrics need opentelemetry-api: {_INSTALL.format(extra='otel')}"
        ) from exc


def instrument_opentelemetry(
    cache: SemanticCache,
    meter_provider: MeterProvider | None = None,
    *,
    name: str | None = None,
    prefix: str = PREFIX,
) -> OpenTelemetryMetrics:
    """Export `cache`'s metrics through `meter_provider` (default: the global one) with attribute `cache=name`
    (default: its namespace). One set of instruments per provider and prefix serves every cache; instrumenting
    the same cache again is a no-op; another cache under a name already taken raises ConfigurationError."""
    _require_opentelemetry()
    from opentelemetry import metrics

    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    with _REGISTER_LOCK:
        instruments = _OTEL.setdefault(provider, {})
        instrumented = instruments.get(prefix)
        if instrumented is None:
            instrumented = instruments[prefix] = OpenTelemetryMetrics(provider, prefix)
    instrumented.add(cache, name)
    return instrumented


__all__ = [
    "LOOKUP_BUCKETS",
    "PREFIX",
    "OpenTelemetryMetrics",
    "PrometheusCollector",
    "instrument_opentelemetry",
    "register_prometheus",
]
