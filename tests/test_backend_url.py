"""backend_from_url: each scheme builds the right backend with the right options; anything else is a clear error."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from semantic_llm_cache.backends.memory import MemoryBackend
from semantic_llm_cache.backends.sqlite import SQLiteBackend
from semantic_llm_cache.backends.url import backend_from_url, forget_named_memory_backends
from semantic_llm_cache.errors import ConfigurationError


@pytest.fixture(autouse=True)
def no_named_memory_backends() -> Iterator[None]:
    yield
    forget_named_memory_backends()


def test_memory_url_builds_a_fresh_backend_each_time() -> None:
    first, second = backend_from_url("memory://"), backend_from_url("memory://")
    assert isinstance(first, MemoryBackend) and isinstance(second, MemoryBackend) and first is not second
    bounded = backend_from_url("memory://?max_entries=5")
    assert isinstance(bounded, MemoryBackend) and bounded.max_entries == 5


def test_memory_url_has_the_same_bound_as_a_semantic_cache_by_default() -> None:
    from semantic_llm_cache import SemanticCache

    engine_default = SemanticCache(embedder=lambda texts: [[1.0] * 4 for _ in texts]).backend
    assert isinstance(engine_default, MemoryBackend) and engine_default.max_entries == 100_000
    for url in ("memory://", "memory://bounded-by-default"):
        backend = backend_from_url(url)
        assert isinstance(backend, MemoryBackend) and backend.max_entries == engine_default.max_entries
    assert backend_from_url("memory://bounded-by-default") is backend  # a later plain URL names the same one
    unbounded = backend_from_url("memory://", max_entries=None)
    assert isinstance(unbounded, MemoryBackend) and unbounded.max_entries is None


def test_named_memory_url_is_shared_until_forgotten() -> None:
    shared = backend_from_url("memory://team-cache")
    assert backend_from_url("memory://team-cache") is shared
    assert backend_from_url("memory://other") is not shared
    with pytest.raises(ConfigurationError, match="other options"):
        backend_from_url("memory://team-cache?max_entries=3")
    forget_named_memory_backends()
    assert backend_from_url("memory://team-cache") is not shared


def test_sqlite_url_paths_follow_sqlalchemy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = backend_from_url("sqlite:///sub/cache.db")
    assert isinstance(relative, SQLiteBackend) and relative.path == str(tmp_path / "sub" / "cache.db")
    absolute = backend_from_url(f"sqlite:///{tmp_path}/abs.db")  # tmp_path starts with "/": four slashes
    assert isinstance(absolute, SQLiteBackend) and absolute.path == str(tmp_path / "abs.db")
    spaced = backend_from_url(f"sqlite:///{tmp_path}/with%20space.db")
    assert isinstance(spaced, SQLiteBackend) and spaced.path == str(tmp_path / "with space.db")
    in_memory = backend_from_url("sqlite:///:memory:")
    assert isinstance(in_memory, SQLiteBackend) and in_memory.path == ":memory:"


async def test_sqlite_url_options_from_the_query_and_keywords(tmp_path: Path) -> None:
    backend = backend_from_url(f"sqlite:///{tmp_path}/c.db?max_entries=10&synchronous=full&timeout=2.5")
    assert isinstance(backend, SQLiteBackend)
    assert (backend.max_entries, backend.synchronous, backend.timeout) == (10, "FULL", 2.5)
    overridden = backend_from_url(f"sqlite:///{tmp_path}/c.db?max_entries=10", max_entries=20, create=False)
    assert isinstance(overridden, SQLiteBackend) and (overridden.max_entries, overridden.create) == (20, False)
    await backend.set(
        "p" * 32 + ":k", __import__("semantic_llm_cache").CacheEntry(prompt="x", response=1, partition_id="p" * 32)
    )
    assert (await backend.get_stats())["path"] == str(tmp_path / "c.db")
    await backend.close()
    await overridden.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/cache", "unsupported backend URL scheme 'ftp://'.*memory://, sqlite://, redis://"),
        ("postgres://localhost/db", "supported: memory://, sqlite://, redis://, rediss://"),
        ("cache.db", "not a backend URL"),
        ("", "not a backend URL"),
        ("sqlite://host/cache.db", "has no host"),
        ("sqlite:///", "names no file"),
        ("sqlite:///c.db?max_entries=many", "bad value for 'max_entries'"),
        ("sqlite:///c.db?colour=blue", "unknown option 'colour'.*max_entries"),
        ("sqlite:///c.db?max_entries=0", "max_entries must be a positive integer"),
        ("memory://?size=3", "unknown option 'size'"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        backend_from_url(url)


def test_unknown_keyword_option_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot build a backend"):
        backend_from_url(f"sqlite:///{tmp_path}/c.db", colour="blue")


def test_redis_urls_without_the_redis_backend_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def no_redis(name: str, *args: Any) -> Any:
        if name == "semantic_llm_cache.backends.redis":
            raise ImportError("No module named 'redis'")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_redis)
    for url in ("redis://localhost:6379/0", "rediss://cache.example.com:6380/1"):
        with pytest.raises(ConfigurationError, match=r"pip install 'async-semantic-llm-cache\[redis\]'"):
            backend_from_url(url)


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "rediss://cache.example.com:6380/2", "REDIS://h:1/0"])
def test_redis_urls_build_a_redis_backend(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    redis_module = pytest.importorskip("semantic_llm_cache.backends.redis")
    built: list[tuple[Any, ...]] = []

    class RecordingRedisBackend(redis_module.RedisBackend):  # type: ignore[misc, name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append((args, kwargs))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(redis_module, "RedisBackend", RecordingRedisBackend)
    backend = backend_from_url(url, prefix="test:")
    assert isinstance(backend, RecordingRedisBackend)
    assert built == [((url.replace("REDIS://", "redis://"),), {"prefix": "test:"})]


GOOD_REDIS_URL = "redis://localhost:6379/0"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://localhost:notaport/0", "the port must be a number from 1 to 65535, got 'notaport'"),
        ("redis://localhost:99999", "the port must be a number from 1 to 65535, got '99999'"),
        ("redis://localhost:0/0", "the port must be a number from 1 to 65535, got 0"),
        ("redis://localhost:-1/0", "the port must be a number from 1 to 65535"),
        ("redis://localhost:6379/abc", "the path must be a database number .* got '/abc'"),
        ("redis://localhost:6379/1/2", "the path must be a database number .* got '/1/2'"),
        ("redis://localhost:6379/99999999999", "the path must be a database number from 0 to 2147483647"),
        ("redis://localhost:6379/0?db=abc", "bad value for 'db'"),
        ("redis://localhost:6379/1?db=2", "the database number is given twice"),
        ("redis://h:6379/0?socket_timeout=abc", "bad value for 'socket_timeout'.*positive number of seconds"),
        ("redis://h:6379/0?socket_timeout=nan", "bad value for 'socket_timeout'"),
        ("redis://h:6379/0?socket_timeout=-1", "bad value for 'socket_timeout'"),
        ("redis://h:6379/0?socket_connect_timeout=", "option 'socket_connect_timeout' has no value"),
        ("redis://h:6379/0?max_connections=0", "bad value for 'max_connections'.*whole number >= 1"),
        ("redis://h:6379/0?max_connections=1e3", "bad value for 'max_connections'"),
        ("redis://h:6379/0?socket_keepalive=maybe", "bad value for 'socket_keepalive'.*true, yes"),
        ("redis://h:6379/0?socket_keepalive=off", "bad value for 'socket_keepalive'"),  # redis-py reads "off" as yes
        ("redis://h:6379/0?protocol=4", "bad value for 'protocol'.*2, 3"),
        ("redis://h:6379/0?colour=blue", "unknown option 'colour' .*socket_timeout"),
        ("redis://h:6379/0?decode_responses=true", "unknown option 'decode_responses'"),
        ("redis://h:6379/0?ssl_certfile=/c.pem", "'ssl_certfile' is for TLS connections: use rediss://"),
        ("rediss://h:6380/0?ssl_cert_reqs=sometimes", "bad value for 'ssl_cert_reqs'.*none, optional, required"),
        ("redis://h:6379/0?socket_timeout=1&socket_timeout=2", "option 'socket_timeout' is given twice"),
        ("redis://h:6379/3?cluster=yes", "a Redis Cluster has only database 0"),
        ("redis://h:6379/0?cluster=maybe", "bad value for 'cluster': expected one of 1, true, yes, on, 0"),
        ("redis://bad host:6379/0", "'bad host' is not a host name"),
        ("redis://" + "a" * 64 + ":6379/0", "is not a host name"),
        ("redis://[::zz]:6379/0", "malformed backend URL"),
        ("redis://h:6379/0#section", "a Redis URL has no #fragment"),
    ],
)
def test_bad_redis_urls_are_configuration_errors_at_construction(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        backend_from_url(url)
    if "malformed" not in message:
        assert "bad Redis URL" in str(raised.value) and GOOD_REDIS_URL in str(raised.value)  # and what a good one is


def test_bad_redis_urls_are_refused_without_the_redis_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def no_redis(name: str, *args: Any) -> Any:
        if name == "semantic_llm_cache.backends.redis":
            raise ImportError("No module named 'redis'")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_redis)
    with pytest.raises(ConfigurationError, match="the port must be a number"):
        backend_from_url("redis://localhost:notaport/0")


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:s3cret@localhost:notaport/0",
        "redis://:s3cret@localhost:6379/0?colour=blue",
        "redis://localhost:6379/0?password=s3cret&colour=blue",
        "ftp://user:s3cret@example.com/",
        "sqlite://user:s3cret@host/cache.db",
    ],
)
def test_url_errors_do_not_show_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        backend_from_url(url)
    assert "s3cret" not in str(raised.value) and "***" in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:pass@cache.example.com:6380/2?socket_timeout=0.5&socket_connect_timeout=1&prefix=app:",
        "redis://localhost?db=3&max_connections=8&health_check_interval=30&socket_keepalive=true&protocol=3",
        "redis://[::1]:6379/0?index=client&cluster=no&client_name=worker-1",
        "rediss://cache.example.com:6380/0?ssl_cert_reqs=none&ssl_check_hostname=false&ssl_ca_certs=/etc/ca.pem",
        "redis://",
        "redis://localhost:6379/",
        "redis://héllo.example:6379/0",
    ],
)
def test_good_redis_urls_with_options_still_build(url: str) -> None:
    redis_module = pytest.importorskip("semantic_llm_cache.backends.redis")
    assert isinstance(backend_from_url(url), redis_module.RedisBackend)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///cache#1.db", r"has a #fragment .*write '#' in a name as %23"),
        ("sqlite:///a%00b.db", "cannot contain a NUL character"),
        ("sqlite:///~no-such-user-here/cache.db", "cannot expand '~no-such-user-here'"),
        ("sqlite:///c.db?timeout=nan", "bad value for 'timeout'"),
        ("sqlite:///c.db?purge_interval=inf", "bad value for 'purge_interval'"),
        ("sqlite:///c.db?max_entries=1&max_entries=2", "option 'max_entries' is given twice"),
        ("memory://\udcff", "is not valid text"),
    ],
)
def test_other_bad_urls_are_configuration_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        backend_from_url(url)


@pytest.mark.parametrize("url", ["redis://localhost:notaport/0", "redis://localhost:6379/abc", "redis://h/0?bogus=1"])
def test_a_redis_backend_built_directly_checks_its_url_too(url: str) -> None:
    from semantic_llm_cache.backends.redis import RedisBackend

    with pytest.raises(ConfigurationError, match="Redis URL"):
        RedisBackend(url)
