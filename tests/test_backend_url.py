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
