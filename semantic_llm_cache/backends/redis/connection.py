"""The Redis connection: one client per event loop, cluster detection, a bound on operations in flight, SCAN,
and redis-py's errors turned into CacheBackendError.

No circuit breaker here: the engine (`SemanticCache`) guards every backend call, and every embedder call, with
its own breaker and time budget, so a dead or hung server is already skipped there; a second breaker in the
backend only opened on the same failures.

The one module that imports redis-py: the others take what they need of it from here.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from semantic_llm_cache.errors import CacheBackendError, ConfigurationError

try:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, RedisError, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("RedisBackend needs the redis package: pip install 'async-semantic-llm-cache[redis]'") from exc

logger = logging.getLogger("semantic_llm_cache.redis")

T = TypeVar("T")
# redis-py's async return types are unions of awaitables and values; the client is used dynamically.
Client = Any

SCAN_COUNT = 1000
BATCH = 500  # keys per pipeline when reading or deleting many
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
OWN_URL_OPTIONS = ("prefix", "index", "cluster")
__all__ = ["NoScriptError", "RedisCluster", "ResponseError"]  # re-exported for the other modules


class Counters:
    """The backend's event counters (thread-safe: one backend may serve several event loops)."""

    NAMES = ("errors", "corrupt_skipped", "stale_dropped", "resyncs", "log_replays", "log_records_applied")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.NAMES, 0)

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class Connection:
    """Clients to one server or cluster, made per event loop on first use (a client passed in is used as is).

    cluster: True / False, or None to ask the server.
    """

    def __init__(
        self,
        url: str | Client,
        *,
        cluster: bool | None,
        socket_timeout: float,
        connect_timeout: float,
        max_connections: int,
        counters: Counters,
    ) -> None:
        for name, value in (("socket_timeout", socket_timeout), ("connect_timeout", connect_timeout)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
        self.cluster = cluster
        self.counters = counters
        self.max_connections = max_connections
        self._options: dict[str, Any] = {
            "socket_timeout": float(socket_timeout),
            "socket_connect_timeout": float(connect_timeout),
            "max_connections": max_connections,
        }
        if isinstance(url, str):
            if not url.startswith(("redis://", "rediss://", "unix://")):
                raise ConfigurationError(f"url must start with redis://, rediss:// or unix://, got {url!r}")
            self.url: str | None = url
            self._given: Client | None = None
        else:
            self.url = None
            self._given = url
            if _connection_kwargs(url).get("decode_responses"):
                raise ConfigurationError(
                    "the Redis client must be created with decode_responses=False (vectors are bytes)"
                )
            if cluster is None:
                self.cluster = isinstance(url, RedisCluster)
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Client] = weakref.WeakKeyDictionary()
        self._connecting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self.closed = False

    def make_client(self, cluster: bool) -> Client:
        """A new client of the URL (one quick retry: a pooled socket gone stale)."""
        assert self.url is not None
        retry = Retry(ExponentialBackoff(cap=0.05, base=0.01), 1)
        if cluster:
            return RedisCluster.from_url(self.url, decode_responses=False, retry=retry, **self._options)
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, decode_responses=False, retry=retry, timeout=None, protocol=2, **self._options
        )
        return aioredis.Redis(connection_pool=pool)

    async def client(self) -> Client:
        """This event loop's client (connected on first use, asking the server whether it is a cluster)."""
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is not None:
            return client
        async with self._connecting.setdefault(loop, asyncio.Lock()):
            client = self._clients.get(loop)
            if client is not None:
                return client
            if self.cluster is None:
                probe = self.make_client(cluster=False)
                try:
                    info = await probe.info("cluster")
                    self.cluster = bool(int(info.get("cluster_enabled", 0)))
                finally:
                    await close_client(probe)
            client = self._clients[loop] = self.make_client(self.cluster)
            return client

    async def run(self, operation: Callable[[], Awaitable[T]], on_lost: Callable[[], None]) -> T:
        """Run one backend operation within the in-flight bound, its errors translated.

        `on_lost` is called when the server is unreachable (it may come back empty).
        """
        if self.closed:
            raise CacheBackendError("the Redis backend is closed")
        try:
            async with self._slot():
                return await operation()
        except CONNECTION_ERRORS as exc:
            on_lost()
            self.counters.count("errors")
            raise CacheBackendError(f"Redis unreachable: {type(exc).__name__}: {exc}") from exc
        except RedisError as exc:
            self.counters.count("errors")
            raise CacheBackendError(f"Redis error: {type(exc).__name__}: {exc}") from exc

    def _slot(self) -> asyncio.Semaphore:
        """At most `max_connections` operations in flight per event loop: a cluster client's pools do not wait
        for a free connection, they fail (and a failure to connect must not open the engine's circuit)."""
        loop = asyncio.get_running_loop()
        slots = self._slots.get(loop)
        if slots is None:
            slots = self._slots[loop] = asyncio.Semaphore(self.max_connections)
        return slots

    async def scan(self, client: Client, match: str, kind: str | None = None, node: Any = None) -> AsyncIterator[bytes]:
        """Every key matching `match` (SCAN; on a cluster, on every primary or on `node`)."""
        if not self.cluster:
            cursor = 0
            while True:
                cursor, keys = await client.scan(cursor=cursor, match=match, count=SCAN_COUNT, _type=kind)
                for redis_key in keys:
                    yield redis_key
                if int(cursor) == 0:
                    return
        for target in [node] if node is not None else client.get_primaries():
            cursor = 0
            while True:
                cursors, keys = await client.scan(
                    cursor=cursor, match=match, count=SCAN_COUNT, _type=kind, target_nodes=target
                )
                for redis_key in keys:
                    yield redis_key
                cursor = int(cursors[target.name]) if isinstance(cursors, dict) else int(cursors)
                if cursor == 0:
                    break

    async def scan_chunks(self, client: Client, match: str, node: Any = None) -> AsyncIterator[list[bytes]]:
        """`scan` in chunks of BATCH distinct keys (SCAN may return a key twice)."""
        chunk: list[bytes] = []
        seen: set[bytes] = set()
        async for redis_key in self.scan(client, match, node=node):
            if redis_key in seen:
                continue
            seen.add(redis_key)
            chunk.append(redis_key)
            if len(chunk) >= BATCH:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    async def close(self) -> None:
        """Close the clients this connection made (a client passed in is left to its owner)."""
        self.closed = True
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            try:
                await close_client(client)
            except Exception as exc:  # a client of another, finished loop cannot always close cleanly
                logger.debug("closing a Redis client failed: %s", exc)


async def execute(pipe: Any) -> list[Any]:
    """Run a pipeline; per-command errors come back in place (a WRONGTYPE on foreign data is no crash)."""
    replies: list[Any] = await pipe.execute(raise_on_error=False)
    for reply in replies:
        if isinstance(reply, CONNECTION_ERRORS):
            raise reply
    return replies


async def unlink(client: Client, keys: list[bytes]) -> None:
    pipe = client.pipeline(transaction=False)
    for redis_key in keys:  # one command per key: keys of many slots may not share a command on a cluster
        pipe.execute_command("UNLINK", redis_key)
    await pipe.execute(raise_on_error=False)


async def server_identity(client: Client) -> tuple[str | None, str | None]:
    """(server name, version): "redis" or "valkey", and that server's own version."""
    info = await client.info("server")
    if isinstance(info, dict) and info and all(isinstance(value, dict) for value in info.values()):
        info = next(iter(info.values()))  # a cluster answers per node
    if not isinstance(info, dict):
        return None, None
    # Valkey names itself in server_name and reports redis_version 7.2.4 for compatibility: its own version is
    # valkey_version.
    return str(info.get("server_name") or "redis"), str(
        info.get("valkey_version", info.get("redis_version", "unknown"))
    )


def own_url_options(url: str) -> tuple[str, dict[str, str]]:
    """Split this backend's options (prefix, index, cluster) off a URL's query string; the rest is redis-py's."""
    parts = urlsplit(url)
    if not parts.query:
        return url, {}
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in OWN_URL_OPTIONS:
            ours[name] = value
        else:
            theirs.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(theirs))), ours


def flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"not a yes/no value: {value!r}")


def _connection_kwargs(client: Client) -> dict[str, Any]:
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        return dict(getattr(pool, "connection_kwargs", {}) or {})
    getter = getattr(client, "get_connection_kwargs", None)
    return dict(getter()) if callable(getter) else {}


async def close_client(client: Client) -> None:
    closer = getattr(client, "aclose", None) or client.close
    await closer()
