"""Fuzzing the public API (#10): whatever a caller passes, only the package's documented errors come out, and
every backend behaves the same for the same input (the same result, or the same error)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from semantic_llm_cache import CacheConfig, Scope, SemanticCache
from semantic_llm_cache.backends.memory import MemoryBackend
from semantic_llm_cache.backends.sqlite import SQLiteBackend
from semantic_llm_cache.errors import ConfigurationError, InvalidInputError, SemanticCacheError
from semantic_llm_cache.storage import StorageBackend
from tests.fakes import BagOfWordsEmbedder

DOCUMENTED = (InvalidInputError, ConfigurationError)
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40)  # lone surrogates too
junk = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([10**5000, -(10**4500)]),  # drawn by index: hypothesis cannot print such ints
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=8),
    st.tuples(st.integers()),
    st.frozensets(st.integers(), max_size=2),
    st.just(object()),
    st.just([[[[[[[[[[[]]]]]]]]]]] * 2),
)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": [value]}
    return value


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | any_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3),
    max_leaves=8,
)


def mostly(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Three draws in four valid, so that many examples get past validation to the backends."""
    return st.integers(0, 3).flatmap(lambda draw: invalid if draw == 0 else valid)


values = mostly(json_values, junk | st.sampled_from([nested(60), nested(5000)]))
prompts = mostly(
    any_text | st.sampled_from(["What is the refund policy?", "x" * 3000]), junk | st.sampled_from(["  ", ""])
)
scopes = st.one_of(
    st.none(),
    st.none(),
    st.builds(
        lambda namespace, model, params, context: (namespace, model, params, context),
        mostly(st.none() | any_text.filter(bool), junk | st.just("")),
        mostly(st.none() | any_text, junk),
        mostly(st.dictionaries(any_text, json_values, max_size=2), st.none() | junk),
        values,
    ),
    st.dictionaries(any_text, any_text, max_size=2),  # a plain dict where a Scope belongs
)
ttls = mostly(  # no valid TTL short enough to expire between a store and the lookup after it
    st.none() | st.floats(min_value=60, max_value=1e9),
    (st.floats(allow_nan=True, allow_infinity=True) | st.integers()).filter(lambda ttl: not 0 < ttl < 60)
    | any_text
    | st.booleans(),
)
metadatas = mostly(st.none() | st.dictionaries(any_text, json_values, max_size=2), junk | st.just({"m": nested(5000)}))


def make_scope(raw: Any) -> Any:
    """A Scope built from generated parts (its own validation may refuse them), or the raw value itself."""
    if isinstance(raw, tuple):
        namespace, model, params, context = raw
        return Scope(namespace=namespace, model=model, params=params, context=context)
    return raw


def outcome_of(result: Any) -> Any:
    """What a call returned, in a form two backends must agree on."""
    if hasattr(result, "response"):
        return ("hit", result.kind, result.key, repr(result.response))
    return ("value", repr(result))


@pytest.fixture
def event_loop_for_fuzz() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def backends(
    tmp_path: Path, event_loop_for_fuzz: asyncio.AbstractEventLoop, request: pytest.FixtureRequest
) -> Iterator[dict[str, StorageBackend]]:
    """One backend of each kind: memory, SQLite, and real Redis servers in both index modes."""
    from semantic_llm_cache.backends.redis import RedisBackend
    from tests.plugins.redis_servers import unique_prefix

    plain, search = request.getfixturevalue("redis_plain_server"), request.getfixturevalue("redis_search_server")
    made: dict[str, StorageBackend] = {
        "memory": MemoryBackend(),
        "sqlite": SQLiteBackend(tmp_path / "fuzz.db"),
        "redis-client": RedisBackend(plain.url, prefix=unique_prefix(), index="client"),
        "redis-search": RedisBackend(search.url, prefix=unique_prefix(), index="search"),
    }
    yield made
    for backend in made.values():
        if isinstance(backend, RedisBackend):
            event_loop_for_fuzz.run_until_complete(backend.destroy())
        event_loop_for_fuzz.run_until_complete(backend.close())


async def run_everywhere(backends: dict[str, StorageBackend], call: Any) -> dict[str, Any]:
    """Run `call(cache)` on a cache over each backend (each cleared first); each outcome, or the error type."""
    outcomes: dict[str, Any] = {}
    for name, backend in backends.items():
        await backend.clear()
        cache = SemanticCache(backend=backend, embedder=BagOfWordsEmbedder(), threshold=0.8, on_error="raise")
        try:
            outcomes[name] = outcome_of(await call(cache))
        except SemanticCacheError as exc:
            assert isinstance(exc, DOCUMENTED), f"{name}: {type(exc).__name__}: {exc}"
            outcomes[name] = ("error", type(exc).__name__)
        except Exception as exc:  # anything else is an undocumented error: the test fails with it
            raise AssertionError(f"{name} raised {type(exc).__name__}: {exc}") from exc
        stored = sorted(key for key, _ in await backend.iterate())
        outcomes[name] = (outcomes[name], stored)
    event(f"outcome: {next(iter(outcomes.values()))[0][0]}")  # --hypothesis-show-statistics: how many got through
    return outcomes


def assert_same_everywhere(outcomes: dict[str, Any]) -> None:
    first = next(iter(outcomes.values()))
    assert all(outcome == first for outcome in outcomes.values()), outcomes


@FUZZ
@given(prompt=prompts, response=values, scope=scopes, ttl=ttls, metadata=metadatas)
def test_store_then_lookup_behaves_alike_on_every_backend(
    event_loop_for_fuzz: asyncio.AbstractEventLoop,
    backends: dict[str, StorageBackend],
    prompt: Any,
    response: Any,
    scope: Any,
    ttl: Any,
    metadata: Any,
) -> None:
    async def call(cache: SemanticCache) -> Any:
        built = make_scope(scope)
        key = await cache.store(prompt, response, built, ttl=ttl, metadata=metadata)
        hit = await cache.lookup(prompt, built)
        assert hit is not None and hit.key == key
        deleted = await cache.delete(prompt, built)
        return (key, outcome_of(hit), deleted)

    assert_same_everywhere(event_loop_for_fuzz.run_until_complete(run_everywhere(backends, call)))


@FUZZ
@given(prompt=prompts, answer=values, scope=scopes, ttl=ttls, metadata=metadatas)
def test_get_or_compute_behaves_alike_on_every_backend(
    event_loop_for_fuzz: asyncio.AbstractEventLoop,
    backends: dict[str, StorageBackend],
    prompt: Any,
    answer: Any,
    scope: Any,
    ttl: Any,
    metadata: Any,
) -> None:
    async def call(cache: SemanticCache) -> Any:
        built = make_scope(scope)
        first = await cache.get_or_compute(prompt, lambda: answer, built, ttl=ttl, metadata=metadata)
        again = await cache.resolve(prompt, lambda: "recomputed", built, ttl=ttl, metadata=metadata)
        return (repr(first), again.computed, repr(again.response))

    assert_same_everywhere(event_loop_for_fuzz.run_until_complete(run_everywhere(backends, call)))


@FUZZ
@given(hit_like=st.one_of(st.none(), junk, any_text), correct=st.one_of(st.booleans(), st.none(), junk))
def test_feedback_takes_only_hits(
    event_loop_for_fuzz: asyncio.AbstractEventLoop, backends: dict[str, StorageBackend], hit_like: Any, correct: Any
) -> None:
    async def call(cache: SemanticCache) -> Any:
        await cache.feedback(hit_like, correct)

    outcomes = event_loop_for_fuzz.run_until_complete(run_everywhere(backends, call))
    assert all(outcome[0] == ("error", "InvalidInputError") for outcome in outcomes.values())


config_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), any_text, junk)


@FUZZ
@given(
    st.fixed_dictionaries(
        {},
        optional={
            name: config_values
            for name in (
                "threshold",
                "ttl",
                "max_entries",
                "namespace",
                "answer_guard",
                "on_error",
                "timeout",
                "candidates",
                "max_prompt_chars",
            )
        },
    )
)
def test_options_are_accepted_or_refused_with_a_configuration_error(options: dict[str, Any]) -> None:
    try:
        config = CacheConfig(**{name: value for name, value in options.items() if value is not None})
    except DOCUMENTED:
        return
    except Exception as exc:
        raise AssertionError(f"CacheConfig raised {type(exc).__name__}: {exc}") from exc
    assert 0.0 <= config.threshold <= 1.0 and config.timeout > 0 and config.candidates >= 1
    assert config.ttl is None or (math.isfinite(config.ttl) and config.ttl > 0)


@FUZZ
@given(namespace=st.one_of(st.none(), any_text, junk))
def test_clear_takes_only_namespaces(
    event_loop_for_fuzz: asyncio.AbstractEventLoop, backends: dict[str, StorageBackend], namespace: Any
) -> None:
    async def call(cache: SemanticCache) -> Any:
        await cache.store("kept unless cleared", "answer", Scope(namespace="tenant-a"))
        await cache.clear(namespace)
        return await cache.lookup("kept unless cleared", Scope(namespace="tenant-a")) is not None

    assert_same_everywhere(event_loop_for_fuzz.run_until_complete(run_everywhere(backends, call)))
