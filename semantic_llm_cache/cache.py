"""SemanticCache: exact lookup by hash, then semantic lookup inside one partition, single-flight misses."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import inspect
import logging
import math
import os
import sys
import threading
import time
import types
import weakref
from collections import OrderedDict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import Context, ContextVar, copy_context
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeVar, cast

from semantic_llm_cache._sync import run_sync, submit
from semantic_llm_cache.backends.memory import MemoryBackend
from semantic_llm_cache.call_options import NO_OPTIONS, WHERE_CANDIDATE_FACTOR, CallOptions
from semantic_llm_cache.config import CacheConfig, CacheEntry, OnError, Vector, validate_ttl
from semantic_llm_cache.embeddings.adapters import as_embedder
from semantic_llm_cache.embeddings.base import Embedder, normalized_matrix
from semantic_llm_cache.embeddings.local import LocalEmbedder
from semantic_llm_cache.encryption import DecryptionError, EntryCipher, KeyMaterial, is_sealed
from semantic_llm_cache.error_budget import AnswersMatch, ErrorBudget, PoolEvidence, verified_at, with_outcome
from semantic_llm_cache.errors import (
    CacheBackendError,
    ConfigurationError,
    EmbeddingError,
    InvalidInputError,
    SemanticCacheError,
    VerifierError,
)
from semantic_llm_cache.flights import LEADER_GONE, Flights, Ticket, wait_async
from semantic_llm_cache.guard import guard_refusal
from semantic_llm_cache.health import CircuitBreaker, CircuitOpen, FailureLog
from semantic_llm_cache.results import CacheHit, Computed, Resolution
from semantic_llm_cache.scope import Scope, exact_key, normalize_prompt, partition_id
from semantic_llm_cache.sensitive import NeverCache
from semantic_llm_cache.shared_text import Difference, differing_parts
from semantic_llm_cache.stats import CacheStats
from semantic_llm_cache.storage import Match, StorageBackend
from semantic_llm_cache.temperature import ServeAlways, TemperaturePolicy, temperature_of
from semantic_llm_cache.values import check_json_value, check_text, shown
from semantic_llm_cache.verifiers import Candidate, Verifier, as_verifier, run_verifier

if sys.version_info >= (3, 11):
    from asyncio import timeout as _deadline
else:  # pragma: no cover - Python 3.10: the package asyncio.timeout came from (a cancelled caller stays cancelled)
    from async_timeout import timeout as _deadline


logger = logging.getLogger("semantic_llm_cache")
T = TypeVar("T")


async def _within(call: Awaitable[T], seconds: float) -> T:
    """Await `call` within `seconds`. A coroutine is first run up to its first wait: one that answers without
    waiting (an in-process backend, a table embedder) needs no timer at all; one that waits gets what is left."""
    if not inspect.iscoroutine(call):
        async with _deadline(seconds):
            return await call
    started = time.monotonic()
    try:
        waiting_on = call.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    async with _deadline(max(0.0, seconds - (time.monotonic() - started))):
        return cast(T, await _resumed(call, waiting_on))


@types.coroutine
def _resumed(coroutine: Coroutine[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    """Go on with a coroutine already run up to a wait: hand the task what it waits on, and back what comes."""
    while True:
        try:
            sent = yield waiting_on
        except BaseException as exc:  # a cancellation (the deadline's) or a close, thrown into the task
            try:
                waiting_on = coroutine.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting_on = coroutine.send(sent)
            except StopIteration as done:
                return done.value


_FAILED: Any = object()
_UNREADABLE: Any = object()
_TOO_LONG: Any = object()  # in the recent-vectors memory: this text is over the embedder's window
_DEFAULT_NEVER_CACHE: Any = object()  # SemanticCache(never_cache=...) left out: the built-in NeverCache()
_default_embedder: LocalEmbedder | None = None
MODEL_LOAD_TIMEOUT = 300.0  # seconds a first embedding call may take while the model loads
_RECENT_VECTORS = 1024  # vectors kept between a miss's lookup and the store that follows it
_OFF_LOOP_CHARS = 16_384  # prompts longer than this are normalised and hashed in a worker thread
_GUARD_OFF_LOOP_CHARS = 2_048  # the answer guard runs in a worker thread when the two prompts exceed this


@dataclass
class _Budget:
    """Seconds a public call may still spend waiting on the backend and the embedder (compute not included)."""

    remaining: float


_BUDGET: ContextVar[_Budget | None] = ContextVar("semantic_llm_cache_budget", default=None)


async def _on_own_budget(remaining: float | None, call: Awaitable[T]) -> T:
    """Await `call` (in a task of its own) on a copy of the call's budget: `_overlapped` charges the call once."""
    _BUDGET.set(None if remaining is None else _Budget(remaining))
    return await call


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Mark a dropped task's outcome as seen (no 'exception was never retrieved' for a search nobody needs)."""
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True)
class _Declined:
    """A semantic candidate the error budget did not serve: compared with the answer computed instead."""

    key: str
    partition: str
    similarity: float
    response: Any
    explored: bool  # safe, computed anyway (a paid exploration); False: not yet safe (a check, a miss anyway)
    drawn: float = 1.0  # the probability with which an exploration was drawn


@dataclass
class _Check:
    """One call's dealings with the error budget: whether it can compute (resolve) or not (lookup), and the
    candidate its lookup declined, if any."""

    computes: bool
    declined: _Declined | None = None


_CHECK: ContextVar[_Check | None] = ContextVar("semantic_llm_cache_check", default=None)
_REMEMBERED_DECLINED = 1024  # lookup() candidates kept for the store_computed that may follow (LangChain's cache)
_REMEMBER_SECONDS = 600.0
_BUDGET_COUNTERS = ("budget_checks", "budget_explorations", "budget_agreed", "budget_disagreed", "budget_undecided",
                    "budget_unsafe_refusals", "budget_comparator_errors", "budget_comparator_timeouts",
                    "budget_comparisons_dropped", "budget_feedback")  # fmt: skip


@dataclass(frozen=True)
class _Step:
    """What one round of resolve decided: lead a flight, wait for one, or the answer it was served."""

    lead: tuple[Future[Any], Vector | None] | None = None
    wait: Future[Any] | None = None
    served: Resolution | None = None


@dataclass
class _StreamLead:
    """A stream this caller leads: what storing its answer needs, and whether its reading has begun."""

    prepared: _Prepared
    assemble: Callable[[list[Any]], Any]
    future: Future[Any]
    vector: Vector | None
    scope: Scope | None
    ttl: float | None
    metadata: dict[str, Any] | None
    budget: _Budget
    flights: Flights | None = None
    started: list[bool] = field(default_factory=list)
    check: _Check | None = None

    def release(self) -> None:
        """Dropped or closed before it was read: the callers waiting on it take over."""
        if not self.started and not self.future.done() and self.flights is not None:
            self.future.set_result(LEADER_GONE)
            self.flights.finish(self.prepared.key, self.future)


@dataclass(frozen=True)
class _Prepared:
    """A call's normalised prompt, partition and exact key, and what it asks of a lookup."""

    text: str
    partition: str
    key: str
    threshold: float
    options: CallOptions = NO_OPTIONS


def _feedback_record(recorded: Any) -> dict[str, Any]:
    """An entry's feedback counters, read defensively: whatever an older version or a user left there."""
    record = dict(recorded) if isinstance(recorded, dict) else {}

    def number(name: str, default: float) -> float:
        value = record.get(name, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
        return float(value) if ok else default

    record["correct"] = int(number("correct", 0))
    record["wrong"] = int(number("wrong", 0))
    record["lowest_correct_similarity"] = min(number("lowest_correct_similarity", 1.0), 1.0)
    return record


def default_embedder() -> LocalEmbedder:
    """The process-wide default embedder (one model in memory however many caches use it).

    all-MiniLM-L6-v2 on onnxruntime from the installed files (`OnnxEmbedder()`): no torch, no download.
    """
    global _default_embedder
    if _default_embedder is None:
        from semantic_llm_cache.embeddings.onnx import OnnxEmbedder

        _default_embedder = OnnxEmbedder()
    return _default_embedder


class _StreamFace:
    """What both stream faces share: how the answer is served, and what stopping early releases."""

    def __init__(self, resolution: Resolution, chunks: Any, on_close: Callable[[], None] | None = None) -> None:
        self.resolution = resolution
        self._chunks = chunks
        self._on_close = on_close

    def _closed(self) -> None:
        if self._on_close is not None:
            self._on_close()


class ResolvedStream(_StreamFace):
    """A streamed answer from `resolve_stream`: iterate it with `async for`; `resolution` says how it is
    served (a hit or a shared answer replayed, or computed live by this caller)."""

    def __aiter__(self) -> AsyncIterator[Any]:
        return cast(AsyncIterator[Any], self._chunks)

    async def aclose(self) -> None:
        """Stop early: a live stream stores nothing, and a caller waiting on it streams the model itself."""
        closer = getattr(self._chunks, "aclose", None)
        if closer is not None:
            await closer()
        self._closed()


class ResolvedSyncStream(_StreamFace):
    """A streamed answer from `resolve_stream_sync`: iterate it; `resolution` says how it is served."""

    def __iter__(self) -> Iterator[Any]:
        return cast(Iterator[Any], self._chunks)

    def close(self) -> None:
        """Stop early (see ResolvedStream.aclose)."""
        closer = getattr(self._chunks, "close", None)
        if closer is not None:
            closer()
        self._closed()


def _text_exceeds(value: Any, limit: int) -> bool:
    """True once the strings inside a JSON value add up to more than `limit` characters (stops there, so the
    check itself costs at most about `limit`)."""
    total, pending = 0, [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
        if total > limit or len(pending) > limit:  # long text, or a structure too big to walk on the loop
            return True
    return False


def _caller() -> object:
    """Who is calling: the running asyncio task, else the thread (its ident)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running event loop in this thread
        task = None
    return task if task is not None else threading.get_ident()


def replay_checked(replay: Callable[[Any], Iterable[Any]]) -> Callable[[Any], list[Any]]:
    """A decoder that replays a stored answer into its chunks at once, so a bad entry fails while it can still
    be treated as a miss (not halfway through the caller's stream)."""
    return lambda value: list(replay(value))


async def _live_chunks(open_stream: Callable[[], Any], context: Context | None = None) -> AsyncIterator[Any]:
    """The chunks of `open_stream()`, opened in `context` (the resolve caller's: its tracing spans and context
    variables) though the stream is first read later, perhaps elsewhere: the call, and the awaitable it may
    return, run there; the chunks are then read in the reader's context."""
    context = context or copy_context()
    stream = context.run(open_stream)
    if inspect.isawaitable(stream):
        stream = await context.run(asyncio.ensure_future, stream)
    async for chunk in stream:
        yield chunk


def _sync_chunks(open_stream: Callable[[], Iterable[Any]], context: Context) -> Iterator[Any]:
    yield from context.run(open_stream)


async def _replayed_chunks(chunks: Iterable[Any]) -> AsyncIterator[Any]:
    for chunk in chunks:
        yield chunk


class SemanticCache:
    """An async cache that answers a prompt with a stored answer to the same or an equivalent prompt.

    Every argument is optional: an in-memory backend, the bundled all-MiniLM-L6-v2 model, and the calibrated
    threshold. `namespace` is the tenant for calls whose Scope names none. See CacheConfig for the options.

    max_error_rate / answers_match (or error_budget=ErrorBudget(...) for its other options): the error budget,
    off by default; `threshold` is then the floor of the candidates, and which are served is learned from the
    traffic (see error_budget.py and the README).
    """

    def __init__(
        self,
        backend: StorageBackend | None = None,
        embedder: Any = None,
        threshold: float | None = None,
        ttl: float | None = None,
        namespace: str | None = None,
        *,
        config: CacheConfig | None = None,
        answer_guard: bool | None = None,
        on_error: OnError | None = None,
        timeout: float | None = None,
        max_entries: int | None = None,
        candidates: int | None = None,
        max_prompt_chars: int | None = None,
        encryption_key: KeyMaterial | Sequence[KeyMaterial] | None = None,
        never_cache: Callable[[str, Any], Any] | Literal[False] | None = _DEFAULT_NEVER_CACHE,
        temperature_policy: TemperaturePolicy | None = None,
        verifiers: Sequence[Verifier | Callable[[str, str, float], Any]] | None = None,
        max_error_rate: float | None = None,
        answers_match: AnswersMatch | None = None,
        error_budget: ErrorBudget | None = None,
        tuned: str | os.PathLike[str] | None = None,
    ) -> None:
        if tuned is not None:  # a folder from `semantic-llm-cache tune`: its embedder, verifier and thresholds
            from semantic_llm_cache.tuned import load_tuned

            if embedder is not None:
                raise ConfigurationError("pass either tuned (a tuned folder brings its embedder) or embedder, not both")
            setup = load_tuned(tuned)
            embedder = setup.embedder
            verifiers = [*setup.verifiers, *(verifiers or ())]
            threshold = setup.threshold if threshold is None else threshold
            answer_guard = setup.answer_guard if answer_guard is None else answer_guard
            candidates = setup.candidates if candidates is None else candidates
        overrides: dict[str, Any] = {
            "threshold": threshold,
            "ttl": ttl,
            "namespace": namespace,
            "answer_guard": answer_guard,
            "on_error": on_error,
            "timeout": timeout,
            "max_entries": max_entries,
            "candidates": candidates,
            "max_prompt_chars": max_prompt_chars,
        }
        self.config = dataclasses.replace(
            config or CacheConfig(), **{name: value for name, value in overrides.items() if value is not None}
        )
        self.backend: StorageBackend = backend if backend is not None else MemoryBackend(self.config.max_entries)
        self.embedder: Embedder = default_embedder() if embedder is None else as_embedder(embedder)
        self.stats = CacheStats()
        self._flights = Flights()
        self._partition_of_default_scope: str | None = None
        self._recent_vectors: OrderedDict[bytes, Vector] = OrderedDict()
        self._recent_vectors_lock = threading.Lock()
        self._failures = FailureLog(logger)
        self._cipher = None if encryption_key is None else EntryCipher(encryption_key)
        if never_cache is _DEFAULT_NEVER_CACHE:
            never_cache = NeverCache()
        if never_cache not in (None, False) and not callable(never_cache):
            raise ConfigurationError("never_cache must be a callable (prompt, response) -> reason or None, or False")
        self._never_cache = never_cache or None
        self.verifiers: list[Verifier] = [as_verifier(verifier) for verifier in verifiers or ()]
        self.temperature_policy: TemperaturePolicy = temperature_policy or ServeAlways()
        if not callable(getattr(self.temperature_policy, "skips", None)) or not hasattr(
            self.temperature_policy, "stores_skipped"
        ):
            raise ConfigurationError(
                "temperature_policy must have skips(temperature) -> bool and stores_skipped, e.g. NeverAbove(0.0)"
            )
        self._breakers = {
            "backend": CircuitBreaker("the cache backend", logger=logger),
            "embedder": CircuitBreaker("the embedder", logger=logger),
        }
        if error_budget is not None and (max_error_rate is not None or answers_match is not None):
            raise ConfigurationError("pass either error_budget=ErrorBudget(...) or max_error_rate/answers_match")
        if error_budget is None and max_error_rate is not None:
            error_budget = ErrorBudget(max_error_rate, answers_match)
        elif error_budget is None and answers_match is not None:
            raise ConfigurationError("answers_match is used by the error budget: set max_error_rate too")
        if error_budget is not None and not isinstance(error_budget, ErrorBudget):
            raise ConfigurationError(f"error_budget must be an ErrorBudget, got {type(error_budget).__name__}")
        self.error_budget: ErrorBudget | None = error_budget
        self._comparisons: set[Any] = set()
        self._comparisons_lock = threading.Lock()
        self._declined_by_key: OrderedDict[str, tuple[float, _Declined]] = OrderedDict()

    @classmethod
    def from_tuned(cls, directory: str | os.PathLike[str], **options: Any) -> SemanticCache:
        """A cache serving with a tuned setup (`semantic-llm-cache tune PAIRS --out DIR`): the tuned embedder
        (its own name, so its entries never meet the base model's), its verifier followed by any `verifiers`
        given here, and the thresholds chosen on its calibration part; other options as for the constructor (an
        explicit `threshold` or `answer_guard` wins over the manifest's). Needs only the light install."""
        return cls(tuned=directory, **options)

    # -- public API -------------------------------------------------------------------------------------

    async def lookup(
        self,
        prompt: str,
        scope: Scope | None = None,
        *,
        threshold: float | None = None,
        where: Mapping[str, Any] | None = None,
        decode: Callable[[Any], Any] | None = None,
    ) -> CacheHit | None:
        """Return the stored answer for `prompt` (exact, else semantic within its partition), or None.

        threshold: this call's cosine threshold (None: the cache's). where: metadata field -> value that the
        entry's stored metadata must have (exact match), for exact and semantic hits alike.
        decode: as in `resolve`; the hit's `response` is the decoded answer, and an answer it cannot decode is
        a miss (logged and counted once; `on_error="raise"` raises)."""
        options = CallOptions(threshold=threshold, where=where)
        prepared = await self._prepare(prompt, scope, options=options)
        if prepared is None:
            return None
        if self._skips_by_temperature(scope):
            return None
        check = _Check(computes=False) if self.error_budget is not None else None
        with self._budget():
            hit, _ = await self._checked(check, self._lookup(prepared))
        if check is not None and check.declined is not None:
            self._remember_declined(prepared.key, check.declined)
        served = None if hit is None else self._decoded_hit(hit, decode)
        if served is None or served.hit is None:
            self.stats.count("misses")
            return None
        return served.hit if decode is None else dataclasses.replace(served.hit, response=served.response)

    async def store(
        self,
        prompt: str,
        response: Any,
        scope: Scope | None = None,
        ttl: float | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        compute_seconds: float | None = None,
        tokens: int | None = None,
    ) -> str | None:
        """Store `response` (a JSON value) for `prompt`; returns the entry's key (None if the backend failed).

        `compute_seconds` and `tokens` say what the answer cost; each later hit adds them to the savings.
        """
        self._check_payload(response, metadata, ttl, compute_seconds, tokens)
        prepared = await self._prepare(prompt, scope, count=False)
        if prepared is None:
            self.stats.count("prompt_too_long")
            raise InvalidInputError(
                f"prompt is longer than max_prompt_chars={self.config.max_prompt_chars} characters; it is not cached "
                "(raise max_prompt_chars to cache it exactly)"
            )
        if await self._kept_out(prepared.text, response):
            return None
        with self._budget():
            vector = await self._embed(prepared.text)
            return await self._write(prepared, response, self._namespace(scope), vector, ttl, metadata,
                                     compute_seconds, tokens)  # fmt: skip

    async def store_computed(
        self,
        prompt: str,
        outcome: Any,
        scope: Scope | None = None,
        *,
        ttl: float | None = None,
        metadata: dict[str, Any] | None = None,
        compute_seconds: float | None = None,
    ) -> str | None:
        """Store an answer computed outside `resolve` (e.g. LangChain's `BaseCache.update`) under the same
        policy as a computed one: `outcome` may be a `Computed`; an answer JSON cannot hold is not stored
        (counted as `unstorable_answers` and logged; `on_error="raise"` raises). Returns the key, or None."""
        self._check_payload(None, metadata, ttl, compute_seconds, None)
        prepared = await self._prepare(prompt, scope, count=False)
        if prepared is None:
            self.stats.count("prompt_too_long")
            return None
        with self._budget():
            stored = self._store_outcome(prepared, outcome, compute_seconds or 0.0, scope, None, ttl, metadata)
            value, key = await stored
        declined = self._recall_declined(prepared.key)
        if declined is not None:  # a lookup() the error budget declined, then the model's answer: compare them
            self._compare_later(_Check(True, declined), prepared.text, value)
        return key

    async def get_or_compute(
        self,
        prompt: str,
        compute: Callable[[], Any],
        scope: Scope | None = None,
        *,
        threshold: float | None = None,
        bypass: bool = False,
        refresh: bool = False,
        ttl: float | None = None,
        where: Mapping[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Any:
        """Return the cached answer, or call `compute()`, store its result and return it.

        `compute` is a zero-argument async function, or a sync one (run in a worker thread with the caller's
        context). It may return a `Computed` to report tokens or to keep its answer out of the cache.
        Concurrent callers with the same prompt and scope share one `compute()` call; if it raises, nothing is
        stored and every one of them gets the exception. An answer JSON cannot hold is returned but not stored.

        Per call: `threshold` (this call's cosine threshold), `bypass` (no lookup, no store), `refresh`
        (compute and store over the old entry), `ttl` (this entry's lifetime), `where` (only entries whose
        metadata has these field values may answer; a stored answer gets them in its metadata).
        """
        resolution = await self.resolve(
            prompt, compute, scope, threshold=threshold, bypass=bypass, refresh=refresh, ttl=ttl, where=where,
            metadata=metadata,
        )  # fmt: skip
        return resolution.response

    async def resolve(
        self,
        prompt: str,
        compute: Callable[[], Any],
        scope: Scope | None = None,
        *,
        threshold: float | None = None,
        bypass: bool = False,
        refresh: bool = False,
        ttl: float | None = None,
        where: Mapping[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        decode: Callable[[Any], Any] | None = None,
    ) -> Resolution:
        """Like get_or_compute (the same per-call options), but says whether the answer came from the cache and
        how (for adapters).

        decode: turns a stored or shared answer (JSON) into what the caller returns (e.g. a framework object).
        An answer it cannot decode (it raises) is treated as a miss: computed under the same single-flight and
        stored in place of the unreadable entry (logged and counted; `on_error="raise"` raises instead).
        The caller that computes gets `computed=True` and the JSON its compute returned (undecoded).

        The time spent waiting on the backend and the embedder is bounded by `timeout` for the whole call (the
        lookup and the store share it); the time `compute()` takes is not counted.
        """
        self._check_payload(None, metadata, ttl, None, None)
        options = self._with_temperature(CallOptions(threshold, where, bypass, refresh), scope)
        prepared = await self._prepare(prompt, scope, options=options)
        if prepared is None or self._bypassed(options):
            return Resolution(await self._compute_uncached(compute), None, computed=True)
        metadata = self._tagged(metadata, options)
        check = self._new_check()
        with self._budget():
            while True:
                lead, outcome = await self._settle(prepared, decode, check=check)
                if outcome is not None:
                    return outcome
                if lead is not None:
                    break
            future, vector = lead
            try:
                result, key = await self._compute_and_store(prepared, compute, scope, vector, ttl, metadata)
            except BaseException as exc:
                self._fail_flight(future, exc)
                raise
            else:
                future.set_result(result)
                self._compare_later(check, prepared.text, result)
                return Resolution(result, None, computed=True, key=key)
            finally:
                self._flights.finish(prepared.key, future)

    def resolve_sync(
        self,
        prompt: str,
        compute: Callable[[], Any],
        scope: Scope | None = None,
        *,
        threshold: float | None = None,
        bypass: bool = False,
        refresh: bool = False,
        ttl: float | None = None,
        where: Mapping[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        decode: Callable[[Any], Any] | None = None,
    ) -> Resolution:
        """`resolve` for sync code: `compute()` runs in the calling thread. Threads and async callers asking the
        same prompt and scope share one call. Lookups and stores go through the shared background loop."""
        self._check_payload(None, metadata, ttl, None, None)
        options = self._with_temperature(CallOptions(threshold, where, bypass, refresh), scope)
        prepared = self._prepare_now(prompt, scope, options)
        if prepared is None:
            self._count_too_long()
        if prepared is None or self._bypassed(options):
            return Resolution(self._unwrap(compute()), None, computed=True)
        metadata = self._tagged(metadata, options)
        budget = _Budget(self.config.timeout)
        check = self._new_check()
        while True:
            lead, outcome = self._settle_sync(prepared, decode, budget, check=check)
            if outcome is not None:
                return outcome
            if lead is not None:
                break
        future, vector = lead
        try:
            started = time.perf_counter()
            outcome_value = compute()
            elapsed = time.perf_counter() - started
            stored = self._store_outcome(prepared, outcome_value, elapsed, scope, vector, ttl, metadata)
            result, key = run_sync(self._within(budget, stored))
        except BaseException as exc:
            self._fail_flight(future, exc)
            raise
        else:
            future.set_result(result)
            self._compare_later(check, prepared.text, result)
            return Resolution(result, None, computed=True, key=key)
        finally:
            self._flights.finish(prepared.key, future)

    async def resolve_stream(
        self,
        prompt: str,
        open_stream: Callable[[], Any],
        scope: Scope | None = None,
        *,
        assemble: Callable[[list[Any]], Any],
        replay: Callable[[Any], Iterable[Any]],
        threshold: float | None = None,
        bypass: bool = False,
        refresh: bool = False,
        ttl: float | None = None,
        where: Mapping[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ResolvedStream:
        """Resolve a streamed answer: the caller that computes gets the model's chunks live; a hit, or a caller
        that joined another's stream, gets `replay(stored answer)`. The answer is stored once, when the stream
        has been read to the end (`assemble(chunks)` -> a JSON value, or a Computed; None stores nothing):
        never a partial one, nothing for a stream that failed or was abandoned (a waiting caller then streams
        the model itself). `open_stream()` returns an async iterator of chunks (or an awaitable of one).

        Returns a `ResolvedStream`: iterate it (`async for`); its `resolution` says how it was served. The
        per-call options are those of `resolve`."""
        self._check_payload(None, metadata, ttl, None, None)
        options = self._with_temperature(CallOptions(threshold, where, bypass, refresh), scope)
        prepared = await self._prepare(prompt, scope, options=options)
        budget = _Budget(self.config.timeout)
        if prepared is None or self._bypassed(options):
            return ResolvedStream(Resolution(None, None, computed=True), _live_chunks(open_stream))
        metadata = self._tagged(metadata, options)
        check = self._new_check()
        while True:
            settle = self._settle(prepared, replay_checked(replay), stream=True, check=check)
            lead, outcome = await self._within(budget, settle)
            if outcome is not None:
                return ResolvedStream(outcome, _replayed_chunks(outcome.response))
            if lead is not None:
                break
        stream_lead = _StreamLead(prepared, assemble, *lead, scope, ttl, metadata, budget, self._flights, check=check)
        chunks = self._leader_stream(stream_lead, functools.partial(_live_chunks, open_stream, copy_context()))
        resolved = ResolvedStream(Resolution(None, None, computed=True, key=prepared.key), chunks, stream_lead.release)
        weakref.finalize(resolved, stream_lead.release)
        return resolved

    def resolve_stream_sync(
        self,
        prompt: str,
        open_stream: Callable[[], Iterable[Any]],
        scope: Scope | None = None,
        *,
        assemble: Callable[[list[Any]], Any],
        replay: Callable[[Any], Iterable[Any]],
        threshold: float | None = None,
        bypass: bool = False,
        refresh: bool = False,
        ttl: float | None = None,
        where: Mapping[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ResolvedSyncStream:
        """`resolve_stream` for sync code: the model's stream is read in the calling thread."""
        self._check_payload(None, metadata, ttl, None, None)
        options = self._with_temperature(CallOptions(threshold, where, bypass, refresh), scope)
        prepared = self._prepare_now(prompt, scope, options)
        if prepared is None:
            self._count_too_long()
        if prepared is None or self._bypassed(options):
            return ResolvedSyncStream(Resolution(None, None, computed=True), iter(open_stream()))
        metadata = self._tagged(metadata, options)
        budget = _Budget(self.config.timeout)
        check = self._new_check()
        while True:
            lead, outcome = self._settle_sync(prepared, replay_checked(replay), budget, stream=True, check=check)
            if outcome is not None:
                return ResolvedSyncStream(outcome, iter(outcome.response))
            if lead is not None:
                break
        stream_lead = _StreamLead(prepared, assemble, *lead, scope, ttl, metadata, budget, self._flights, check=check)
        chunks = self._leader_stream_sync(stream_lead, functools.partial(_sync_chunks, open_stream, copy_context()))
        resolved = ResolvedSyncStream(
            Resolution(None, None, computed=True, key=prepared.key), chunks, stream_lead.release
        )
        weakref.finalize(resolved, stream_lead.release)
        return resolved

    # -- single-flight ----------------------------------------------------------------------------------

    async def _settle(
        self,
        prepared: _Prepared,
        decode: Callable[[Any], Any] | None,
        *,
        stream: bool = False,
        check: _Check | None = None,
    ) -> tuple[tuple[Future[Any], Vector | None] | None, Resolution | None]:
        """One round of resolve before computing: join a flight under way, or look up and serve a hit, or
        claim the key. Returns (lead, None) to compute, (None, outcome) when served, (None, None) to go again.
        A flight that is a stream nobody reads yet is not waited on: this caller computes on its own."""
        step = self._before_lookup(prepared)
        if step is None:
            ticket = self._flights.ticket(prepared.key)
            if prepared.options.refresh:
                hit, vector = None, None
            else:
                hit, vector = await self._checked(check, self._lookup(prepared))
            step = self._after_lookup(prepared, ticket, hit, vector, decode, stream)
        if step.wait is not None:
            return None, self._joined(await wait_async(step.wait), decode, prepared.key)
        return step.lead, step.served

    def _settle_sync(
        self,
        prepared: _Prepared,
        decode: Callable[[Any], Any] | None,
        budget: _Budget,
        *,
        stream: bool = False,
        check: _Check | None = None,
    ) -> tuple[tuple[Future[Any], Vector | None] | None, Resolution | None]:
        """`_settle` for a thread: the same steps, waiting on flights by blocking."""
        step = self._before_lookup(prepared)
        if step is None:
            ticket = self._flights.ticket(prepared.key)
            if prepared.options.refresh:
                hit, vector = None, None
            else:
                hit, vector = run_sync(self._within(budget, self._checked(check, self._lookup(prepared))))
            step = self._after_lookup(prepared, ticket, hit, vector, decode, stream)
        if step.wait is not None:
            return None, self._joined(step.wait.result(), decode, prepared.key)
        return step.lead, step.served

    def _before_lookup(self, prepared: _Prepared) -> _Step | None:
        """Wait for the flight of this key under way (or compute alone beside an unread stream); None: none."""
        running = self._flights.running(prepared.key)
        if running is None:
            return None
        if not self._flights.waitable(running, _caller()):
            return _Step(lead=self._alone())
        return _Step(wait=running)

    def _after_lookup(
        self,
        prepared: _Prepared,
        ticket: Ticket,
        hit: CacheHit | None,
        vector: Vector | None,
        decode: Callable[[Any], Any] | None,
        stream: bool,
    ) -> _Step:
        """Serve the hit, or join the flight that started (or finished) meanwhile, or lead a new one."""
        if hit is not None:
            served = self._decoded_hit(hit, decode)
            if served is not None:
                return _Step(served=served)
        claim = self._flights.claim(ticket, opener=_caller() if stream else None)
        if not claim.leader:
            if not self._flights.waitable(claim.future, _caller()):
                return _Step(lead=self._alone(vector))
            return _Step(wait=claim.future)
        self.stats.count("refreshes" if prepared.options.refresh else "misses")
        return _Step(lead=(claim.future, vector))

    def _alone(self, vector: Vector | None = None) -> tuple[Future[Any], Vector | None]:
        """A flight of this caller's own, outside the table (nobody waits on it), counted as a miss."""
        self.stats.count("misses")
        return Future(), vector

    def _joined(self, result: Any, decode: Callable[[Any], Any] | None, key: str) -> Resolution | None:
        """A caller that waited on another's flight: its answer (a shared hit), or None to go again (the leader
        was cancelled, or its answer cannot be decoded: then this caller looks up, and computes, itself)."""
        if result is LEADER_GONE:
            return None
        value = self._decode(result, decode)
        if value is _UNREADABLE:
            return None
        self.stats.count("shared_hits")
        return Resolution(value, None, computed=False, shared=True, key=key)

    def _decoded_hit(self, hit: CacheHit, decode: Callable[[Any], Any] | None) -> Resolution | None:
        """A hit's answer through `decode` (and credited to the stats); None when it cannot be decoded."""
        value = self._decode(hit.response, decode)
        if value is _UNREADABLE:
            return None
        self._credit(hit)
        return Resolution(value, hit, computed=False)

    def _decode(self, value: Any, decode: Callable[[Any], Any] | None) -> Any:
        if decode is None:
            return value
        try:
            return decode(value)
        except Exception as exc:
            self.stats.count("undecodable_entries")
            if self.config.on_error == "raise":
                raise CacheBackendError(f"a cached answer could not be decoded: {type(exc).__name__}: {exc}") from exc
            self._failures.warning(
                "undecodable",
                "semantic cache: a cached answer could not be decoded (%s: %s); computing it again to replace it",
                type(exc).__name__,
                exc,
            )
            return _UNREADABLE

    @staticmethod
    def _fail_flight(future: Future[Any], error: BaseException) -> None:
        """The leader did not finish: waiters get its exception, or take over if it was cancelled or stopped."""
        if future.done():
            return
        if isinstance(error, Exception):
            future.set_exception(error)
        else:  # CancelledError, GeneratorExit, KeyboardInterrupt: no answer, and no fault of the answer
            future.set_result(LEADER_GONE)

    async def _leader_stream(
        self, lead: _StreamLead, open_stream: Callable[[], AsyncIterator[Any]]
    ) -> AsyncIterator[Any]:
        chunks: list[Any] = []
        self._begin_stream(lead)
        try:
            began = time.perf_counter()
            async for chunk in open_stream():
                chunks.append(chunk)
                yield chunk
            store = self._stream_store(lead, chunks, time.perf_counter() - began)
            result = None if store is None else (await self._within(lead.budget, store))[0]
            if store is not None:
                self._compare_later(lead.check, lead.prepared.text, result)
        except BaseException as exc:
            self._fail_flight(lead.future, exc)
            raise
        else:
            self._end_stream(lead, result)
        finally:
            self._flights.finish(lead.prepared.key, lead.future)

    def _leader_stream_sync(self, lead: _StreamLead, open_stream: Callable[[], Iterator[Any]]) -> Iterator[Any]:
        chunks: list[Any] = []
        self._begin_stream(lead)
        try:
            began = time.perf_counter()
            for chunk in open_stream():
                chunks.append(chunk)
                yield chunk
            store = self._stream_store(lead, chunks, time.perf_counter() - began)
            result = None if store is None else run_sync(self._within(lead.budget, store))[0]
            if store is not None:
                self._compare_later(lead.check, lead.prepared.text, result)
        except BaseException as exc:
            self._fail_flight(lead.future, exc)
            raise
        else:
            self._end_stream(lead, result)
        finally:
            self._flights.finish(lead.prepared.key, lead.future)

    def _begin_stream(self, lead: _StreamLead) -> None:
        lead.started.append(True)  # from here on the stream's generator settles the flight itself
        self._flights.started(lead.future)

    def _stream_store(
        self, lead: _StreamLead, chunks: list[Any], elapsed: float
    ) -> Coroutine[Any, Any, tuple[Any, str | None]] | None:
        """The store of a stream read to the end (None when `assemble` says there is nothing to store)."""
        outcome = lead.assemble(chunks)
        if outcome is None:
            self.stats.count("not_stored")
            return None
        return self._store_outcome(lead.prepared, outcome, elapsed, lead.scope, lead.vector, lead.ttl, lead.metadata)

    @staticmethod
    def _end_stream(lead: _StreamLead, result: Any) -> None:
        if not lead.future.done():  # (a caller waiting on an empty answer takes over rather than share it)
            lead.future.set_result(result if result is not None else LEADER_GONE)

    async def _compute_and_store(
        self,
        prepared: _Prepared,
        compute: Callable[[], Any],
        scope: Scope | None,
        vector: Vector | None,
        ttl: float | None,
        metadata: dict[str, Any] | None,
    ) -> tuple[Any, str | None]:
        """Run `compute` (a sync one in a worker thread, with the caller's context), store its answer; return it
        and the key it was stored under (None: not stored)."""
        started = time.perf_counter()
        outcome = await self._run_compute(compute)
        elapsed = time.perf_counter() - started
        return await self._store_outcome(prepared, outcome, elapsed, scope, vector, ttl, metadata)

    @staticmethod
    async def _run_compute(compute: Callable[[], Any]) -> Any:
        if inspect.iscoroutinefunction(compute):
            return await compute()
        outcome = await asyncio.to_thread(compute)
        if inspect.isawaitable(outcome):
            outcome = await outcome
        return outcome

    async def _compute_uncached(self, compute: Callable[[], Any]) -> Any:
        """Answer a prompt the cache does not take (too long): compute, store nothing."""
        return self._unwrap(await self._run_compute(compute))

    def _bypassed(self, options: CallOptions) -> bool:
        """True (counted) when this call skips the cache entirely (asked to)."""
        if options.bypass:
            self.stats.count("bypassed")
            return True
        return False

    def _with_temperature(self, options: CallOptions, scope: Scope | None) -> CallOptions:
        """The call's options once the temperature policy has had its say on its `Scope.params` temperature."""
        forced = self.temperature_options(temperature_of(scope.params) if isinstance(scope, Scope) else None)
        if not forced or options.bypass:
            return options
        return dataclasses.replace(options, bypass=forced.get("bypass", False), refresh=forced.get("refresh", False))

    def _skips_by_temperature(self, scope: Scope | None) -> bool:
        return self.skips_by_temperature(temperature_of(scope.params) if isinstance(scope, Scope) else None)

    def skips_by_temperature(self, temperature: float | None) -> bool:
        """True (counted as `temperature_skips`) when the temperature policy keeps a call sampled at
        `temperature` from being served from the cache. None (unknown) never skips."""
        if temperature is None or not self.temperature_policy.skips(temperature):
            return False
        self.stats.count("temperature_skips")
        return True

    def temperature_options(self, temperature: float | None) -> dict[str, bool]:
        """What the temperature policy asks of a call sampled at `temperature`, as `resolve` options: nothing,
        `refresh` (skip the lookup, store the fresh answer) or `bypass` (neither). Adapters that know their
        model's temperature pass these on; counted as `temperature_skips`."""
        if not self.skips_by_temperature(temperature):
            return {}
        return {"refresh": True} if self.temperature_policy.stores_skipped else {"bypass": True}

    @staticmethod
    def _tagged(metadata: dict[str, Any] | None, options: CallOptions) -> dict[str, Any] | None:
        """A stored answer's metadata carries the call's `where` fields, so the same filter finds it again."""
        if not options.where:
            return metadata
        return {**(metadata or {}), **options.where}

    def _count_too_long(self) -> None:
        self.stats.count("prompt_too_long")
        self._failures.warning(
            "prompt_too_long",
            "semantic cache: a prompt longer than max_prompt_chars=%d was passed through uncached "
            "(raise max_prompt_chars to cache such prompts exactly)",
            self.config.max_prompt_chars,
        )

    @staticmethod
    def _unwrap(outcome: Any) -> Any:
        return outcome.value if isinstance(outcome, Computed) else outcome

    async def _store_outcome(
        self,
        prepared: _Prepared,
        outcome: Any,
        elapsed: float,
        scope: Scope | None,
        vector: Vector | None,
        ttl: float | None,
        metadata: dict[str, Any] | None,
    ) -> tuple[Any, str | None]:
        """Store a computed answer unless told not to, JSON cannot hold it or `never_cache` keeps it out (then
        count, log, and still return it); return it and the key it was stored under (None: not stored)."""
        computed = outcome if isinstance(outcome, Computed) else Computed(outcome)
        if not computed.store:
            self.stats.count("not_stored")
            return computed.value, None
        try:
            check_json_value(computed.value)
        except InvalidInputError as exc:
            self.stats.count("unstorable_answers")
            if self.config.on_error == "raise":
                raise
            self._failures.warning(
                "unstorable_answer", "semantic cache: answer not stored (%s); returned to the caller uncached", exc
            )
            return computed.value, None
        if await self._kept_out(prepared.text, computed.value):
            return computed.value, None
        if vector is None:
            vector = await self._embed(prepared.text)
        key = await self._write(prepared, computed.value, self._namespace(scope), vector, ttl, metadata, elapsed,
                                computed.tokens)  # fmt: skip
        return computed.value, key

    async def feedback(self, hit: CacheHit, correct: bool) -> None:
        """Report whether a served hit was right.

        correct=False: the entry never again serves a query as far from it as this one or farther (its own
        threshold is raised just above this similarity); a wrong exact hit deletes the entry.
        correct=True: counted, and recorded on the entry for later calibration.
        """
        if not isinstance(hit, CacheHit):
            raise InvalidInputError(f"feedback takes the CacheHit that lookup() returned, got {type(hit).__name__}")
        if not isinstance(correct, bool):
            raise InvalidInputError(f"feedback's correct must be True or False, got {shown(correct)}")
        self.stats.count("feedback_correct" if correct else "feedback_wrong")
        with self._budget():
            entry = self._readable(hit.key, await self._guarded(self.backend.get(hit.key), "backend", default=None))
            if entry is None:
                return
            if not correct and hit.kind == "exact":
                await self._guarded(self.backend.delete(hit.key), "backend", default=False)
                return
            if self.error_budget is not None and hit.kind == "semantic":  # the same evidence as a comparison
                self.stats.count("budget_feedback")
                self._announce(self.error_budget.record(entry.partition_id, hit.similarity, correct,
                                                        self.config.threshold))  # fmt: skip
                entry.evidence = with_outcome(entry.evidence, hit.similarity, correct)
            feedback = _feedback_record(entry.metadata.get("feedback"))
            if correct:
                feedback["correct"] += 1
                feedback["lowest_correct_similarity"] = min(feedback["lowest_correct_similarity"], hit.similarity)
            else:
                feedback["wrong"] += 1
                entry.min_similarity = max(entry.min_similarity, math.nextafter(min(hit.similarity, 1.0), 2.0))
            entry.metadata = {**entry.metadata, "feedback": feedback}
            if self._cipher is not None:
                entry = self._cipher.seal(hit.key, entry)
            await self._guarded(self.backend.set(hit.key, entry), "backend", default=None)

    async def delete(self, prompt: str, scope: Scope | None = None) -> bool:
        """Delete the exact entry for `prompt` in its partition; True if there was one."""
        prepared = await self._prepare(prompt, scope, count=False)
        if prepared is None:
            return False
        with self._budget():
            return bool(await self._guarded(self.backend.delete(prepared.key), "backend", default=False))

    async def delete_key(self, key: str, namespace: str | None = None) -> bool:
        """Delete the entry with this key (the `key` every hit and `Resolution` carries); True if there was one.

        With `namespace`, only an entry of that namespace is deleted (a service deleting on a tenant's behalf
        passes the tenant, so one tenant's key cannot delete another's entry).
        """
        if not isinstance(key, str) or not key:
            raise InvalidInputError(f"key must be a non-empty string (a hit's key), got {shown(key)}")
        check_text(key, "key")
        if namespace is not None:
            if not isinstance(namespace, str) or not namespace:
                raise InvalidInputError(f"namespace must be a non-empty string or None, got {shown(namespace)}")
            check_text(namespace, "namespace")
        with self._budget():
            if namespace is not None:
                entry = await self._guarded(self.backend.get(key), "backend", default=None)
                if entry is None or entry.namespace != namespace:
                    return False
            return bool(await self._guarded(self.backend.delete(key), "backend", default=False))

    def delete_key_sync(self, key: str, namespace: str | None = None) -> bool:
        """`delete_key` for sync code (through the shared background loop)."""
        return run_sync(self.delete_key(key, namespace))

    async def clear(self, namespace: str | None = None) -> None:
        """Delete every entry of the backend, or only those of `namespace`."""
        if namespace is not None and (not isinstance(namespace, str) or not namespace):
            raise InvalidInputError(f"namespace must be a non-empty string or None, got {shown(namespace)}")
        if namespace is not None:
            check_text(namespace, "namespace")
        with self._budget():
            await self._guarded(self.backend.clear(namespace), "backend", default=None)

    async def get_stats(self) -> dict[str, Any]:
        """The engine's counters, the state of its circuit breakers and the backend's statistics."""
        with self._budget():
            backend_stats = await self._guarded(self.backend.get_stats(), "backend", default={})
        circuits = self.circuit_states()
        stats = {**self.stats.snapshot(), "threshold": self.config.threshold, "embedder": self.embedder.name,
                 "circuits": circuits, "backend": backend_stats}  # fmt: skip
        if self.error_budget is not None:
            for name in _BUDGET_COUNTERS:
                stats.setdefault(name, 0)
            stats.update(self.error_budget.report())
            with self._comparisons_lock:
                stats["error_budget"]["pending_comparisons"] = len(self._comparisons)
        return stats

    def circuit_states(self) -> dict[str, str]:
        """Each component's circuit breaker state ("closed", "open", "half-open"): thread-safe, no I/O."""
        return {name: breaker.state for name, breaker in self._breakers.items()}

    async def warmup(self) -> None:
        """Load the embedding model now (it otherwise loads on first use), without the call timeout."""
        await self.embedder.embed(["warm up"])

    async def close(self) -> None:
        """Close the backend (after the error budget's pending comparisons, given `timeout` seconds to finish;
        the rest are cancelled). The embedder is left running (it may be shared)."""
        if self._comparisons:
            try:
                await asyncio.wait_for(self.wait_for_comparisons(), self.config.timeout)
            except (TimeoutError, asyncio.TimeoutError):
                with self._comparisons_lock:
                    pending = list(self._comparisons)
                for comparison in pending:
                    comparison.cancel()
        await self.backend.close()

    async def wait_for_comparisons(self) -> None:
        """Wait until every comparison of the error budget started so far has been recorded (they run after
        the caller has its answer; tests, benchmarks and shutdown wait for them here)."""
        loop = asyncio.get_running_loop()
        while True:
            with self._comparisons_lock:
                pending = list(self._comparisons)
            if not pending:
                return
            waits: list[Any] = []
            for comparison in pending:
                if isinstance(comparison, Future):
                    waits.append(asyncio.wrap_future(comparison))
                elif comparison.get_loop() is loop:
                    waits.append(comparison)
            if waits:
                await asyncio.gather(*waits, return_exceptions=True)
            else:  # running on another loop: look again shortly
                await asyncio.sleep(0.005)

    # -- error budget -----------------------------------------------------------------------------------

    def _new_check(self) -> _Check | None:
        return _Check(computes=True) if self.error_budget is not None else None

    @staticmethod
    async def _checked(check: _Check | None, call: Awaitable[T]) -> T:
        """Await a lookup with this call's error-budget record visible to it (on whichever loop it runs)."""
        token = _CHECK.set(check)
        try:
            return await call
        finally:
            _CHECK.reset(token)

    def _remember_declined(self, key: str, declined: _Declined) -> None:
        """A candidate lookup() declined: if the model's answer is then stored for this prompt (store_computed,
        as LangChain's cache does after a miss), the two are compared."""
        with self._comparisons_lock:
            self._declined_by_key[key] = (time.monotonic(), declined)
            self._declined_by_key.move_to_end(key)
            while len(self._declined_by_key) > _REMEMBERED_DECLINED:
                self._declined_by_key.popitem(last=False)

    def _recall_declined(self, key: str) -> _Declined | None:
        with self._comparisons_lock:
            remembered = self._declined_by_key.pop(key, None)
        if remembered is None or time.monotonic() - remembered[0] > _REMEMBER_SECONDS:
            return None
        return remembered[1]

    def _compare_later(self, check: _Check | None, query: str, fresh: Any) -> None:
        """Compare the computed answer with the candidate this call's lookup declined, after the caller has its
        answer: on this loop, or from sync code on the shared background loop; bounded by `max_pending`."""
        budget = self.error_budget
        declined = None if check is None else check.declined
        if budget is None or check is None or declined is None:
            return
        check.declined = None
        with self._comparisons_lock:
            if len(self._comparisons) >= budget.max_pending:
                self.stats.count("budget_comparisons_dropped")
                return
        self.stats.count("budget_explorations" if declined.explored else "budget_checks")
        coroutine = self._compare(declined, query, fresh)
        try:
            comparison: Any = asyncio.get_running_loop().create_task(coroutine)
        except RuntimeError:  # sync code: no loop in this thread
            comparison = submit(coroutine)
        with self._comparisons_lock:
            self._comparisons.add(comparison)
        comparison.add_done_callback(self._comparison_done)

    def _comparison_done(self, comparison: Any) -> None:
        with self._comparisons_lock:
            self._comparisons.discard(comparison)

    async def _compare(self, declined: _Declined, query: str, fresh: Any) -> None:
        """Judge one declined candidate against the fresh answer; record the outcome in the partition's pool and
        on the entry. Failures are counted and logged, never raised (nobody waits for this)."""
        budget = self.error_budget
        assert budget is not None
        try:
            agreed = await budget.judge(query, declined.response, fresh)
        except (TimeoutError, asyncio.TimeoutError):
            self.stats.count("budget_comparator_timeouts")
            self._failures.warning("answers_match_timeout", "semantic cache: answers_match took more than %ss; "
                                   "that comparison is no evidence", budget.comparator_timeout)  # fmt: skip
            return
        except Exception as exc:
            self.stats.count("budget_comparator_errors")
            self._failures.warning("answers_match", "semantic cache: answers_match failed (%s: %s); that comparison "
                                   "is no evidence", type(exc).__name__, exc)  # fmt: skip
            return
        self.stats.count("budget_undecided" if agreed is None else "budget_agreed" if agreed else "budget_disagreed")
        drawn = declined.drawn if declined.explored else None
        self._announce(budget.record(declined.partition, declined.similarity, agreed, self.config.threshold, drawn))
        if agreed is None:
            return

        def change(entry: CacheEntry) -> CacheEntry | None:
            if entry.response != declined.response:  # replaced meanwhile: the outcome is about another answer
                return None
            entry.evidence = with_outcome(entry.evidence, declined.similarity, agreed)
            if not agreed:
                entry.min_similarity = max(entry.min_similarity, math.nextafter(min(declined.similarity, 1.0), 2.0))
            return entry

        try:
            await self._within(_Budget(self.config.timeout), self._update_entry(declined.key, change))
        except Exception as exc:  # on_error="raise" raises in a call; here nobody would see it
            self._failures.warning("evidence_write", "semantic cache: recording a comparison on its entry failed "
                                   "(%s: %s)", type(exc).__name__, exc)  # fmt: skip

    async def _update_entry(self, key: str, change: Callable[[CacheEntry], CacheEntry | None]) -> None:
        """Read the entry under `key`, change it (None: leave it) and write it back, sealed again if encrypting."""
        entry = self._readable(key, await self._guarded(self.backend.get(key), "backend", default=None))
        if entry is None:
            return
        changed = change(entry)
        if changed is None:
            return
        if self._cipher is not None:
            changed = self._cipher.seal(key, changed)
        await self._guarded(self.backend.set(key, changed), "backend", default=None)

    def _announce(self, pool: PoolEvidence) -> None:
        """One warning per partition when its evidence shows the budget cannot be kept at any threshold."""
        budget = self.error_budget
        if budget is None or pool.met is not False or pool.warned or pool.floor is None:
            return
        pool.warned = True
        error, threshold = pool.floor
        logger.warning(
            "semantic cache: the error budget max_error_rate=%.3g cannot be kept on this traffic: the lowest error "
            "measured at any threshold with enough evidence is %.3g (similarity >= %.2f); semantic hits are served "
            "only where the %.0f%% bound is within the budget, none for now",
            budget.max_error_rate,
            error,
            threshold,
            budget.confidence * 100,
        )

    async def __aenter__(self) -> SemanticCache:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    def partition_for(self, scope: Scope | None) -> str:
        """The partition id of `scope` under this cache's namespace and embedder."""
        if scope is None:
            if self._partition_of_default_scope is None:
                self._partition_of_default_scope = partition_id(Scope(), self.config.namespace, self.embedder.name)
            return self._partition_of_default_scope
        return partition_id(scope, self.config.namespace, self.embedder.name)

    # -- internals --------------------------------------------------------------------------------------

    def _namespace(self, scope: Scope | None) -> str:
        return scope.namespace if scope is not None and scope.namespace is not None else self.config.namespace

    @staticmethod
    def _check_payload(
        response: Any,
        metadata: dict[str, Any] | None,
        ttl: float | None,
        compute_seconds: float | None,
        tokens: int | None,
    ) -> None:
        check_json_value(response)
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise InvalidInputError(f"metadata must be a dict, got {type(metadata).__name__}")
            check_json_value(metadata, "metadata")
        try:
            validate_ttl(ttl)
        except SemanticCacheError as exc:
            raise InvalidInputError(str(exc)) from exc
        if compute_seconds is not None and (not isinstance(compute_seconds, (int, float)) or compute_seconds < 0):
            raise InvalidInputError(f"compute_seconds must be a non-negative number, got {shown(compute_seconds)}")
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0):
            raise InvalidInputError(f"tokens must be a non-negative integer, got {shown(tokens)}")

    @contextmanager
    def _budget(self) -> Iterator[None]:
        """Give the public call in progress `timeout` seconds in all for the backend and the embedder (a call
        already inside one, e.g. resolve's lookup then store, keeps the budget it has)."""
        if _BUDGET.get() is not None:
            yield
            return
        token = _BUDGET.set(_Budget(self.config.timeout))
        try:
            yield
        finally:
            _BUDGET.reset(token)

    @staticmethod
    async def _within(budget: _Budget, call: Coroutine[Any, Any, T]) -> T:
        """Run `call` (on another loop, e.g. run_sync's) charging its waits to `budget`."""
        token = _BUDGET.set(budget)
        try:
            return await call
        finally:
            _BUDGET.reset(token)

    def _prepare_now(self, prompt: str, scope: Scope | None, options: CallOptions = NO_OPTIONS) -> _Prepared | None:
        """Normalise, partition and key a call (None for a prompt over max_prompt_chars)."""
        if not isinstance(prompt, str):
            raise InvalidInputError(f"prompt must be a string, got {type(prompt).__name__}")
        partition = self.partition_for(scope)
        text = normalize_prompt(prompt)
        if len(text) > self.config.max_prompt_chars:
            return None
        threshold = self.config.threshold if options.threshold is None else options.threshold
        return _Prepared(text, partition, exact_key(partition, text), threshold, options)

    async def _prepare(
        self, prompt: str, scope: Scope | None, *, count: bool = True, options: CallOptions = NO_OPTIONS
    ) -> _Prepared | None:
        """`_prepare_now`, in a worker thread for a long prompt (its cost grows with its length); counts a
        prompt over max_prompt_chars."""
        if isinstance(prompt, str) and len(prompt) > _OFF_LOOP_CHARS:
            prepared = await asyncio.to_thread(self._prepare_now, prompt, scope, options)
        else:
            prepared = self._prepare_now(prompt, scope, options)
        if prepared is None and count:
            self._count_too_long()
        return prepared

    async def _guarded(self, call: Awaitable[T], component: Literal["backend", "embedder"], default: T) -> T:
        """Await `call` within the time left to the public call; on failure log, count and return `default`
        (or raise, if asked to). A component that failed `failures` times in a row is not called at all for a
        while (its circuit breaker is open): the call fails at once.

        An embedder that is still loading its model (`loaded` False) gets MODEL_LOAD_TIMEOUT instead: a cold
        start must not be mistaken for a failure.
        """
        budget = _BUDGET.get()
        seconds = self.config.timeout if budget is None else min(self.config.timeout, budget.remaining)
        if component == "embedder" and not getattr(self.embedder, "loaded", True):
            seconds = max(self.config.timeout, MODEL_LOAD_TIMEOUT)
        breaker = self._breakers[component]
        try:
            if seconds <= 0:
                raise CircuitOpen(f"{component} not called: this call already spent its {self.config.timeout}s timeout")
            probe = breaker.before_call()
        except CircuitOpen as exc:
            if inspect.iscoroutine(call):
                call.close()  # never awaited, and it must not warn about that
            self.stats.count("short_circuits")
            return self._failed(exc, component, default, log=False)
        started = time.monotonic()
        try:
            result = await _within(call, seconds)
        except InvalidInputError as exc:  # the component answered: it is up, the entry or vector was refused
            breaker.success()
            if self.config.on_error == "raise":
                raise
            return self._failed(exc, component, default)
        except asyncio.CancelledError:
            breaker.abandon(probe)
            raise
        except (TimeoutError, asyncio.TimeoutError):
            self.stats.count("timeouts")
            timed_out = TimeoutError(f"no answer within {seconds:.3g}s")
            breaker.failure(timed_out)
            return self._failed(timed_out, component, default)
        except Exception as exc:
            breaker.failure(exc)
            return self._failed(exc, component, default)
        finally:
            if budget is not None:
                budget.remaining -= time.monotonic() - started
        breaker.success()
        return result

    def _failed(self, error: Exception, component: Literal["backend", "embedder"], default: T, log: bool = True) -> T:
        """Count a failed component call; raise it (on_error="raise") or log it, rate-limited, and return default."""
        self.stats.count("errors")
        self.stats.count(f"{component}_errors")
        if self.config.on_error == "raise":
            if isinstance(error, SemanticCacheError):
                raise error
            wrapper = CacheBackendError if component == "backend" else EmbeddingError
            raise wrapper(f"{component} failed: {type(error).__name__}: {error}") from error
        if log:
            self._failures.warning(f"{component}:{type(error).__name__}",
                                   "semantic cache %s failed, treating it as a miss: %s: %s", component,
                                   type(error).__name__, error)  # fmt: skip
        return default

    async def _embed(self, text: str, *, report: bool = True) -> Vector | None:
        """The vector of `text`: from the small recent-vectors memory (a miss's lookup then store embed the
        same text once; keyed by a digest, so its size does not grow with prompt length), else from the
        embedder. A text found over the embedder's window is counted and logged, or with `report` False
        returned as `_TOO_LONG` for the caller to report (`_too_long`) if it goes on."""
        digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
        with self._recent_vectors_lock:  # the cache may be used from several loops and threads at once
            recent = self._recent_vectors.get(digest)
            if recent is not None:
                self._recent_vectors.move_to_end(digest)
                return None if recent is _TOO_LONG else recent
        if not await self._fits_window(text):
            if not report:
                return cast(Vector, _TOO_LONG)
            self._too_long()
            vector: Any = _TOO_LONG
        else:
            matrix = await self._guarded(self._embed_checked(text), "embedder", default=None)
            if matrix is None:
                return None
            vector = matrix[0]
        with self._recent_vectors_lock:
            self._recent_vectors[digest] = vector
            if len(self._recent_vectors) > _RECENT_VECTORS:
                self._recent_vectors.popitem(last=False)
        return None if vector is _TOO_LONG else vector

    def _too_long(self) -> None:
        """Count and log a prompt over the embedder's window."""
        self.stats.count("too_long_for_semantic")
        self._failures.warning(
            "too_long_for_semantic",
            "semantic cache: a prompt is longer than the embedder's window (%s tokens), so it is cached and "
            "served by exact match only. Put only the question in the prompt you cache (the rest in the Scope's "
            "context, or use the integrations' question_key), or use an embedder with a longer window",
            getattr(self.embedder, "max_tokens", None),
        )

    async def _fits_window(self, text: str) -> bool:
        """False when the embedder states a window and `text` has more of its tokens than that (counted in a
        worker thread for a long text, or while the embedder still has to load its tokenizer)."""
        if getattr(self.embedder, "count_tokens", None) is None:
            return True
        if len(text) > _GUARD_OFF_LOOP_CHARS or not getattr(self.embedder, "tokenizer_loaded", True):
            return await asyncio.to_thread(self._fits_window_now, text)
        return self._fits_window_now(text)

    def _fits_window_now(self, text: str) -> bool:
        try:
            limit = getattr(self.embedder, "max_tokens", None)
            return limit is None or int(self.embedder.count_tokens(text)) <= int(limit)  # type: ignore[attr-defined]
        except Exception as exc:  # a user's counter that fails: the window is unknown, as without one
            self._failures.warning("count_tokens", "semantic cache: counting tokens failed (%s); not checked", exc)
            return True

    async def _embed_checked(self, text: str) -> Vector:
        """One embedding, checked (one finite, non-zero row of the embedder's dimension) and normalised: a
        user-supplied Embedder's bad output is an EmbeddingError, never a stored vector."""
        return normalized_matrix(await self.embedder.embed([text]), 1, self.embedder.dimension)

    async def _lookup(self, prepared: _Prepared) -> tuple[CacheHit | None, Vector | None]:
        started = time.perf_counter()
        try:
            return await self._search(prepared)
        finally:
            self.stats.observe_lookup(time.perf_counter() - started)

    async def _search(self, prepared: _Prepared) -> tuple[CacheHit | None, Vector | None]:
        text, partition, key, threshold = prepared.text, prepared.partition, prepared.key, prepared.threshold
        options = prepared.options
        check = _CHECK.get()
        if check is not None:
            check.declined = None
        if self._overlaps_reads():
            entry, (vector, matches) = await self._overlapped(prepared)
            if entry is not None:
                return await self._served(key, entry, 1.0, "exact"), None
            if vector is _TOO_LONG:  # known only now that the exact read missed
                self._too_long()
                vector = None
            if vector is None:
                return None, None
        else:
            entry = await self._exact(prepared)
            if entry is not None:
                return await self._served(key, entry, 1.0, "exact"), None
            vector = await self._embed(text)
            if vector is None:
                return None, None
            matches = await self._guarded(self._nearest(prepared, vector), "backend", default=[])
        survivors: list[tuple[str, CacheEntry, float]] = []
        for match_key, sealed_match, raw_similarity in matches:
            match = self._readable(match_key, sealed_match)
            if match is None:
                continue
            similarity = min(raw_similarity, 1.0)  # float32 dot products of unit vectors can overshoot 1
            if match.partition_id != partition:  # a backend that broke the wall must not leak across it
                self.stats.count("partition_violations")
                continue
            if similarity < threshold:  # a backend comparing in float32 may round up to it
                continue
            if not options.matches(match.metadata):
                continue
            if similarity < match.min_similarity:
                self.stats.count("feedback_refusals")
                continue
            refusal = await self._refusal(text, match.prompt, threshold)
            if refusal is not None:
                self.stats.count(refusal)
                continue
            if not self.verifiers:
                return await self._semantic(prepared, match_key, match, similarity), vector
            survivors.append((match_key, match, similarity))
        chosen = await self._verified(text, survivors)
        if chosen is None:
            return None, vector
        return await self._semantic(prepared, *chosen), vector

    async def _exact(self, prepared: _Prepared) -> CacheEntry | None:
        """The entry stored under the call's exact key, if it is this prompt's and matches the call's `where`."""
        return self._exact_of(prepared, await self._guarded(self.backend.get(prepared.key), "backend", None))

    def _exact_of(self, prepared: _Prepared, entry: CacheEntry | None) -> CacheEntry | None:
        entry = self._readable(prepared.key, entry)
        if entry is not None and entry.prompt == prepared.text and prepared.options.matches(entry.metadata):
            return entry
        return None

    def _search_for(self, prepared: _Prepared) -> tuple[int, Mapping[str, Any] | None]:
        """How many candidates the backend is asked for, and the `where` it filters on itself."""
        candidates, where = self.config.candidates, prepared.options.where
        if where and self._cipher is None:  # the backend filters (in its index where it can)
            return candidates, where
        # sealed metadata: only this cache can read it, so it looks at more candidates and filters itself
        return candidates * (WHERE_CANDIDATE_FACTOR if where else 1), None

    def _nearest(self, prepared: _Prepared, vector: Vector) -> Coroutine[Any, Any, list[Match]]:
        """The backend's search for the call's candidates (unawaited)."""
        candidates, where = self._search_for(prepared)
        return self.backend.find_nearest(vector, prepared.threshold, candidates, partition=prepared.partition,
                                         where=where)  # fmt: skip

    async def _read_and_find(self, prepared: _Prepared, vector: Vector) -> tuple[CacheEntry | None, list[Match]]:
        candidates, where = self._search_for(prepared)
        return await self.backend.get_and_find_nearest(
            prepared.key, vector, prepared.threshold, candidates, partition=prepared.partition, where=where
        )

    def _overlaps_reads(self) -> bool:
        overlap = self.config.overlap_reads
        return bool(getattr(self.backend, "remote_reads", False)) if overlap is None else overlap

    async def _overlapped(self, prepared: _Prepared) -> tuple[CacheEntry | None, tuple[Vector | None, list[Match]]]:
        """The exact read and the semantic search of a store whose reads are round trips, overlapped.

        The embedding starts first (a task). A vector ready at once (an embedder that answers without waiting,
        or the recent-vectors memory) goes with the exact read in one backend call, one round trip. Otherwise
        the exact read is sent while the embedding runs, and the search once it is done: an exact hit is served
        at once (a search not yet sent is cancelled with its embedding, one already sent is awaited: cancelling
        it would cost its connection), a miss waits for one round trip less.

        Returns (the exact entry, (None, [])) on an exact hit, else (None, (vector or None or _TOO_LONG,
        matches)). Overlapped waits are charged to the call's time budget once, by the time they took together."""
        budget = _BUDGET.get()
        before = None if budget is None else budget.remaining
        started = time.monotonic()
        embedding = asyncio.ensure_future(_on_own_budget(before, self._embed(prepared.text, report=False)))
        search: asyncio.Future[tuple[Vector | None, list[Match]]] | None = None
        try:
            await asyncio.sleep(0)  # the embedding runs up to its first wait (an instant one: to its end)
            if embedding.done():
                if embedding.exception() is not None:  # on_error="raise": raised if the exact read misses
                    entry = await self._exact(prepared)
                    return (entry, (None, [])) if entry is not None else (None, (embedding.result(), []))
                vector = embedding.result()
                if vector is None or vector is _TOO_LONG:
                    entry = await self._exact(prepared)
                    return (entry, (None, [])) if entry is not None else (None, (vector, []))
                found = await self._guarded(self._read_and_find(prepared, vector), "backend", default=(None, []))
                entry = self._exact_of(prepared, found[0])
                return (entry, (None, [])) if entry is not None else (None, (vector, found[1]))
            searching: list[bool] = []
            search = asyncio.ensure_future(_on_own_budget(before, self._find_after(embedding, prepared, searching)))
            entry = await self._exact(prepared)
            if entry is None:
                return None, await search
            if searching:
                await asyncio.gather(search, return_exceptions=True)
            return entry, (None, [])
        finally:
            for task in (search, embedding):  # not done: an exact hit, or this call was cancelled or failed
                if task is not None:
                    task.cancel()  # (no-op when done)
                    task.add_done_callback(_retrieved)
            if budget is not None and before is not None:
                budget.remaining = min(budget.remaining, before - (time.monotonic() - started))

    async def _find_after(
        self, embedding: Awaitable[Vector | None], prepared: _Prepared, searching: list[bool]
    ) -> tuple[Vector | None, list[Match]]:
        """The call's vector (None, or _TOO_LONG unreported) and its semantic candidates, searched for once the
        embedding is done; `searching` is appended to when the search is sent."""
        vector = await embedding
        if vector is None or vector is _TOO_LONG:
            return vector, []
        searching.append(True)
        return vector, await self._guarded(self._nearest(prepared, vector), "backend", default=[])

    async def _semantic(self, prepared: _Prepared, key: str, entry: CacheEntry, similarity: float) -> CacheHit | None:
        """Serve a semantic candidate that passed every check, unless the error budget declines it (not yet known
        to be safe at this similarity, or drawn for exploration): then the call's compute answers, and the two
        answers are compared once it has (`_compare_later`)."""
        if self.error_budget is not None:
            check = _CHECK.get()
            computes = check is not None and check.computes
            verified = verified_at(entry.evidence) <= similarity
            decision, drawn = self.error_budget.decide(
                prepared.partition, similarity, self.config.threshold, computes, verified
            )
            if decision != "serve":
                if decision == "unsafe":
                    self.stats.count("budget_unsafe_refusals")
                if check is not None:
                    explored = decision == "explore"
                    check.declined = _Declined(key, prepared.partition, similarity, entry.response, explored, drawn)
                return None
        return await self._served(key, entry, similarity, "semantic")

    async def _verified(
        self, query: str, survivors: list[tuple[str, CacheEntry, float]]
    ) -> tuple[str, CacheEntry, float] | None:
        """The most similar candidate every verifier accepts (each sees the batch the ones before it left)."""
        for verifier in self.verifiers:
            if not survivors:
                return None
            batch = [Candidate(query, entry.prompt, similarity, entry.response, entry.metadata)
                     for _, entry, similarity in survivors]  # fmt: skip
            try:
                verdicts = await run_verifier(verifier, batch)
            except Exception as exc:
                self.stats.count("verifier_errors")
                if self.config.on_error == "raise":
                    raise VerifierError(f"verifier {verifier.name} failed: {type(exc).__name__}: {exc}") from exc
                self._failures.warning(
                    f"verifier:{verifier.name}",
                    "semantic cache: verifier %s failed (%s: %s); its candidates are not served",
                    verifier.name,
                    type(exc).__name__,
                    exc,
                )
                return None
            refused = sum(not verdict.accept for verdict in verdicts)
            if refused:
                self.stats.count("verifier_refusals", refused)
            survivors = [survivor for survivor, verdict in zip(survivors, verdicts, strict=True) if verdict.accept]
        return survivors[0] if survivors else None

    async def _refusal(self, query: str, candidate: str, threshold: float) -> str | None:
        """Why a candidate above the threshold must not be served (the counter to add), or None to serve it.

        The answer guard (numbers, negation, names, opposites), then the shared-text check: when the prompts
        share most of their text (a template, a context), the sentences that differ must be as similar as the
        threshold asks on their own. Text-heavy work runs in a worker thread when the prompts are long.
        """
        if len(query) + len(candidate) > _GUARD_OFF_LOOP_CHARS:
            guarded, difference = await asyncio.to_thread(self._read_pair, query, candidate)
        else:
            guarded, difference = self._read_pair(query, candidate)
        if guarded:
            return "guard_refusals"
        if difference is None:
            return None
        if not difference.query_part or not difference.candidate_part:
            return "shared_text_refusals"  # one adds or drops a sentence the other lacks: not the same request
        parts = await self._guarded(
            self._embed_parts([difference.query_part, difference.candidate_part]), "embedder", default=None
        )
        if parts is None or float(parts[0] @ parts[1]) < threshold:
            return "shared_text_refusals"
        return None

    def _read_pair(self, query: str, candidate: str) -> tuple[bool, Difference | None]:
        guarded = self.config.answer_guard and guard_refusal(query, candidate) is not None
        return guarded, None if guarded else differing_parts(query, candidate)

    async def _embed_parts(self, texts: list[str]) -> Vector:
        return normalized_matrix(await self.embedder.embed(texts), len(texts), self.embedder.dimension)

    async def _served(
        self, key: str, entry: CacheEntry, similarity: float, kind: Literal["exact", "semantic"]
    ) -> CacheHit:
        await self._guarded(self.backend.record_hit(key), "backend", default=None)
        return CacheHit(
            response=entry.response,
            similarity=similarity,
            kind=kind,
            prompt=entry.prompt,
            age=max(0.0, time.time() - entry.created_at),
            key=key,
            metadata=entry.metadata,
            compute_seconds=entry.compute_seconds,
            tokens=entry.tokens,
        )

    async def _kept_out(self, prompt: str, response: Any) -> bool:
        """True when `never_cache` keeps this answer out of the cache (counted by reason; the caller still gets
        it). A check that fails keeps the answer out too: what cannot be checked is not shared."""
        if self._never_cache is None:
            return False
        try:
            small = not _text_exceeds([prompt, response], _OFF_LOOP_CHARS)
            reason = self._never_cache(prompt, response) if small else await asyncio.to_thread(
                self._never_cache, prompt, response)  # fmt: skip
            if inspect.isawaitable(reason):
                reason = await reason
        except Exception as exc:
            self.stats.count("never_cache_errors")
            self._failures.warning("never_cache", "semantic cache: never_cache failed (%s); answer not stored", exc)
            return True
        if not reason:
            return False
        self.stats.count("never_cache_refusals")
        self.stats.count(f"never_cache_{reason if isinstance(reason, str) else 'refused'}")
        return True

    def _readable(self, key: str, entry: CacheEntry | None) -> CacheEntry | None:
        """The entry as this cache may serve it: decrypted when the cache encrypts; None (a miss, counted) for
        an entry no key of this cache opens, or a plaintext entry in a cache that encrypts."""
        if entry is None:
            return None
        if self._cipher is None:
            if not is_sealed(entry):
                return entry
            reason = "it is encrypted and this cache has no encryption_key"
        elif not is_sealed(entry):
            reason = "it is not encrypted and this cache encrypts"
        else:
            try:
                return self._cipher.open(key, entry)
            except DecryptionError as exc:
                reason = str(exc)
        self.stats.count("unreadable_entries")
        self._failures.warning("unreadable_entry", "semantic cache: an entry was skipped as a miss: %s", reason)
        return None

    def _credit(self, hit: CacheHit) -> None:
        """Count a hit that was served, and what it saved."""
        self.stats.count("exact_hits" if hit.kind == "exact" else "semantic_hits")
        self.stats.add_savings(hit.compute_seconds, hit.tokens)

    async def _write(
        self,
        prepared: _Prepared,
        response: Any,
        namespace: str,
        vector: Vector | None,
        ttl: float | None,
        metadata: dict[str, Any] | None,
        compute_seconds: float | None,
        tokens: int | None,
    ) -> str | None:
        lifetime = ttl if ttl is not None else self.config.ttl
        now = time.time()
        entry = CacheEntry(
            prompt=prepared.text,
            response=response,
            partition_id=prepared.partition,
            namespace=namespace,
            embedding=vector,
            embedder=self.embedder.name,
            created_at=now,
            expires_at=None if lifetime is None else now + lifetime,
            metadata=dict(metadata or {}),
            compute_seconds=compute_seconds,
            tokens=tokens,
        )
        if self._cipher is not None:
            entry = self._cipher.seal(prepared.key, entry)
        done = await self._guarded(self.backend.set(prepared.key, entry), "backend", default=_FAILED)
        if done is _FAILED:
            return None
        self.stats.count("stores")
        return prepared.key


__all__ = [
    "CacheHit",
    "Computed",
    "Resolution",
    "ResolvedStream",
    "ResolvedSyncStream",
    "SemanticCache",
    "default_embedder",
]
