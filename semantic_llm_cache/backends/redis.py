"""Redis backend: one cache shared by many processes on many machines, on plain Redis or Redis with search.

Layout under the key prefix (``slc:`` by default); ``{P}`` is the partition id, used as the Redis Cluster hash
tag so that a partition's keys live on one slot:

- ``slc:e:{P}:<digest>``: one hash per entry: ``s`` holds the partition's and the namespace's tags (one TAG
  field, see `scope_tags`; only a candidate filter: results are checked against the key and the payload),
  ``j`` the JSON payload (the versioned codec of serialization.py, without the vector, defaults left out) and
  ``v<dim>`` the vector as little-endian float32 bytes. The entry's TTL is Redis EXPIRE (PEXPIREAT to its
  ``expires_at``), set by the same script that writes the hash, on every write.
- ``slc:h:{P}:<digest>``: the entry's hit counters (``h`` hits, ``t`` last hit), with the entry's TTL. They are
  kept out of the entry hash because any change to an indexed hash makes the search module re-insert its vector.
- ``slc:log:{P}``: the partition's changelog, a stream. Every write and delete appends a record in the same
  Lua script (atomic, one round trip). A new log starts with a genesis record, so a reader that sees it knows
  it holds the partition's whole history; the log outlives every entry logged in it.
- ``slc:idx:1:<dim>``: with ``index="search"``, one search index per vector dimension over the entry hashes
  (TAG ``s``, VECTOR ``v<dim>``, HNSW, cosine). Expired hashes leave it by themselves.

With ``index="client"`` each process keeps a flat index of each partition it queries and brings it up to date
from the changelog before every search, in the same pipelined round trip that fetches the candidates. A
process whose position was trimmed from the log resyncs with SCAN. No KEYS anywhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from semantic_llm_cache.config import CacheEntry, Vector
from semantic_llm_cache.errors import CacheBackendError, ConfigurationError, InvalidInputError
from semantic_llm_cache.health import CircuitBreaker
from semantic_llm_cache.index.auto import DEFAULT_HNSW_MIN_ENTRIES, renamed_min_entries
from semantic_llm_cache.index.partitions import SEARCH_AGAIN, Checked, Found, PartitionIndex, PartitionIndexes
from semantic_llm_cache.index.protocol import IndexFactory
from semantic_llm_cache.serialization import (
    entry_from_dict,
    entry_to_dict,
    unit_vector_from_bytes,
    vector_from_bytes,
    vector_to_bytes,
)
from semantic_llm_cache.storage import Match, StorageBackend

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

IndexMode = Literal["auto", "search", "client"]
Digests = set[str]  # named here: inside RedisBackend, `set` is the method
T = TypeVar("T")
# redis-py's async return types are unions of awaitables and values; the client is used dynamically.
Client = Any

INDEX_SCHEMA_VERSION = 1  # part of the index name: a new schema gets a new index
_SCAN_COUNT = 1000
_BATCH = 500
_DELTA_BATCH = 1000
_LOG_GRACE_MS = 60_000
_MAX_SEARCH_ROUNDS = 8
_FILTER_SIZE_TTL = 10.0  # seconds a partition's size estimate is reused when choosing the search policy
_BATCHES_MIN_MATCHING = 1000  # below this many matching vectors brute force wins outright
_BATCHES_MIN_SHARE = 10  # and only when they are at least a tenth of the index: else batches wander far
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)

# KEYS: entry, log, hits. ARGV: digest, expires_at ms ('' = never), log max length, log grace ms, hits, last hit
# time ('' = none), then the entry's field/value pairs.
# The log outlives every entry logged in it, so a missing log means a partition without live entries.
_SET_SCRIPT = """
local log_type = redis.call('TYPE', KEYS[2])
if type(log_type) == 'table' then log_type = log_type['ok'] end
if log_type ~= 'stream' and log_type ~= 'none' then
  redis.call('DEL', KEYS[2])
  log_type = 'none'
end
local log_ttl = redis.call('PTTL', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
if ARGV[5] ~= '0' or ARGV[6] ~= '' then
  redis.call('HSET', KEYS[3], 'h', ARGV[5])
  if ARGV[6] ~= '' then redis.call('HSET', KEYS[3], 't', ARGV[6]) end
end
local expire_at = tonumber(ARGV[2])
if expire_at then
  redis.call('PEXPIREAT', KEYS[1], expire_at)
  redis.call('PEXPIREAT', KEYS[3], expire_at)
end
if log_type == 'none' then redis.call('XADD', KEYS[2], '*', 'o', 'g') end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'o', 's', 'k', ARGV[1])
if not expire_at then
  redis.call('PERSIST', KEYS[2])
elseif log_type == 'none' or log_ttl >= 0 then
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local wanted = expire_at - now_ms + tonumber(ARGV[4])
  if log_type == 'none' or log_ttl < wanted then redis.call('PEXPIRE', KEYS[2], wanted) end
end
return id
"""

# KEYS: entry, log, hits. ARGV: digest, log max length. Returns 1 if an entry was deleted.
_DELETE_SCRIPT = """
redis.call('DEL', KEYS[3])
local removed = redis.call('DEL', KEYS[1])
if removed == 1 then
  local log_type = redis.call('TYPE', KEYS[2])
  if type(log_type) == 'table' then log_type = log_type['ok'] end
  if log_type == 'stream' then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'o', 'd', 'k', ARGV[1])
  end
end
return removed
"""

# KEYS: entry, log, hits. ARGV: digest, log max length, sha1 of the payload (`j`) the entry must still hold.
# Used by clear(namespace) after checking that payload's namespace: an entry rewritten meanwhile is left alone.
_DELETE_IF_SCRIPT = """
local payload = redis.call('HGET', KEYS[1], 'j')
if not payload or redis.sha1hex(payload) ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[3])
redis.call('DEL', KEYS[1])
local log_type = redis.call('TYPE', KEYS[2])
if type(log_type) == 'table' then log_type = log_type['ok'] end
if log_type == 'stream' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'o', 'd', 'k', ARGV[1])
end
return 1
"""

# KEYS: entry, hits. ARGV: now. The counters live beside the entry, not in it: changing an indexed hash makes
# the search module re-insert its vector (about a millisecond at 384 dimensions). They get the entry's TTL, and
# nothing is created for an entry that is gone.
_RECORD_HIT_SCRIPT = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return 0 end
redis.call('HINCRBY', KEYS[2], 'h', 1)
redis.call('HSET', KEYS[2], 't', ARGV[1])
if ttl >= 0 then redis.call('PEXPIRE', KEYS[2], ttl) else redis.call('PERSIST', KEYS[2]) end
return 1
"""


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


_SCRIPTS = {name: (text, _sha1(text)) for name, text in
            (("set", _SET_SCRIPT), ("delete", _DELETE_SCRIPT), ("record_hit", _RECORD_HIT_SCRIPT))}  # fmt: skip

# Payload fields left out when they hold what entry_from_dict assumes for a missing field (saves bytes per entry).
_PAYLOAD_DEFAULTS: dict[str, Any] = {"namespace": "default", "embedder": None, "expires_at": None, "metadata": {},
                                     "compute_seconds": None, "tokens": None, "min_similarity": 0.0}  # fmt: skip

_PLAIN_PARTITION = re.compile(r"[A-Za-z0-9_-]{1,128}")  # a partition id that is its own TAG value
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_VECTOR_FIELD = re.compile(rb"v([0-9]+)")
_TAG_DIGEST_HEX = 32  # 128 bits of sha256: tag values that no two namespaces or partitions share in practice


def namespace_tag(namespace: str) -> str:
    """The namespace's TAG value: 128 bits of its sha256, so any namespace is a safe TAG. Search results and
    `clear` are still checked against the entry's own namespace; the tag only selects candidates. The ``:``
    keeps it apart from every partition's TAG value (a partition id never contains one)."""
    return "n:" + hashlib.sha256(namespace.encode()).hexdigest()[:_TAG_DIGEST_HEX]


def legacy_namespace_tag(namespace: str) -> str:
    """The 32-bit namespace tag written before 128-bit tags: still matched, so older entries stay found (many
    namespaces share one, hence the exact check of every candidate's namespace)."""
    return "n" + hashlib.blake2b(namespace.encode(), digest_size=4).hexdigest()


def partition_tag(partition: str) -> str:
    """The partition's TAG value: the id itself when it is plain (the engine's 32 hex digits, unchanged from
    before), else 128 bits of its sha256. The search module trims whitespace from TAG values and cuts them at
    a NUL byte, so an id like " a" or "a\\x00b" could not be told from "a" as a TAG."""
    if _PLAIN_PARTITION.fullmatch(partition):
        return partition
    return "p:" + hashlib.sha256(partition.encode()).hexdigest()[:_TAG_DIGEST_HEX]


def _legacy_partition_tags(partition: str) -> list[str]:
    """TAG values older entries of `partition` may carry besides partition_tag(partition): the raw id, written
    before digests were used for ids that are not plain (such entries were findable only without a NUL or
    surrounding whitespace)."""
    if partition_tag(partition) == partition or "\x00" in partition or partition != partition.strip():
        return []
    return [partition]


def scope_tags(partition: str, namespace: str) -> str:
    """The ``s`` field: the partition's and the namespace's tags, one TAG field (one hash field less per entry)."""
    return f"{partition_tag(partition)},{namespace_tag(namespace)}"


def scope_filter(partition: str | None, namespace: str | None) -> tuple[str, list[str]]:
    """The FT.SEARCH prefilter selecting `partition` and/or `namespace` (current and legacy tags), and its
    PARAMS (name, value, ...). Values only ever travel as PARAMS: no escaping, any character is safe."""
    clauses: list[str] = []
    params: list[str] = []
    for letter, tags in (
        ("p", None if partition is None else [partition_tag(partition), *_legacy_partition_tags(partition)]),
        ("n", None if namespace is None else [namespace_tag(namespace), legacy_namespace_tag(namespace)]),
    ):
        if tags is None:
            continue
        names = [f"{letter}{position}" for position in range(len(tags))]
        clauses.append("@s:{" + " | ".join(f"${name}" for name in names) + "}")
        for name, tag in zip(names, tags, strict=True):
            params.extend((name, tag))
    return (f"({' '.join(clauses)})" if clauses else "*"), params


def _params_arguments(params: Sequence[Any]) -> list[Any]:
    return ["PARAMS", str(len(params)), *params] if params else []


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)


def _format_id(stream_id: tuple[int, int]) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


class _CorruptEntry(Exception):
    """Data under the prefix that is not an entry this backend wrote."""


class _Replica(PartitionIndex):
    """One partition's vectors of one dimension as this process last saw them, and its changelog position."""

    def __init__(self, namespace: str, index_factory: IndexFactory) -> None:
        super().__init__(namespace, index_factory)
        self.last_id: tuple[int, int] | None = None  # None: the log did not exist at the last look


@dataclass
class _Fetched:
    """A candidate as read from Redis: its hash fields, or the error reading it."""

    fields: dict[bytes, bytes] | None
    error: BaseException | None = None


class RedisBackend(StorageBackend):
    """A StorageBackend on Redis: shared by every process that points at the same server and prefix.

    url: ``redis://[:password@]host:port/db``, ``rediss://`` for TLS, or an existing ``redis.asyncio.Redis`` /
        ``RedisCluster`` client (created with ``decode_responses=False``; the backend never closes a client
        it did not create).
    prefix: every key this backend writes starts with it; two caches with different prefixes are separate.
    index: ``"search"`` uses the server's vector search (Redis 8, Redis Stack, Redis Cloud); ``"client"`` works
        on any Redis >= 6.2 or Valkey (a local flat index per queried partition, synced through a changelog);
        ``"auto"`` picks ``search`` when the server has it (and is not a cluster), else ``client``.
    cluster: connect to a Redis Cluster (None: detect from the server).
    socket_timeout / connect_timeout: seconds; keep them below the cache's `timeout`.
    breaker_failures / breaker_cooldown: after that many consecutive connection failures, calls fail at once
        (the cache serves misses) for `breaker_cooldown` seconds before one call probes the server again.
    log_length: approximate length each partition's changelog is trimmed to; a process that falls further
        behind resyncs its local index with SCAN.
    local_partitions: in client mode, how many partitions' local indexes one process keeps (least recently
        queried dropped first).
    hnsw_m / hnsw_ef_construction / hnsw_ef_runtime: the search index's HNSW parameters (used for partitions
        large enough to be searched through the graph; smaller ones are searched exactly). EF_RUNTIME trades
        latency for recall: on 100k random 384-d vectors, 20 finds the true neighbour 58% of the time (0.3 ms),
        100 95% (0.7 ms), 200 99% (1.1 ms); real embeddings, being clustered, do better.
    hnsw_min_entries: in client mode, a local partition index larger than this moves from exact flat search
        to an HNSW graph (built in the background; needs the `hnsw` extra); None keeps it flat.

    The URL's query string may also carry ``prefix``, ``index`` and ``cluster`` (keyword arguments win); the rest
    of it goes to redis-py (e.g. ``?ssl_ca_certs=/path/ca.pem``).

    Entries returned by `find_similar`/`find_nearest` carry everything stored except the hit counters
    (`hits` 0, `last_hit_at` None): those live in a key of their own and reading them would cost every search a
    round trip. `get` and `iterate` return them.

    Partition ids and namespaces may be any text (a partition id without braces, commas or colons, which the
    keys use); they reach the search module only as query PARAMS and TAG values as digests where needed. Its
    index cannot hold a key with a NUL byte: with ``index="search"`` a partition whose id has one is searched
    through its changelog, and a search without a partition does not see it.
    """

    def __init__(
        self,
        url: str | Client = "redis://localhost:6379/0",
        *,
        prefix: str | None = None,
        index: IndexMode | None = None,
        cluster: bool | None = None,
        socket_timeout: float = 2.0,
        connect_timeout: float = 1.0,
        max_connections: int = 64,
        breaker_failures: int = 3,
        breaker_cooldown: float = 2.0,
        log_length: int = 10_000,
        local_partitions: int = 1024,
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 200,
        hnsw_ef_runtime: int = 100,
        hnsw_min_entries: int | None = DEFAULT_HNSW_MIN_ENTRIES,
        **renamed: Any,
    ) -> None:
        hnsw_min_entries = renamed_min_entries(hnsw_min_entries, renamed, "local_hnsw_threshold")
        if isinstance(url, str):
            from semantic_llm_cache.backends.url import check_redis_url  # url.py builds this class lazily

            check_redis_url(url)  # a bad port, database or option is an error now, not at first use
            url, url_options = _own_url_options(url)
            prefix = prefix if prefix is not None else url_options.get("prefix")
            index = index if index is not None else url_options.get("index")  # type: ignore[assignment]
            if cluster is None and "cluster" in url_options:
                cluster = _flag(url_options["cluster"])
        prefix = "slc:" if prefix is None else prefix
        index = "auto" if index is None else index
        if index not in ("auto", "search", "client"):
            raise ConfigurationError(f'index must be "auto", "search" or "client", got {index!r}')
        if not isinstance(prefix, str) or not prefix or any(char in prefix for char in "{}*?[]\\"):
            raise ConfigurationError(f"prefix must be a non-empty string without braces or glob characters: {prefix!r}")
        for name, value in (("socket_timeout", socket_timeout), ("connect_timeout", connect_timeout)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
        counts = {
            "max_connections": max_connections,
            "log_length": log_length,
            "local_partitions": local_partitions,
            "hnsw_m": hnsw_m,
            "hnsw_ef_construction": hnsw_ef_construction,
            "hnsw_ef_runtime": hnsw_ef_runtime,
        }
        for name, count in counts.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {count!r}")
        self.prefix = prefix
        self.index_requested: IndexMode = index
        self.log_length = log_length
        self.local_partitions = local_partitions
        self.hnsw = {"M": hnsw_m, "EF_CONSTRUCTION": hnsw_ef_construction, "EF_RUNTIME": hnsw_ef_runtime}
        self.breaker = CircuitBreaker("Redis", breaker_failures, breaker_cooldown, breaker_cooldown, logger)
        self._cluster = cluster
        self._client_options: dict[str, Any] = {
            "socket_timeout": float(socket_timeout),
            "socket_connect_timeout": float(connect_timeout),
            "max_connections": max_connections,
        }
        if isinstance(url, str):
            if not url.startswith(("redis://", "rediss://", "unix://")):
                raise ConfigurationError(f"url must start with redis://, rediss:// or unix://, got {url!r}")
            self._url: str | None = url
            self._given_client: Client | None = None
        else:
            self._url = None
            self._given_client = url
            if self._connection_kwargs(url).get("decode_responses"):
                raise ConfigurationError(
                    "the Redis client must be created with decode_responses=False (vectors are bytes)"
                )
            if cluster is None:
                self._cluster = isinstance(url, RedisCluster)
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Client] = weakref.WeakKeyDictionary()
        self._connect_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._rebuilds: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Future[_Replica]]
        ] = weakref.WeakKeyDictionary()
        self._mode: Literal["search", "client"] | None = None
        self._server: str | None = None  # "redis" or "valkey"
        self._server_version: str | None = None
        self._indexed_dimensions: set[int] = set()
        self._filter_sizes: dict[tuple[int, str, tuple[str, ...]], tuple[int, int, float]] = {}
        self._local: PartitionIndexes[tuple[str, int], _Replica] = PartitionIndexes(
            _Replica, hnsw_min_entries, keep_empty=True, capacity=local_partitions
        )
        self._local_lock = threading.Lock()
        self._counter_lock = threading.Lock()
        self._counters: dict[str, int] = dict.fromkeys(
            ("errors", "corrupt_skipped", "stale_dropped", "resyncs", "log_replays", "log_records_applied"), 0
        )
        self._closed = False

    # -- connection, errors, circuit breaker -------------------------------------------------------------

    @staticmethod
    def _connection_kwargs(client: Client) -> dict[str, Any]:
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            return dict(getattr(pool, "connection_kwargs", {}) or {})
        getter = getattr(client, "get_connection_kwargs", None)
        return dict(getter()) if callable(getter) else {}

    def _count(self, name: str, amount: int = 1) -> None:
        with self._counter_lock:
            self._counters[name] = self._counters.get(name, 0) + amount

    def _make_client(self, cluster: bool) -> Client:
        assert self._url is not None
        options = dict(self._client_options)
        retry = Retry(ExponentialBackoff(cap=0.05, base=0.01), 1)  # one quick retry: a pooled socket gone stale
        if cluster:
            return RedisCluster.from_url(self._url, decode_responses=False, retry=retry, **options)
        pool = aioredis.BlockingConnectionPool.from_url(
            self._url, decode_responses=False, retry=retry, timeout=None, protocol=2, **options
        )
        return aioredis.Redis(connection_pool=pool)

    async def _connect(self) -> Client:
        if self._given_client is not None:
            return self._given_client
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is not None:
            return client
        lock = self._connect_locks.setdefault(loop, asyncio.Lock())
        async with lock:
            client = self._clients.get(loop)
            if client is not None:
                return client
            cluster = self._cluster
            if cluster is None:
                probe = self._make_client(cluster=False)
                try:
                    info = await probe.info("cluster")
                    cluster = bool(int(info.get("cluster_enabled", 0)))
                finally:
                    await _close_client(probe)
                self._cluster = cluster
            client = self._make_client(cluster)
            self._clients[loop] = client
            return client

    async def _ready(self) -> Client:
        client = await self._connect()
        if self._mode is None:
            self._mode = await self._detect_mode(client)
        return client

    async def _detect_mode(self, client: Client) -> Literal["search", "client"]:
        info = await client.info("server")
        if isinstance(info, dict) and info and all(isinstance(value, dict) for value in info.values()):
            info = next(iter(info.values()))  # a cluster answers per node
        if isinstance(info, dict):
            # Valkey names itself in server_name and reports redis_version 7.2.4 for compatibility: its own
            # version is valkey_version.
            self._server = str(info.get("server_name") or "redis")
            self._server_version = str(info.get("valkey_version", info.get("redis_version", "unknown")))
        if self.index_requested == "client":
            return "client"
        if self._cluster:
            if self.index_requested == "search":
                raise ConfigurationError('index="search" is not supported on Redis Cluster; use "client" or "auto"')
            return "client"
        try:
            await client.execute_command("FT._LIST")
        except ResponseError as exc:
            if self.index_requested == "search":
                server = f"; this {self._server} {self._server_version} server has none" if self._server else ""
                raise ConfigurationError(
                    f'index="search" needs the Redis query engine (Redis 8, Redis Stack or Redis Cloud){server}; '
                    f'index="client" works on any server: {exc}'
                ) from exc
            return "client"
        return "search"

    async def _run(self, operation: Callable[[Client], Awaitable[T]]) -> T:
        """Run one backend operation: circuit breaker, connection and error translation around it."""
        if self._closed:
            raise CacheBackendError("the Redis backend is closed")
        probe = self.breaker.before_call()
        settled = False
        try:
            async with self._slot():
                client = await self._ready()
                result = await operation(client)
        except _CONNECTION_ERRORS as exc:
            settled = True
            self.breaker.failure(exc)
            self._indexed_dimensions.clear()  # the server may come back empty: create the indexes again
            self._count("errors")
            raise CacheBackendError(f"Redis unreachable: {type(exc).__name__}: {exc}") from exc
        except RedisError as exc:
            settled = True
            self.breaker.success()  # the server answered: it is up
            self._count("errors")
            raise CacheBackendError(f"Redis error: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            if not settled:
                self.breaker.abandon(probe)
            raise
        settled = True
        self.breaker.success()
        return result

    def _slot(self) -> asyncio.Semaphore:
        """At most `max_connections` operations in flight per event loop: a cluster client's pools do not wait
        for a free connection, they fail (and a failure to connect must not open the circuit breaker)."""
        loop = asyncio.get_running_loop()
        slots = self._slots.get(loop)
        if slots is None:
            slots = self._slots[loop] = asyncio.Semaphore(self._client_options["max_connections"])
        return slots

    @staticmethod
    async def _execute(pipe: Any) -> list[Any]:
        """Run a pipeline; per-command errors come back in place (a WRONGTYPE on foreign data is no crash)."""
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, _CONNECTION_ERRORS):
                raise reply
        return replies

    async def _script(self, client: Client, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        text, sha = _SCRIPTS[name]
        try:
            return await client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(text, len(keys), *keys, *args)

    # -- keys -------------------------------------------------------------------------------------------

    def _split(self, key: str) -> tuple[str, str]:
        if not isinstance(key, str):
            raise InvalidInputError(f"key must be a string, got {type(key).__name__}")
        partition, separator, digest = key.partition(":")
        if not partition or not separator or not digest:
            raise InvalidInputError(f"not a cache key (expected '<partition>:<digest>'): {key!r}")
        if any(char in partition for char in "{},"):
            raise InvalidInputError(f"partition ids may not contain braces or commas: {partition!r}")
        return partition, digest

    def _entry_key(self, partition: str, digest: str) -> str:
        return f"{self.prefix}e:{{{partition}}}:{digest}"

    def _hits_key(self, partition: str, digest: str) -> str:
        return f"{self.prefix}h:{{{partition}}}:{digest}"

    def _log_key(self, partition: str) -> str:
        return f"{self.prefix}log:{{{partition}}}"

    def _index_name(self, dimension: int) -> str:
        return f"{self.prefix}idx:{INDEX_SCHEMA_VERSION}:{dimension}"

    def _parse_entry_key(self, redis_key: bytes | str) -> tuple[str, str] | None:
        text = redis_key.decode(errors="replace") if isinstance(redis_key, bytes) else redis_key
        head = f"{self.prefix}e:{{"
        if not text.startswith(head):
            return None
        partition, separator, digest = text[len(head) :].partition("}:")
        if not partition or not separator or not digest:
            return None
        return partition, digest

    # -- encoding ---------------------------------------------------------------------------------------

    @staticmethod
    def _encode(entry: CacheEntry) -> dict[str, Any]:
        payload = entry_to_dict(entry, include_vector=False)
        for name in ("partition_id", "hits", "last_hit_at"):
            payload.pop(name, None)
        for name, default in _PAYLOAD_DEFAULTS.items():  # what entry_from_dict fills in costs no bytes here
            if name in payload and payload[name] == default and type(payload[name]) is type(default):
                del payload[name]
        fields: dict[str, Any] = {
            "s": scope_tags(entry.partition_id, entry.namespace),
            "j": json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")),
        }
        if entry.embedding is not None:
            fields[f"v{entry.embedding.size}"] = vector_to_bytes(entry.embedding)
        return fields

    @staticmethod
    def _decode(partition: str, fields: dict[bytes, bytes]) -> CacheEntry:
        """Rebuild an entry from its hash; raise _CorruptEntry for anything this backend did not write."""
        try:
            if fields[b"s"].partition(b",")[0].decode() not in (partition_tag(partition), partition):
                raise ValueError("partition field does not match the key")  # (the raw id: an older entry)
            data = json.loads(fields[b"j"])
            if not isinstance(data, dict):
                raise ValueError("payload is not a JSON object")
            data["partition_id"] = partition
            embedding = None
            for name, value in fields.items():
                match = _VECTOR_FIELD.fullmatch(name)
                if match is not None:
                    if embedding is not None:
                        raise ValueError("more than one vector field")
                    embedding = vector_from_bytes(value, int(match.group(1)))
            return entry_from_dict(data, embedding)
        except (KeyError, TypeError, ValueError, UnicodeDecodeError, OverflowError) as exc:
            raise _CorruptEntry(f"{type(exc).__name__}: {exc}") from exc

    def _live_entry(self, partition: str, fields: Any, now: float, hits: Any = None) -> CacheEntry | None:
        """The entry in `fields` (a HGETALL reply), or None when missing, expired or corrupt (counted).

        `hits` is the HGETALL reply of the entry's counters, when read.
        """
        if not fields:
            return None
        if not isinstance(fields, dict):
            self._count("corrupt_skipped")
            return None
        try:
            entry = self._decode(partition, fields)
        except _CorruptEntry as exc:
            self._count("corrupt_skipped")
            logger.debug("skipping corrupt entry in partition %s: %s", partition, exc)
            return None
        if entry.is_expired(now):
            return None
        if hits:
            self._apply_hits(entry, hits)
        return entry

    def _apply_hits(self, entry: CacheEntry, hits: Any) -> None:
        """Copy the counters onto `entry`; counters that are not ours are ignored (and counted)."""
        try:
            if not isinstance(hits, dict):
                raise TypeError("not a hash")
            count = int(hits.get(b"h", 0))
            last_hit_at = float(hits[b"t"]) if b"t" in hits else None
        except (TypeError, ValueError, OverflowError):
            self._count("corrupt_skipped")
            return
        entry.hits = max(0, count)
        entry.last_hit_at = last_hit_at

    # -- the contract -----------------------------------------------------------------------------------

    async def get(self, key: str) -> CacheEntry | None:
        partition, digest = self._split(key)

        async def operation(client: Client) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.hgetall(self._entry_key(partition, digest))
            pipe.hgetall(self._hits_key(partition, digest))
            return await self._execute(pipe)

        fields, hits = await self._run(operation)
        if isinstance(fields, BaseException):  # WRONGTYPE: something foreign under our prefix
            self._count("corrupt_skipped")
            return None
        return self._live_entry(partition, fields, time.time(), hits)

    async def set(self, key: str, entry: CacheEntry) -> None:
        partition, digest = self._split(key)
        if entry.partition_id != partition:
            raise InvalidInputError(
                f"entry of partition {entry.partition_id!r} stored under key {key!r} of partition {partition!r}"
            )
        if entry.is_expired():
            await self.delete(key)
            return
        fields = self._encode(entry)
        arguments: list[Any] = [
            digest,
            "" if entry.expires_at is None else int(entry.expires_at * 1000),
            self.log_length,
            _LOG_GRACE_MS,
            int(entry.hits),
            "" if entry.last_hit_at is None else repr(float(entry.last_hit_at)),
        ]
        for name, value in fields.items():
            arguments.extend((name, value))
        keys = (self._entry_key(partition, digest), self._log_key(partition), self._hits_key(partition, digest))

        async def operation(client: Client) -> None:
            if self._mode == "search" and entry.embedding is not None:
                await self._ensure_index(client, int(entry.embedding.size))
            await self._script(client, "set", keys, arguments)

        await self._run(operation)

    async def delete(self, key: str) -> bool:
        partition, digest = self._split(key)
        keys = (self._entry_key(partition, digest), self._log_key(partition), self._hits_key(partition, digest))

        async def operation(client: Client) -> bool:
            return bool(await self._script(client, "delete", keys, (digest, self.log_length)))

        return await self._run(operation)

    async def clear(self, namespace: str | None = None) -> None:
        if namespace is None:

            async def clear_all(client: Client) -> None:
                batch: list[bytes] = []
                async for redis_key in self._scan(client, f"{_glob_escape(self.prefix)}*"):
                    batch.append(redis_key)
                    if len(batch) >= _BATCH:
                        await self._unlink(client, batch)
                        batch = []
                if batch:
                    await self._unlink(client, batch)

            await self._run(clear_all)
            with self._local_lock:
                self._local.clear()
            return

        tags = tuple(f",{tag}".encode() for tag in (namespace_tag(namespace), legacy_namespace_tag(namespace)))

        async def clear_namespace(client: Client) -> None:
            async for chunk in self._scan_chunks(client, f"{_glob_escape(self.prefix)}e:*"):
                pipe = client.pipeline(transaction=False)
                for redis_key in chunk:
                    pipe.hmget(redis_key, "s", "j")
                replies = await self._execute(pipe)
                doomed: list[tuple[str, str, str]] = []
                for redis_key, reply in zip(chunk, replies, strict=True):
                    if isinstance(reply, BaseException) or not isinstance(reply[0], bytes):
                        continue  # not an entry hash
                    if not reply[0].endswith(tags) or (parsed := self._parse_entry_key(redis_key)) is None:
                        continue  # the tag selects candidates only: the payload's namespace decides
                    if self._payload_namespace(reply[1]) == namespace:
                        doomed.append((*parsed, hashlib.sha1(reply[1]).hexdigest()))
                if doomed:
                    pipe = client.pipeline(transaction=False)
                    for partition, digest, payload_sha in doomed:
                        pipe.eval(_DELETE_IF_SCRIPT, 3, self._entry_key(partition, digest), self._log_key(partition),
                                  self._hits_key(partition, digest), digest, self.log_length, payload_sha)  # fmt: skip
                    await self._execute(pipe)

        await self._run(clear_namespace)

    def _payload_namespace(self, payload: Any) -> str | None:
        """The namespace in an entry's JSON payload (missing: the default); None when it is no payload of ours."""
        try:
            data = json.loads(payload) if isinstance(payload, bytes) else None
        except (ValueError, UnicodeDecodeError):
            data = None
        namespace = data.get("namespace", _PAYLOAD_DEFAULTS["namespace"]) if isinstance(data, dict) else None
        if not isinstance(namespace, str):
            self._count("corrupt_skipped")
            return None
        return namespace

    async def iterate(self, namespace: str | None = None) -> list[tuple[str, CacheEntry]]:
        async def operation(client: Client) -> list[tuple[str, CacheEntry]]:
            found: list[tuple[str, CacheEntry]] = []
            async for partition, digest, entry in self._scan_entries(client):
                if namespace is None or entry.namespace == namespace:
                    found.append((f"{partition}:{digest}", entry))
            return found

        return await self._run(operation)

    async def _find_nearest(
        self, query: Vector, threshold: float, k: int, namespace: str | None, partition: str | None
    ) -> list[Match]:
        if partition is not None and any(char in partition for char in "{},"):
            return []

        async def operation(client: Client) -> list[Match]:
            if self._mode == "search" and (partition is None or "\x00" not in partition):
                return await self._search_server(client, query, threshold, k, namespace, partition)
            # The search module does not index a key with a NUL byte (its FILTER reads the key as a C string): a
            # partition whose id has one is searched through its changelog, which both modes write, as in client
            # mode. (A search without a partition, which the engine never makes, does not see such entries.)
            if partition is not None:
                return await self._search_local(client, query, threshold, k, namespace, partition)
            return await self._search_scan(client, query, threshold, k, namespace)

        return await self._run(operation)

    async def record_hit(self, key: str) -> None:
        partition, digest = self._split(key)
        keys = (self._entry_key(partition, digest), self._hits_key(partition, digest))

        async def operation(client: Client) -> None:
            try:
                await self._script(client, "record_hit", keys, (repr(time.time()),))
            except ResponseError:  # foreign data under the key
                self._count("corrupt_skipped")

        await self._run(operation)

    async def get_stats(self) -> dict[str, Any]:
        async def operation(client: Client) -> int:
            size = 0
            async for _ in self._scan(client, f"{_glob_escape(self.prefix)}e:*", kind="hash"):
                size += 1
            return size

        size = await self._run(operation)
        with self._local_lock:
            local_vectors = self._local.vectors
            local_partitions = len(self._local)
        with self._counter_lock:
            counters = dict(self._counters)
        return {
            "backend": "redis",
            "size": size,
            "index": self._mode,
            "index_requested": self.index_requested,
            "cluster": bool(self._cluster),
            "server": self._server,
            "server_version": self._server_version,
            "prefix": self.prefix,
            "circuit": self.breaker.state,
            "circuit_opened": self.breaker.opened,
            "short_circuits": self.breaker.short_circuits,
            "local_partitions": local_partitions,
            "local_vectors": local_vectors,
            **counters,
        }

    async def close(self) -> None:
        """Close the connections this backend opened (a client passed in is left to its owner)."""
        self._closed = True
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            try:
                await _close_client(client)
            except Exception as exc:  # a client of another, finished loop cannot always close cleanly
                logger.debug("closing a Redis client failed: %s", exc)
        with self._local_lock:
            self._local.clear()

    async def destroy(self) -> None:
        """Delete every key under the prefix and drop this prefix's search indexes (tests, teardown)."""

        async def drop_indexes(client: Client) -> None:
            if self._mode != "search":
                return
            names = await client.execute_command("FT._LIST")
            for name in names:
                text = name.decode() if isinstance(name, bytes) else str(name)
                if text.startswith(f"{self.prefix}idx:"):
                    await client.execute_command("FT.DROPINDEX", text)
            self._indexed_dimensions.clear()

        await self._run(drop_indexes)
        await self.clear()

    @property
    def mode(self) -> Literal["search", "client"] | None:
        """The index mode in use (None until the first call has reached the server)."""
        return self._mode

    # -- scanning ---------------------------------------------------------------------------------------

    async def _scan(
        self, client: Client, match: str, kind: str | None = None, node: Any = None
    ) -> AsyncIterator[bytes]:
        """Every key matching `match` (SCAN; on a cluster, on every primary or on `node`)."""
        if not self._cluster:
            cursor = 0
            while True:
                cursor, keys = await client.scan(cursor=cursor, match=match, count=_SCAN_COUNT, _type=kind)
                for redis_key in keys:
                    yield redis_key
                if int(cursor) == 0:
                    return
        nodes = [node] if node is not None else client.get_primaries()
        for target in nodes:
            cursor = 0
            while True:
                cursors, keys = await client.scan(
                    cursor=cursor, match=match, count=_SCAN_COUNT, _type=kind, target_nodes=target
                )
                for redis_key in keys:
                    yield redis_key
                cursor = int(cursors[target.name]) if isinstance(cursors, dict) else int(cursors)
                if cursor == 0:
                    break

    async def _scan_chunks(self, client: Client, match: str, node: Any = None) -> AsyncIterator[list[bytes]]:
        chunk: list[bytes] = []
        seen: set[bytes] = set()  # SCAN may return a key twice
        async for redis_key in self._scan(client, match, node=node):
            if redis_key in seen:
                continue
            seen.add(redis_key)
            chunk.append(redis_key)
            if len(chunk) >= _BATCH:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    async def _scan_entries(self, client: Client) -> AsyncIterator[tuple[str, str, CacheEntry]]:
        """(partition, digest, entry) for every live, well-formed entry under the prefix."""
        now = time.time()
        async for chunk in self._scan_chunks(client, f"{_glob_escape(self.prefix)}e:*"):
            parsed_keys = [self._parse_entry_key(redis_key) for redis_key in chunk]
            pipe = client.pipeline(transaction=False)
            for redis_key, parsed in zip(chunk, parsed_keys, strict=True):
                pipe.hgetall(redis_key)
                pipe.hgetall(self._hits_key(*parsed) if parsed is not None else redis_key)
            replies = await self._execute(pipe)
            for position, parsed in enumerate(parsed_keys):
                fields, hits = replies[2 * position], replies[2 * position + 1]
                if parsed is None or isinstance(fields, BaseException):
                    self._count("corrupt_skipped")
                    continue
                entry = self._live_entry(parsed[0], fields, now, hits)
                if entry is not None:
                    yield parsed[0], parsed[1], entry

    async def _unlink(self, client: Client, keys: list[bytes]) -> None:
        pipe = client.pipeline(transaction=False)
        for redis_key in keys:  # one command per key: keys of many slots may not share a command on a cluster
            pipe.execute_command("UNLINK", redis_key)
        await pipe.execute(raise_on_error=False)

    # -- index="search" ---------------------------------------------------------------------------------

    async def _ensure_index(self, client: Client, dimension: int) -> None:
        if dimension in self._indexed_dimensions:
            return
        vector_field = f"v{dimension}"
        hnsw = [item for name, value in self.hnsw.items() for item in (name, value)]
        try:
            await client.execute_command(
                "FT.CREATE", self._index_name(dimension), "ON", "HASH", "PREFIX", "1", f"{self.prefix}e:",
                "FILTER", f"exists(@{vector_field})",
                "SCHEMA", "s", "TAG", "SEPARATOR", ",", "CASESENSITIVE",
                vector_field, "VECTOR", "HNSW", str(6 + len(hnsw)), "TYPE", "FLOAT32", "DIM", str(dimension),
                "DISTANCE_METRIC", "COSINE", *hnsw,
            )  # fmt: skip
        except ResponseError as exc:
            if "already exists" not in str(exc).lower():
                raise
        self._indexed_dimensions.add(dimension)

    async def _wait_for_indexing(self, client: Client, dimension: int, limit: float = 2.0) -> None:
        """Give a new index over existing hashes a moment to take them in (it scans them in the background)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            info = await client.execute_command("FT.INFO", self._index_name(dimension))
            if isinstance(info, list):
                info = dict(zip(info[::2], info[1::2], strict=False))
            indexing = info.get(b"indexing", info.get("indexing", 0))
            if not int(float(indexing.decode() if isinstance(indexing, bytes) else indexing)):
                return
            await asyncio.sleep(0.02)

    async def _hybrid_policy(self, client: Client, dimension: int, prefilter: str, params: Sequence[str] = ()) -> str:
        """How the server should combine the partition filter with the vector search.

        Left to itself, the search module brute-forces every document the filter matches when the filter matches
        the whole index (about 1 ms per 10k vectors at 384 dimensions). A large partition is searched faster
        through the HNSW graph in batches, filtered as they come; a small one (or a small share of a large index)
        exactly by brute force. Sizes are counted now and then (an estimate is enough to choose).
        """
        if prefilter == "*":
            return ""
        cache_key = (dimension, prefilter, tuple(params))
        cached = self._filter_sizes.get(cache_key)
        now = time.monotonic()
        if cached is None or now - cached[2] > _FILTER_SIZE_TTL:
            index = self._index_name(dimension)
            pipe = client.pipeline(transaction=False)
            pipe.execute_command("FT.SEARCH", index, prefilter, *_params_arguments(params), "LIMIT", "0", "0",
                                 "DIALECT", "2")  # fmt: skip
            pipe.execute_command("FT.SEARCH", index, "*", "LIMIT", "0", "0", "DIALECT", "2")
            replies = await self._execute(pipe)
            if any(isinstance(reply, BaseException) for reply in replies):
                return ""  # e.g. no index yet: the caller handles that
            cached = (_search_total(replies[0]), _search_total(replies[1]), now)
            self._filter_sizes[cache_key] = cached
        matching, total = cached[0], cached[1]
        if matching >= _BATCHES_MIN_MATCHING and matching * _BATCHES_MIN_SHARE >= total:
            return " HYBRID_POLICY BATCHES"
        return " HYBRID_POLICY ADHOC_BF"

    async def _search_server(
        self,
        client: Client,
        query: Vector,
        threshold: float,
        k: int,
        namespace: str | None,
        partition: str | None,
    ) -> list[Match]:
        dimension = int(query.size)
        prefilter, params = scope_filter(partition, namespace)
        policy = await self._hybrid_policy(client, dimension, prefilter, params)
        blob = vector_to_bytes(query)
        want = k + 2  # room for an expired or corrupt neighbour without a second round trip
        for _ in range(_MAX_SEARCH_ROUNDS):
            command = (
                "FT.SEARCH", self._index_name(dimension),
                f"{prefilter}=>[KNN {want} @v{dimension} $vec{policy} AS __distance]",
                "PARAMS", str(len(params) + 2), *params, "vec", blob,
                "SORTBY", "__distance", "ASC", "LIMIT", "0", str(want), "DIALECT", "2",
            )  # fmt: skip
            try:
                reply = await client.execute_command(*command)
            except ResponseError as exc:
                text = str(exc).lower()
                if "no such index" not in text and "unknown index" not in text:
                    raise
                self._indexed_dimensions.discard(dimension)
                await self._ensure_index(client, dimension)  # e.g. the server restarted empty
                await self._wait_for_indexing(client, dimension)
                reply = await client.execute_command(*command)
            rows = _search_rows(reply)
            now = time.time()
            matches: list[Match] = []
            past_threshold = False  # rows come nearest first: once a valid one falls short, the rest do too
            vector_field = f"v{dimension}".encode()
            for redis_key, row in rows:
                similarity = _similarity_of_blob(row.get(vector_field), query)
                if similarity is not None and similarity < threshold - 1e-6:  # (the exact test follows decoding)
                    past_threshold = True  # decoding an entry that cannot match would be wasted work
                    continue
                parsed = self._parse_entry_key(redis_key)
                fields = {name: value for name, value in row.items() if name != b"__distance"}
                if parsed is None:
                    self._count("corrupt_skipped")
                    continue
                entry = self._live_entry(parsed[0], fields, now)
                if entry is None or entry.embedding is None or entry.embedding.size != dimension:
                    continue
                if (partition is not None and entry.partition_id != partition) or (
                    namespace is not None and entry.namespace != namespace
                ):
                    continue
                similarity = float(np.dot(entry.embedding, query))  # exact, and the same in both modes
                if similarity >= threshold:
                    matches.append((f"{parsed[0]}:{parsed[1]}", entry, similarity))
                else:
                    past_threshold = True
            matches.sort(key=lambda match: match[2], reverse=True)
            if len(matches) >= k or past_threshold or len(rows) < want:
                return matches[:k]
            want *= 4  # skipped rows hid candidates: ask for more
        return matches[:k]

    # -- index="client" ---------------------------------------------------------------------------------

    async def _search_scan(
        self, client: Client, query: Vector, threshold: float, k: int, namespace: str | None
    ) -> list[Match]:
        """Search without a partition: a full scan (the engine always passes a partition)."""
        matches: list[Match] = []
        async for partition, digest, entry in self._scan_entries(client):
            if namespace is not None and entry.namespace != namespace:
                continue
            if entry.embedding is None or entry.embedding.size != query.size:
                continue
            similarity = float(np.dot(entry.embedding, query))
            if similarity >= threshold:
                matches.append((f"{partition}:{digest}", entry, similarity))
        matches.sort(key=lambda match: match[2], reverse=True)
        return matches[:k]

    async def _search_local(
        self,
        client: Client,
        query: Vector,
        threshold: float,
        k: int,
        namespace: str | None,
        partition: str,
    ) -> list[Match]:
        """Search this process's index of the partition, brought up to date from the changelog first.

        In the steady state this is one round trip: the log delta and the candidates' hashes are read in one
        pipeline. A candidate that is gone (expired, evicted) or corrupt is dropped and the next one tried.
        """
        dimension = int(query.size)
        await self._local_state(client, partition, dimension)
        log_key = self._log_key(partition)
        fetched: dict[str, Any] = {}
        log_checked = False

        async def check(state: _Replica, candidates: Found) -> Checked[CacheEntry]:
            nonlocal fetched, log_checked
            last_id = state.last_id
            missing = [digest for digest, _ in candidates if digest not in fetched]
            pipe = client.pipeline(transaction=False)
            if not log_checked:
                pipe.xrange(log_key, min="-" if last_id is None else _format_id(last_id), count=_DELTA_BATCH)
            for digest in missing:
                pipe.hgetall(self._entry_key(partition, digest))
            replies = await self._execute(pipe) if len(pipe) else []
            delta = replies.pop(0) if not log_checked else None
            fetched.update(zip(missing, replies, strict=True))
            if not log_checked:
                log_checked = True
                if isinstance(delta, BaseException):
                    if not isinstance(delta, ResponseError):
                        raise delta
                    self._count("corrupt_skipped")  # something foreign where the log belongs: no delta
                    delta = None
                changed = await self._advance(client, partition, dimension, state, last_id, delta)
                if changed:
                    fetched = {} if "*" in changed else {d: r for d, r in fetched.items() if d not in changed}
                    return SEARCH_AGAIN  # the index changed: search again, fetching only what is new
            now = time.time()
            verdicts: list[CacheEntry | None] = []
            for digest, _ in candidates:
                reply = fetched[digest]
                entry = None
                if isinstance(reply, BaseException):
                    self._count("corrupt_skipped")
                elif not reply:
                    self._count("stale_dropped")  # expired or evicted since it was indexed
                else:
                    entry = self._live_entry(partition, reply, now)
                if entry is not None and (entry.embedding is None or entry.embedding.size != dimension):
                    entry = None
                verdicts.append(entry)
            return verdicts

        found = await self._local.search_async(
            (partition, dimension),
            query,
            k,
            threshold,
            check,
            now=time.time(),
            extra=2,
            lock=self._local_lock,
            check_first=True,  # the first check reads the changelog: an empty index may be behind
        )  # two more candidates: room for a gone or corrupt neighbour without a second round trip
        matches: list[Match] = []
        for digest, entry, _ in found:
            if namespace is not None and entry.namespace != namespace:
                continue
            assert entry.embedding is not None
            similarity = float(np.dot(entry.embedding, query))  # the stored vector, not the local copy
            if similarity >= threshold:
                matches.append((f"{partition}:{digest}", entry, similarity))
        return matches

    async def _local_state(self, client: Client, partition: str, dimension: int) -> _Replica:
        """This process's index of (partition, dimension), built on first use (one build per loop at a time)."""
        key = (partition, dimension)
        with self._local_lock:
            state = self._local.get(key)
            if state is not None:
                return state
        loop = asyncio.get_running_loop()
        builds = self._rebuilds.setdefault(loop, {})
        pending = builds.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Replica] = loop.create_future()
        builds[key] = future
        try:
            state = await self._rebuild(client, partition, dimension)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no warning when nobody else waited
            raise
        else:
            future.set_result(state)
            return state
        finally:
            builds.pop(key, None)

    def _install(self, partition: str, dimension: int, state: _Replica) -> _Replica:
        with self._local_lock:
            self._local.install((partition, dimension), state)
        return state

    async def _rebuild(self, client: Client, partition: str, dimension: int) -> _Replica:
        """Build the local index from the changelog if it holds the whole history, else by SCAN."""
        log_key = self._log_key(partition)
        records: list[Any] = []
        start = "-"
        while True:
            batch = await client.xrange(log_key, min=start, count=_DELTA_BATCH)
            records.extend(batch)
            if len(batch) < _DELTA_BATCH:
                break
            start = "(" + _format_id(_stream_id(batch[-1][0]))
        state = self._local.new("")
        if not records:
            return self._install(partition, dimension, state)  # no log: no live entries
        if _record_op(records[0]) == b"g":
            self._count("log_replays")
            operations = self._fold(records)
            await self._load(client, partition, dimension, state, [d for d, op in operations.items() if op == b"s"])
            state.last_id = _stream_id(records[-1][0])
            return self._install(partition, dimension, state)
        return await self._resync(client, partition, dimension)

    async def _resync(self, client: Client, partition: str, dimension: int) -> _Replica:
        """Rebuild by SCAN of the partition's keys, from the log's current end (it was trimmed past us)."""
        self._count("resyncs")
        log_key = self._log_key(partition)
        tip = await client.xrevrange(log_key, max="+", min="-", count=1)
        state = self._local.new("")
        state.last_id = _stream_id(tip[0][0]) if tip else None
        node = client.get_node_from_key(log_key) if self._cluster else None
        match = f"{_glob_escape(self.prefix)}e:{{{_glob_escape(partition)}}}:*"
        head = len(self._entry_key(partition, ""))
        async for chunk in self._scan_chunks(client, match, node=node):
            digests = [redis_key[head:].decode(errors="replace") for redis_key in chunk]
            await self._load(client, partition, dimension, state, digests)
        return self._install(partition, dimension, state)

    def _fold(self, records: Sequence[Any]) -> dict[str, bytes]:
        """The last operation per digest in a run of log records (corrupt records skipped and counted)."""
        operations: dict[str, bytes] = {}
        for _, values in records:
            op = values.get(b"o") if isinstance(values, dict) else None
            if op == b"g":
                continue
            digest = values.get(b"k") if isinstance(values, dict) else None
            if op not in (b"s", b"d") or not isinstance(digest, bytes) or not digest:
                self._count("corrupt_skipped")
                continue
            operations[digest.decode(errors="replace")] = op
        return operations

    async def _read_vectors(
        self, client: Client, partition: str, dimension: int, digests: Sequence[str]
    ) -> list[tuple[str, Vector | None, float | None]]:
        """(digest, vector, expires_at) as stored now; vector None for an entry gone, corrupt or of another size."""
        field_name = f"v{dimension}"
        loaded: list[tuple[str, Vector | None, float | None]] = []
        for start in range(0, len(digests), _BATCH):
            chunk = digests[start : start + _BATCH]
            pipe = client.pipeline(transaction=False)
            for digest in chunk:
                entry_key = self._entry_key(partition, digest)
                pipe.hget(entry_key, field_name)
                pipe.pttl(entry_key)
            replies = await pipe.execute(raise_on_error=False)
            now = time.time()
            for position, digest in enumerate(chunk):
                blob, ttl = replies[2 * position], replies[2 * position + 1]
                if isinstance(blob, BaseException) or isinstance(ttl, BaseException):
                    self._count("corrupt_skipped")
                    loaded.append((digest, None, None))
                    continue
                if blob is None:
                    loaded.append((digest, None, None))
                    continue
                try:
                    vector = unit_vector_from_bytes(blob, dimension)
                except InvalidInputError:
                    self._count("corrupt_skipped")
                    loaded.append((digest, None, None))
                    continue
                loaded.append((digest, vector, None if int(ttl) < 0 else now + int(ttl) / 1000.0))
        return loaded

    async def _load(
        self, client: Client, partition: str, dimension: int, state: _Replica, digests: Sequence[str]
    ) -> None:
        """Read `digests` into a state not yet installed (nobody else sees it)."""
        for digest, vector, expires_at in await self._read_vectors(client, partition, dimension, digests):
            if vector is None:
                state.discard(digest)
            else:
                state.put(digest, vector, expires_at)

    async def _advance(
        self,
        client: Client,
        partition: str,
        dimension: int,
        state: _Replica,
        last_id: tuple[int, int] | None,
        delta: list[Any] | None,
    ) -> Digests:
        """Apply the log records read from `last_id`, the position of `state` searched; return the digests that
        changed ("*": all).

        `delta` starts at `last_id`, inclusive. When that record is gone the log was trimmed or recreated, and the
        local index is rebuilt.
        """
        if delta is None:
            return set()
        if last_id is None:
            if not delta:
                return set()  # still no log: still no entries
            await self._rebuild(client, partition, dimension)
            return {"*"}
        if not delta or _stream_id(delta[0][0]) != last_id:
            await self._rebuild(client, partition, dimension)
            return {"*"}
        records = list(delta[1:])
        while len(delta) == _DELTA_BATCH:  # a long delta: read the rest
            start = "(" + _format_id(_stream_id(delta[-1][0]))
            delta = await client.xrange(self._log_key(partition), min=start, count=_DELTA_BATCH)
            records.extend(delta)
        if not records:
            return set()
        operations = self._fold(records)
        loaded = await self._read_vectors(
            client, partition, dimension, [d for d, op in operations.items() if op == b"s"]
        )
        vectors = {digest: (vector, expires_at) for digest, vector, expires_at in loaded}
        with self._local_lock:
            current = self._local.get((partition, dimension))
            if current is not state or state.last_id != last_id:
                return set(operations) or {"*"}  # another task moved it on meanwhile
            for digest in operations:
                vector, expires_at = vectors.get(digest, (None, None))
                if vector is None:
                    state.discard(digest)
                else:
                    state.put(digest, vector, expires_at)
            state.last_id = _stream_id(records[-1][0])
        self._count("log_records_applied", len(records))
        return set(operations)


def _record_op(record: Any) -> bytes | None:
    values = record[1] if isinstance(record, (list, tuple)) and len(record) == 2 else None
    return values.get(b"o") if isinstance(values, dict) else None


_OWN_URL_OPTIONS = ("prefix", "index", "cluster")


def _own_url_options(url: str) -> tuple[str, dict[str, str]]:
    """Split this backend's options (prefix, index, cluster) off a URL's query string; the rest is redis-py's."""
    parts = urlsplit(url)
    if not parts.query:
        return url, {}
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _OWN_URL_OPTIONS:
            ours[name] = value
        else:
            theirs.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(theirs))), ours


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"not a yes/no value: {value!r}")


def _glob_escape(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def _similarity_of_blob(blob: Any, query: Vector) -> float | None:
    """Cosine similarity of a stored float32 blob with `query`; None when the blob is not a usable vector."""
    if not isinstance(blob, bytes) or len(blob) != 4 * query.size:
        return None
    vector = np.frombuffer(blob, dtype="<f4")
    norm = float(np.linalg.norm(vector))
    if not norm > 0.0 or not np.isfinite(norm):
        return None
    return float(np.dot(vector, query)) / norm


def _search_total(reply: Any) -> int:
    """The total count of an FT.SEARCH reply, RESP2 or RESP3."""
    if isinstance(reply, dict):
        total: Any = reply.get(b"total_results", reply.get("total_results", 0))
        return int(total)
    return int(reply[0])


def _search_rows(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """(key, fields) rows of an FT.SEARCH reply, RESP2 (flat list) or RESP3 (map)."""
    rows: list[tuple[bytes, dict[bytes, bytes]]] = []
    if isinstance(reply, dict):
        results: list[Any] = reply.get(b"results", reply.get("results")) or []
        for result in results:
            attributes = result.get(b"extra_attributes", result.get("extra_attributes", {})) or {}
            rows.append((result.get(b"id", result.get("id")), dict(attributes)))
        return rows
    items = list(reply[1:])
    for position in range(0, len(items) - 1, 2):
        flat = items[position + 1] or []
        rows.append((items[position], dict(zip(flat[::2], flat[1::2], strict=False))))
    return rows


async def _close_client(client: Client) -> None:
    closer = getattr(client, "aclose", None) or client.close
    await closer()
