"""Build a storage backend from a URL: memory://, sqlite:///path, redis://host:port/db, rediss://...

    memory://                  a new, private in-process backend
    memory://NAME              the in-process backend called NAME, shared by every URL that names it
    sqlite:///cache.db         a SQLite file, relative to the working directory (as in SQLAlchemy)
    sqlite:////var/cache.db    an absolute path (four slashes)
    sqlite:///:memory:         a SQLite database in memory
    redis://host:6379/0        Redis (rediss:// for TLS); the URL goes to RedisBackend unchanged

Backend options come from keyword arguments or the query string, e.g. sqlite:///cache.db?max_entries=10000.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from semantic_llm_cache.backends.memory import MemoryBackend
from semantic_llm_cache.errors import ConfigurationError
from semantic_llm_cache.storage import StorageBackend

SUPPORTED_SCHEMES = ("memory", "sqlite", "redis", "rediss")
EXAMPLES = "memory://, sqlite:///path/to/cache.db, redis://host:6379/0, rediss://host:6380/0"

_named_memory: dict[str, MemoryBackend] = {}
_named_memory_lock = threading.Lock()


def _integer(value: str) -> int:
    return int(value)


def _number(value: str) -> float:
    return float(value)


def _flag(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a yes/no value: {value!r}")


_QUERY_OPTIONS: dict[str, dict[str, Callable[[str], Any]]] = {
    "memory": {"max_entries": _integer},
    "sqlite": {
        "max_entries": _integer,
        "create": _flag,
        "synchronous": str,
        "timeout": _number,
        "purge_interval": _number,
    },
}


def _query_options(url: str, scheme: str, query: str) -> dict[str, Any]:
    parsers = _QUERY_OPTIONS[scheme]
    options: dict[str, Any] = {}
    for name, text in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        parser = parsers.get(name)
        if parser is None:
            known = ", ".join(sorted(parsers)) or "none"
            raise ConfigurationError(f"unknown option {name!r} in {url!r} (options of {scheme}://: {known})")
        try:
            options[name] = parser(text)
        except ValueError as exc:
            raise ConfigurationError(f"bad value for {name!r} in {url!r}: {exc}") from exc
    return options


def _build(factory: Callable[..., StorageBackend], url: str, *args: Any, **options: Any) -> StorageBackend:
    try:
        return factory(*args, **options)
    except TypeError as exc:  # an option the backend does not take
        raise ConfigurationError(f"cannot build a backend from {url!r}: {exc}") from exc


def _memory(url: str, name: str, options: dict[str, Any]) -> StorageBackend:
    if not name:
        return _build(MemoryBackend, url, **options)
    with _named_memory_lock:
        backend = _named_memory.get(name)
        if backend is None:
            built = _build(MemoryBackend, url, **options)
            assert isinstance(built, MemoryBackend)
            backend = _named_memory[name] = built
        elif options and options.get("max_entries", backend.max_entries) != backend.max_entries:
            raise ConfigurationError(f"{url!r} names an existing memory backend with other options")
        return backend


def _sqlite(url: str, netloc: str, path: str, options: dict[str, Any]) -> StorageBackend:
    from semantic_llm_cache.backends.sqlite import SQLiteBackend

    if netloc:
        raise ConfigurationError(
            f"{url!r}: a SQLite URL has no host; write sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    file_path = unquote(path[1:]) if path.startswith("/") else unquote(path)
    if not file_path:
        raise ConfigurationError(f"{url!r} names no file; write sqlite:///path/to/cache.db (or sqlite:///:memory:)")
    return _build(SQLiteBackend, url, file_path, **options)


def _redis(url: str, options: dict[str, Any]) -> StorageBackend:
    try:  # imported by name: the module (and the redis package) load only when a redis:// URL is used
        redis_backend: Any = importlib.import_module("semantic_llm_cache.backends.redis").RedisBackend
    except ImportError as exc:
        raise ConfigurationError(
            f"{url!r} needs the Redis backend: pip install 'async-semantic-llm-cache[redis]' ({exc})"
        ) from exc
    return _build(redis_backend, url, url, **options)


def backend_from_url(url: str, **options: Any) -> StorageBackend:
    """The backend a URL names (see the module docstring); keyword `options` go to the backend's constructor.

    Raises ConfigurationError for an unsupported scheme, a malformed URL or an unknown option.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(f"not a backend URL: {url!r} (expected one of {EXAMPLES})")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"malformed backend URL {url!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise ConfigurationError(
            f"unsupported backend URL scheme {parts.scheme + '://'!r} in {url!r}; "
            f"supported: {', '.join(s + '://' for s in SUPPORTED_SCHEMES)} (e.g. {EXAMPLES})"
        )
    if scheme in ("redis", "rediss"):
        return _redis(scheme + url[len(parts.scheme) :], options)
    merged = {**_query_options(url, scheme, parts.query), **options}
    if scheme == "memory":
        name = unquote(parts.netloc + parts.path).strip("/")
        return _memory(url, name, merged)
    return _sqlite(url, parts.netloc, parts.path, merged)


def forget_named_memory_backends() -> None:
    """Drop every memory://NAME backend (their entries go with them); for tests and long-lived processes."""
    with _named_memory_lock:
        _named_memory.clear()
