"""RedisBackend: one cache shared by many processes on many machines, on plain Redis or Redis with search.

The backend is thin: keys and tags come from layout.py, hashes from codec.py, writes are the scripts of
scripts.py, the connection is connection.py's, and the search is an index strategy
chosen once, when the server first answers: `ServerIndex` (server_index.py) or `ClientReplica` (replica.py).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol, TypeVar

from semantic_llm_cache.backends.redis.codec import encode, live_entry, payload_namespace
from semantic_llm_cache.backends.redis.connection import (
    BATCH,
    Client,
    Connection,
    Counters,
    ResponseError,
    execute,
    flag,
    own_url_options,
    server_identity,
    unlink,
)
from semantic_llm_cache.backends.redis.keyspace import ExactRead, Keyspace
from semantic_llm_cache.backends.redis.layout import KeyLayout, legacy_namespace_tag, namespace_tag
from semantic_llm_cache.backends.redis.replica import ClientReplica
from semantic_llm_cache.backends.redis.scripts import LOG_GRACE_MS, queue_script, run_script
from semantic_llm_cache.backends.redis.server_index import ServerIndex
from semantic_llm_cache.config import CacheEntry, Vector
from semantic_llm_cache.errors import ConfigurationError, InvalidInputError
from semantic_llm_cache.index.auto import DEFAULT_HNSW_MIN_ENTRIES, renamed_min_entries
from semantic_llm_cache.storage import Match, StorageBackend

logger = logging.getLogger("semantic_llm_cache.redis")

IndexMode = Literal["auto", "search", "client"]
T = TypeVar("T")


class IndexStrategy(Protocol):
    """How the backend searches: on the server (`ServerIndex`) or in process (`ClientReplica`)."""

    @property
    def name(self) -> Literal["search", "client"]: ...

    async def prepare_write(self, client: Client, entry: CacheEntry) -> None: ...

    async def find(
        self,
        client: Client,
        query: Vector,
        threshold: float,
        k: int,
        namespace: str | None,
        partition: str | None,
        where: Mapping[str, Any] | None = None,
        exact: ExactRead | None = None,
    ) -> list[Match]: ...

    def forget(self) -> None: ...

    def lost(self) -> None: ...

    async def drop(self, client: Client) -> None: ...

    def stats(self) -> dict[str, Any]: ...


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
    breaker_failures / breaker_cooldown: deprecated, without effect: the engine's circuit breaker guards every
        backend call (a dead or hung server is skipped there, see SemanticCache).
    log_length: approximate length each partition's changelog is trimmed to; a process that falls further
        behind resyncs its local index with SCAN.
    local_partitions: in client mode, how many partitions' local indexes one process keeps (least recently
        queried dropped first).
    hnsw_m / hnsw_ef_construction / hnsw_ef_runtime: the search index's HNSW parameters (used for partitions
        large enough to be searched through the graph; smaller ones are searched exactly), applied when the index
        is created (an existing index keeps its own). EF_CONSTRUCTION 64 (pgvector's default) writes about twice
        as fast as 200 and the cache's range query found the same nearest entries on the Quora questions at
        5,000 and 50,000 entries (benchmarks/redis_index_build.py). EF_RUNTIME trades
        latency for recall: on 100k random 384-d vectors, 20 finds the true neighbour 58% of the time (0.3 ms),
        100 95% (0.7 ms), 200 99% (1.1 ms); real embeddings, being clustered, do better.
    hnsw_min_entries: in client mode, a local partition index larger than this moves from exact flat search
        to an HNSW graph (built in the background; needs the `hnsw` extra), or past 3x that while its exact
        searches stay narrow (AutoIndex); None keeps it flat. (Formerly
        `local_hnsw_threshold`, still accepted for one release.)

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
        breaker_failures: int | None = None,
        breaker_cooldown: float | None = None,
        log_length: int = 10_000,
        local_partitions: int = 1024,
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 64,
        hnsw_ef_runtime: int = 100,
        hnsw_min_entries: int | None = DEFAULT_HNSW_MIN_ENTRIES,
        **renamed: Any,
    ) -> None:
        hnsw_min_entries = renamed_min_entries(hnsw_min_entries, renamed, "local_hnsw_threshold")
        if breaker_failures is not None or breaker_cooldown is not None:
            warnings.warn(
                "RedisBackend's breaker_failures and breaker_cooldown have no effect: the engine's circuit breaker "
                "guards every backend call",
                DeprecationWarning,
                stacklevel=2,
            )
        if isinstance(url, str):
            from semantic_llm_cache.backends.url import check_redis_url  # url.py builds this class lazily

            check_redis_url(url)  # a bad port, database or option is an error now, not at first use
            url, url_options = own_url_options(url)
            prefix = prefix if prefix is not None else url_options.get("prefix")
            index = index if index is not None else url_options.get("index")  # type: ignore[assignment]
            if cluster is None and "cluster" in url_options:
                cluster = flag(url_options["cluster"])
        index = "auto" if index is None else index
        if index not in ("auto", "search", "client"):
            raise ConfigurationError(f'index must be "auto", "search" or "client", got {index!r}')
        layout = KeyLayout("slc:" if prefix is None else prefix)
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
        self.prefix = layout.prefix
        self.index_requested: IndexMode = index
        self.log_length = log_length
        self.local_partitions = local_partitions
        self.hnsw = {"M": hnsw_m, "EF_CONSTRUCTION": hnsw_ef_construction, "EF_RUNTIME": hnsw_ef_runtime}
        counters = Counters()
        self.connection = Connection(
            url,
            cluster=cluster,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            counters=counters,
        )
        self._keyspace = Keyspace(self.connection, layout, counters, log_length)
        self._layout = layout
        self._counters = counters
        replica = ClientReplica(self._keyspace, local_partitions=local_partitions, hnsw_min_entries=hnsw_min_entries)
        self._strategies: dict[str, IndexStrategy] = {
            "client": replica,
            "search": ServerIndex(self._keyspace, self.hnsw, replica),
        }
        self._strategy: IndexStrategy | None = None  # chosen once, when the server first answers
        self._hit_writes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, set[asyncio.Task[None]]]] = (
            weakref.WeakKeyDictionary()
        )
        self._server: str | None = None  # "redis" or "valkey"
        self._server_version: str | None = None

    @property
    def mode(self) -> Literal["search", "client"] | None:
        """The index mode in use (None until the first call has reached the server)."""
        return None if self._strategy is None else self._strategy.name

    # -- one operation ----------------------------------------------------------------------------------

    async def _run(self, operation: Callable[[Client, IndexStrategy], Awaitable[T]]) -> T:
        """Run one operation with this loop's client and the index strategy, its errors translated."""

        async def call() -> T:
            client = await self.connection.client()
            strategy = self._strategy if self._strategy is not None else await self._choose_strategy(client)
            return await operation(client, strategy)

        return await self.connection.run(call, self._lost)

    def _lost(self) -> None:
        if self._strategy is not None:
            self._strategy.lost()

    async def _choose_strategy(self, client: Client) -> IndexStrategy:
        """Pick the index strategy, once: what was asked for, checked against what the server can do."""
        self._server, self._server_version = await server_identity(client)
        chosen = self._strategies[await self._mode_for(client)]
        self._strategy = chosen
        return chosen

    async def _mode_for(self, client: Client) -> Literal["search", "client"]:
        if self.index_requested == "client":
            return "client"
        if self.connection.cluster:
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

    def _entry_keys(self, partition: str, digest: str) -> tuple[str, str, str]:
        """The keys every script takes: entry, log, hits."""
        layout = self._layout
        return layout.entry(partition, digest), layout.log(partition), layout.hits(partition, digest)

    # -- the contract -----------------------------------------------------------------------------------

    async def get(self, key: str) -> CacheEntry | None:
        partition, digest = self._layout.split(key)
        await self._hits_written(key)

        async def operation(client: Client, _: IndexStrategy) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.hgetall(self._layout.entry(partition, digest))
            pipe.hgetall(self._layout.hits(partition, digest))
            return await execute(pipe)

        return self._entry_of(partition, await self._run(operation))

    def _entry_of(self, partition: str, replies: list[Any]) -> CacheEntry | None:
        """The live entry in the HGETALL replies of an entry's hash and its counters."""
        fields, hits = replies
        if isinstance(fields, BaseException):  # WRONGTYPE: something foreign under our prefix
            self._counters.count("corrupt_skipped")
            return None
        return live_entry(partition, fields, time.time(), self._counters, hits)

    async def _get_and_candidates(
        self,
        key: str,
        query: Vector,
        threshold: float,
        k: int,
        partition: str | None,
        where: Mapping[str, Any] | None,
    ) -> tuple[CacheEntry | None, list[Match]]:
        """The exact read rides in the search's first pipeline: one round trip for both (in the steady state)."""
        key_partition, digest = self._layout.split(key)
        if partition != key_partition or any(char in key_partition for char in "{},"):
            return await super()._get_and_candidates(key, query, threshold, k, partition, where)
        await self._hits_written(key)
        exact = ExactRead(self._layout.entry(key_partition, digest), self._layout.hits(key_partition, digest))

        async def operation(client: Client, strategy: IndexStrategy) -> list[Match]:
            found = await strategy.find(client, query, threshold, k, None, key_partition, where or None, exact)
            if exact.replies is None:  # a search without a pipeline to carry it
                pipe = client.pipeline(transaction=False)
                exact.queue(pipe)
                exact.take(await execute(pipe))
            return found

        found = await self._run(operation)
        assert exact.replies is not None
        return self._entry_of(key_partition, exact.replies), found

    async def set(self, key: str, entry: CacheEntry) -> None:
        partition, digest = self._layout.split(key)
        if entry.partition_id != partition:
            raise InvalidInputError(
                f"entry of partition {entry.partition_id!r} stored under key {key!r} of partition {partition!r}"
            )
        if entry.is_expired():
            await self.delete(key)
            return
        arguments: list[Any] = [
            digest,
            "" if entry.expires_at is None else int(entry.expires_at * 1000),
            self.log_length,
            LOG_GRACE_MS,
            int(entry.hits),
            "" if entry.last_hit_at is None else repr(float(entry.last_hit_at)),
        ]
        for name, value in encode(entry).items():
            arguments.extend((name, value))
        keys = self._entry_keys(partition, digest)

        async def operation(client: Client, strategy: IndexStrategy) -> None:
            await strategy.prepare_write(client, entry)
            await run_script(client, "set", keys, arguments)

        await self._run(operation)

    async def delete(self, key: str) -> bool:
        partition, digest = self._layout.split(key)
        keys = self._entry_keys(partition, digest)

        async def operation(client: Client, _: IndexStrategy) -> bool:
            return bool(await run_script(client, "delete", keys, (digest, self.log_length)))

        return await self._run(operation)

    async def clear(self, namespace: str | None = None) -> None:
        if namespace is None:
            await self._run(self._clear_all)
            return
        tags = tuple(f",{tag}".encode() for tag in (namespace_tag(namespace), legacy_namespace_tag(namespace)))

        async def clear_namespace(client: Client, _: IndexStrategy) -> None:
            async for chunk in self.connection.scan_chunks(client, self._layout.all_entries):
                pipe = client.pipeline(transaction=False)
                for redis_key in chunk:
                    pipe.hmget(redis_key, "s", "j")
                replies = await execute(pipe)
                doomed: list[tuple[str, str, str]] = []
                for redis_key, reply in zip(chunk, replies, strict=True):
                    if isinstance(reply, BaseException) or not isinstance(reply[0], bytes):
                        continue  # not an entry hash
                    if not reply[0].endswith(tags) or (parsed := self._layout.parse_entry(redis_key)) is None:
                        continue  # the tag selects candidates only: the payload's namespace decides
                    if payload_namespace(reply[1], self._counters) == namespace:
                        doomed.append((*parsed, hashlib.sha1(reply[1]).hexdigest()))
                if doomed:
                    pipe = client.pipeline(transaction=False)
                    for partition, digest, payload_sha in doomed:  # deleted only if not rewritten meanwhile
                        arguments = (digest, self.log_length, payload_sha)
                        queue_script(pipe, "delete_if", self._entry_keys(partition, digest), arguments)
                    await execute(pipe)

        await self._run(clear_namespace)

    async def _clear_all(self, client: Client, strategy: IndexStrategy) -> None:
        batch: list[bytes] = []
        async for redis_key in self.connection.scan(client, self._layout.all_keys):
            batch.append(redis_key)
            if len(batch) >= BATCH:
                await unlink(client, batch)
                batch = []
        if batch:
            await unlink(client, batch)
        strategy.forget()

    async def iterate(self, namespace: str | None = None) -> list[tuple[str, CacheEntry]]:
        await self._hits_written()

        async def operation(client: Client, _: IndexStrategy) -> list[tuple[str, CacheEntry]]:
            found: list[tuple[str, CacheEntry]] = []
            async for partition, digest, entry in self._keyspace.scan_entries(client):
                if namespace is None or entry.namespace == namespace:
                    found.append((f"{partition}:{digest}", entry))
            return found

        return await self._run(operation)

    async def _find_nearest(
        self, query: Vector, threshold: float, k: int, namespace: str | None, partition: str | None
    ) -> list[Match]:
        return await self._find(query, threshold, k, namespace, partition, None)

    filters_where = True  # search mode: a TAG pre-filter per field; client mode: more candidates, filtered after
    remote_reads = True  # a lookup's exact read and its search overlap (CacheConfig.overlap_reads)

    async def _find_nearest_where(
        self,
        query: Vector,
        threshold: float,
        k: int,
        namespace: str | None,
        partition: str | None,
        where: Mapping[str, Any],
    ) -> list[Match]:
        return await self._find(query, threshold, k, namespace, partition, where)

    async def _find(
        self,
        query: Vector,
        threshold: float,
        k: int,
        namespace: str | None,
        partition: str | None,
        where: Mapping[str, Any] | None,
    ) -> list[Match]:
        if partition is not None and any(char in partition for char in "{},"):
            return []  # not a partition this backend can hold

        async def operation(client: Client, strategy: IndexStrategy) -> list[Match]:
            return await strategy.find(client, query, threshold, k, namespace, partition, where)

        return await self._run(operation)

    async def record_hit(self, key: str) -> None:
        """Count a hit: the counter is written in the background, off the lookup's path (a served hit costs no
        round trip); this backend's own `get`, `iterate` and `close` wait for the writes made before them."""
        partition, digest = self._layout.split(key)
        keys = (self._layout.entry(partition, digest), self._layout.hits(partition, digest))
        now = repr(time.time())

        async def operation(client: Client, _: IndexStrategy) -> None:
            try:
                await run_script(client, "record_hit", keys, (now,))
            except ResponseError:  # foreign data under the key
                self._counters.count("corrupt_skipped")

        loop = asyncio.get_running_loop()
        writes = self._hit_writes.setdefault(loop, {})
        task = loop.create_task(self._run(operation))
        writes.setdefault(key, set()).add(task)
        task.add_done_callback(functools.partial(_hit_written, writes, key))

    async def _hits_written(self, key: str | None = None) -> None:
        """Wait for this event loop's hit writes (of `key`, or all) started so far."""
        writes = self._hit_writes.get(asyncio.get_running_loop())
        if not writes:
            return
        tasks = list(writes.get(key, ())) if key is not None else [task for ts in writes.values() for task in ts]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def get_stats(self) -> dict[str, Any]:
        async def operation(client: Client, _: IndexStrategy) -> int:
            size = 0
            async for _key in self.connection.scan(client, self._layout.all_entries, kind="hash"):
                size += 1
            return size

        size = await self._run(operation)
        local = self._strategies["client"].stats()
        return {
            "backend": "redis",
            "size": size,
            "index": self.mode,
            "index_requested": self.index_requested,
            "cluster": bool(self.connection.cluster),
            "server": self._server,
            "server_version": self._server_version,
            "prefix": self.prefix,
            **local,
            **self._counters.snapshot(),
        }

    async def close(self) -> None:
        """Close the connections this backend opened (a client passed in is left to its owner)."""
        await self._hits_written()
        await self.connection.close()
        self._strategies["client"].forget()

    async def destroy(self) -> None:
        """Delete every key under the prefix and drop this prefix's search indexes (tests, teardown)."""

        async def drop_indexes(client: Client, strategy: IndexStrategy) -> None:
            await strategy.drop(client)

        await self._run(drop_indexes)
        await self.clear()


def _hit_written(writes: dict[str, set[asyncio.Task[None]]], key: str, task: asyncio.Task[None]) -> None:
    """Forget a finished hit write; its failure (a lost counter, already counted as an error) is only logged."""
    tasks = writes.get(key)
    if tasks is not None:
        tasks.discard(task)
        if not tasks:
            del writes[key]
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.debug("recording a hit failed: %s", error)


__all__ = ["IndexMode", "IndexStrategy", "RedisBackend"]
