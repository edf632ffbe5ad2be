"""Build a storage backend from a URL: memory://, sqlite:///path, redis://host:port/db, rediss://...

    memory://                  a new, private in-process backend (at most 100,000 entries, as SemanticCache())
    memory://NAME              the in-process backend called NAME, shared by every URL that names it
    sqlite:///cache.db         a SQLite file, relative to the working directory (as in SQLAlchemy)
    sqlite:////var/cache.db    an absolute path (four slashes)
    sqlite:///:memory:         a SQLite database in memory
    redis://host:6379/0        Redis (rediss:// for TLS); checked here, then given to RedisBackend unchanged

Backend options come from keyword arguments or the query string, e.g. sqlite:///cache.db?max_entries=10000.
A Redis URL is checked when the backend is built, not at its first use: the host, the port (1-65535), the
database number in the path, and each query option (the backend's prefix, index and cluster, and the redis-py
connection options in REDIS_CLIENT_OPTIONS, plus REDIS_TLS_OPTIONS on rediss://, each with a value of its type)
must be valid. No URL may carry a #fragment (write '#' in a name as %23) or give an option twice. A mistake is a
ConfigurationError that says what is wrong (and, for Redis, what a good URL looks like), with any password
replaced by ***.
"""

from __future__ import annotations

import importlib
import ipaddress
import math
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from semantic_llm_cache.backends.memory import MemoryBackend
from semantic_llm_cache.config import CacheConfig
from semantic_llm_cache.errors import ConfigurationError
from semantic_llm_cache.storage import StorageBackend

SUPPORTED_SCHEMES = ("memory", "sqlite", "redis", "rediss")
EXAMPLES = "memory://, sqlite:///path/to/cache.db, redis://host:6379/0, rediss://host:6380/0"

#: The bound of a memory:// backend that gives no max_entries: SemanticCache()'s own (CacheConfig.max_entries).
DEFAULT_MEMORY_MAX_ENTRIES: int | None = CacheConfig.max_entries

_named_memory: dict[str, MemoryBackend] = {}
_named_memory_lock = threading.Lock()


def _integer(value: str) -> int:
    if not re.fullmatch(r"[-+]?[0-9]{1,18}", value):
        raise ValueError(f"expected a whole number of at most 18 digits, got {value!r}")
    return int(value)


def _number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


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


def _query_pairs(url: str, query: str) -> list[tuple[str, str]]:
    """The (name, value) pairs of a query string; an option given twice is a ConfigurationError."""
    pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    seen: set[str] = set()
    for name, _text in pairs:
        if name in seen:
            raise ConfigurationError(f"option {name!r} is given twice in {redact(url)!r}; give each option once")
        seen.add(name)
    return pairs


def _query_options(url: str, scheme: str, query: str) -> dict[str, Any]:
    parsers = _QUERY_OPTIONS[scheme]
    options: dict[str, Any] = {}
    for name, text in _query_pairs(url, query):
        parser = parsers.get(name)
        if parser is None:
            known = ", ".join(sorted(parsers)) or "none"
            raise ConfigurationError(f"unknown option {name!r} in {redact(url)!r} (options of {scheme}://: {known})")
        try:
            options[name] = parser(text)
        except ValueError as exc:
            raise ConfigurationError(f"bad value for {name!r} in {redact(url)!r}: {exc}") from exc
    return options


def _build(factory: Callable[..., StorageBackend], url: str, *args: Any, **options: Any) -> StorageBackend:
    try:
        return factory(*args, **options)
    except TypeError as exc:  # an option the backend does not take
        raise ConfigurationError(f"cannot build a backend from {redact(url)!r}: {exc}") from exc


def _memory(url: str, name: str, options: dict[str, Any]) -> StorageBackend:
    bounded = {"max_entries": DEFAULT_MEMORY_MAX_ENTRIES, **options}
    if not name:
        return _build(MemoryBackend, url, **bounded)
    with _named_memory_lock:
        backend = _named_memory.get(name)
        if backend is None:
            built = _build(MemoryBackend, url, **bounded)
            assert isinstance(built, MemoryBackend)
            backend = _named_memory[name] = built
        elif options and options.get("max_entries", backend.max_entries) != backend.max_entries:
            raise ConfigurationError(f"{redact(url)!r} names an existing memory backend with other options")
        return backend


def _sqlite(url: str, netloc: str, path: str, options: dict[str, Any]) -> StorageBackend:
    from semantic_llm_cache.backends.sqlite import SQLiteBackend

    if netloc:
        raise ConfigurationError(
            f"{redact(url)!r}: a SQLite URL has no host; "
            "write sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    file_path = unquote(path[1:]) if path.startswith("/") else unquote(path)
    if not file_path:
        raise ConfigurationError(
            f"{redact(url)!r} names no file; write sqlite:///path/to/cache.db (or sqlite:///:memory:)"
        )
    if "\x00" in file_path:
        raise ConfigurationError(f"{redact(url)!r}: a file name cannot contain a NUL character (%00)")
    if file_path.startswith("~"):
        try:
            Path(file_path).expanduser()
        except RuntimeError as exc:  # ~name of a user this machine does not know
            raise ConfigurationError(f"{redact(url)!r}: cannot expand {file_path.split('/')[0]!r}: {exc}") from exc
    return _build(SQLiteBackend, url, file_path, **options)


# -- Redis URLs, checked here so that a mistake is an error when the backend is built, not at its first use -----

REDIS_EXAMPLE = "redis://localhost:6379/0, or redis[s]://[user:password@]host[:port][/db][?option=value&...]"
#: The backend's own query options (RedisBackend checks their values).
REDIS_BACKEND_OPTIONS = ("prefix", "index", "cluster")
_DIGITS = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_HOST = re.compile(r"[A-Za-z0-9._-]+")
#: redis-py's spellings of yes and no (it reads any other text as yes, so only these are accepted).
_REDIS_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
_MAX_DB = 2**31 - 1
_CLUSTER_FLAGS = ("1", "true", "yes", "on", "0", "false", "no", "off")  # as RedisBackend reads ?cluster=


def _redis_count(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not _DIGITS.fullmatch(value) or len(value) > 18 or int(value) < minimum:
            raise ValueError(f"expected a whole number >= {minimum}, got {value!r}")
        return int(value)

    return parse


def _redis_seconds(value: str) -> float:
    if not _DECIMAL.fullmatch(value) or not 0 < float(value) < math.inf:
        raise ValueError(f"expected a positive number of seconds (e.g. 2 or 0.5), got {value!r}")
    return float(value)


def _redis_flag(value: str) -> bool:
    flag = _REDIS_FLAGS.get(value.lower())
    if flag is None:
        raise ValueError(f"expected one of {', '.join(_REDIS_FLAGS)}, got {value!r}")
    return flag


def _redis_choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return parse


def _redis_text(value: str) -> str:
    return value


def _redis_database(value: str) -> int:
    if not _DIGITS.fullmatch(value) or len(value) > 10 or int(value) > _MAX_DB:
        raise ValueError(f"expected a database number from 0 to {_MAX_DB}, got {value!r}")
    return int(value)


#: The redis-py connection options a Redis URL's query may carry: those both a single server's connection and
#: a cluster's nodes take (the backend finds out which it talks to only when it connects).
REDIS_CLIENT_OPTIONS: dict[str, Callable[[str], Any]] = {
    "db": _redis_database,
    "socket_timeout": _redis_seconds,
    "socket_connect_timeout": _redis_seconds,
    "socket_keepalive": _redis_flag,
    "socket_read_size": _redis_count(1),
    "health_check_interval": _redis_count(0),
    "max_connections": _redis_count(1),
    "protocol": _redis_choice("2", "3"),
    "client_name": _redis_text,
    "lib_name": _redis_text,
    "lib_version": _redis_text,
    "username": _redis_text,
    "password": _redis_text,
}
#: Options only a TLS (rediss://) connection takes.
REDIS_TLS_OPTIONS: dict[str, Callable[[str], Any]] = {
    "ssl_cert_reqs": _redis_choice("none", "optional", "required"),
    "ssl_check_hostname": _redis_flag,
    "ssl_ca_certs": _redis_text,
    "ssl_ca_data": _redis_text,
    "ssl_certfile": _redis_text,
    "ssl_keyfile": _redis_text,
    "ssl_ciphers": _redis_text,
}


_PASSWORD_IN_NETLOC = re.compile(r"^([^:/?#]*://[^/?#@]*?:)[^/?#]*@")
_PASSWORD_IN_QUERY = re.compile(r"([?&]password=)[^&#]*")


def redact(url: str) -> str:
    """`url` with its password (user:PASSWORD@ or ?password=) replaced by ***, for error messages."""
    return _PASSWORD_IN_QUERY.sub(r"\1***", _PASSWORD_IN_NETLOC.sub(r"\1***@", url))


def _bad_redis_url(url: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"bad Redis URL {redact(url)!r}: {problem} (a good one: {REDIS_EXAMPLE})")


def _check_redis_host(url: str, host: str) -> None:
    if ":" in host:  # an IPv6 literal (urlsplit has taken off its brackets), perhaps with a %zone
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError as exc:
            raise _bad_redis_url(url, f"{host!r} is not an IPv6 address ({exc})") from exc
        return
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise _bad_redis_url(url, f"{host!r} is not a host name ({exc})") from exc
    if not _HOST.fullmatch(ascii_host):
        raise _bad_redis_url(url, f"{host!r} is not a host name (letters, digits, '.', '-' or an IP address)")


def check_redis_url(url: str) -> None:
    """Raise ConfigurationError unless `url` is a Redis URL redis-py reads as it is written.

    Checked: the port (1-65535), the host, the database number (the path, or ?db=), and every query option: the
    backend's own (REDIS_BACKEND_OPTIONS, whose values RedisBackend checks) and the redis-py connection options in
    REDIS_CLIENT_OPTIONS (and REDIS_TLS_OPTIONS for rediss://), each with a value of its type.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _bad_redis_url(url, str(exc)) from exc
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise _bad_redis_url(url, f"the scheme must be redis:// or rediss://, not {parts.scheme + '://'!r}")
    if parts.fragment:
        raise _bad_redis_url(url, f"a Redis URL has no #fragment (#{parts.fragment})")
    try:
        port = parts.port
    except ValueError as exc:  # not a number, or out of range
        port_text = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise _bad_redis_url(url, f"the port must be a number from 1 to 65535, got {port_text!r}") from exc
    if port == 0:
        raise _bad_redis_url(url, "the port must be a number from 1 to 65535, got 0")
    host = unquote(parts.hostname or "")
    if host:
        _check_redis_host(url, host)
    path = unquote(parts.path)
    database = re.fullmatch(r"/?|/([^/]*)/?", path)
    if database is None:
        raise _bad_redis_url(url, f"the path must be a database number such as /0, got {path!r}")
    path_db = database.group(1)
    if path_db:
        try:
            _redis_database(path_db)
        except ValueError as exc:
            raise _bad_redis_url(
                url, f"the path must be a database number from 0 to {_MAX_DB} such as /0, got {path!r}"
            ) from exc
    options = {**REDIS_CLIENT_OPTIONS, **(REDIS_TLS_OPTIONS if scheme == "rediss" else {})}
    values: dict[str, str] = {}
    for name, text in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if name in values:
            raise _bad_redis_url(url, f"option {name!r} is given twice; give each option once")
        values[name] = text
        if name == "cluster" and text.strip().lower() not in _CLUSTER_FLAGS:
            expected = ", ".join(_CLUSTER_FLAGS)
            raise _bad_redis_url(url, f"bad value for 'cluster': expected one of {expected}, got {text!r}")
        if name in REDIS_BACKEND_OPTIONS:  # RedisBackend checks prefix and index, and says what is wrong
            continue
        parser = options.get(name)
        if parser is None:
            if name in REDIS_TLS_OPTIONS:
                raise _bad_redis_url(url, f"option {name!r} is for TLS connections: use rediss://")
            known = ", ".join([*REDIS_BACKEND_OPTIONS, *options])
            raise _bad_redis_url(url, f"unknown option {name!r} (options: {known})")
        if not text:
            raise _bad_redis_url(url, f"option {name!r} has no value")
        try:
            parser(text)
        except ValueError as exc:
            raise _bad_redis_url(url, f"bad value for {name!r}: {exc}") from exc
    if "db" in values and path_db:
        raise _bad_redis_url(url, "the database number is given twice (in the path and as ?db=); give it once")
    cluster = values.get("cluster", "").strip().lower() in _CLUSTER_FLAGS[:4]
    if cluster and int(values.get("db") or path_db or 0) != 0:
        raise _bad_redis_url(url, "a Redis Cluster has only database 0")


def _redis(url: str, options: dict[str, Any]) -> StorageBackend:
    check_redis_url(url)
    try:  # imported by name: the module (and the redis package) load only when a redis:// URL is used
        redis_backend: Any = importlib.import_module("semantic_llm_cache.backends.redis").RedisBackend
    except ImportError as exc:
        raise ConfigurationError(
            f"{redact(url)!r} needs the Redis backend: pip install 'async-semantic-llm-cache[redis]' ({exc})"
        ) from exc
    return _build(redis_backend, url, url, **options)


def backend_from_url(url: str, **options: Any) -> StorageBackend:
    """The backend a URL names (see the module docstring); keyword `options` go to the backend's constructor.

    Raises ConfigurationError for an unsupported scheme, a malformed URL, an unknown option or a bad option value
    (a Redis URL's port, database and options are checked here too: see check_redis_url).
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(f"not a backend URL: {url!r} (expected one of {EXAMPLES})")
    if not url.isascii():
        try:
            url.encode("utf-8")
        except UnicodeEncodeError:  # e.g. a command-line argument that was not valid UTF-8
            raise ConfigurationError(
                f"backend URL {redact(url)!r} is not valid text (it holds a lone surrogate)"
            ) from None
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"malformed backend URL {redact(url)!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise ConfigurationError(
            f"unsupported backend URL scheme {parts.scheme + '://'!r} in {redact(url)!r}; "
            f"supported: {', '.join(s + '://' for s in SUPPORTED_SCHEMES)} (e.g. {EXAMPLES})"
        )
    if scheme in ("redis", "rediss"):
        return _redis(scheme + url[len(parts.scheme) :], options)
    if parts.fragment:
        raise ConfigurationError(
            f"{redact(url)!r} has a #fragment ({'#' + parts.fragment!r}); a backend URL has none "
            "(write '#' in a name as %23)"
        )
    merged = {**_query_options(url, scheme, parts.query), **options}
    if scheme == "memory":
        name = unquote(parts.netloc + parts.path).strip("/")
        return _memory(url, name, merged)
    return _sqlite(url, parts.netloc, parts.path, merged)


def forget_named_memory_backends() -> None:
    """Drop every memory://NAME backend (their entries go with them); for tests and long-lived processes."""
    with _named_memory_lock:
        _named_memory.clear()
