"""``index="client"``: a local replica of each queried partition's vectors, kept in step with the changelog.

Each process keeps an index of each (partition, dimension) it queries (a `PartitionIndexes` bounded to
`local_partitions`, least recently queried dropped) and brings it up to date from the partition's changelog
before every search, in the same pipelined round trip that fetches the candidates. A replica is built from the
log when the log holds the whole history (it starts with a genesis record), else by SCAN of the partition's
keys; a process whose position was trimmed from the log rebuilds the same way. No KEYS anywhere. Works on any
Redis >= 6.2 or Valkey, and on a cluster.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from semantic_llm_cache.backends.redis.codec import live_entry, vector_field
from semantic_llm_cache.backends.redis.connection import BATCH, Client, ResponseError, execute
from semantic_llm_cache.backends.redis.keyspace import ExactRead, Keyspace
from semantic_llm_cache.call_options import WHERE_CANDIDATE_FACTOR
from semantic_llm_cache.config import CacheEntry, Vector
from semantic_llm_cache.errors import InvalidInputError
from semantic_llm_cache.index.partitions import SEARCH_AGAIN, Checked, Found, PartitionIndex, PartitionIndexes
from semantic_llm_cache.index.protocol import IndexFactory
from semantic_llm_cache.serialization import unit_vector_from_bytes
from semantic_llm_cache.storage import Match

DELTA_BATCH = 1000  # log records per XRANGE
Digests = set[str]


class Replica(PartitionIndex):
    """One partition's vectors of one dimension as this process last saw them, and its changelog position."""

    def __init__(self, namespace: str, index_factory: IndexFactory) -> None:
        super().__init__(namespace, index_factory)
        self.last_id: tuple[int, int] | None = None  # None: the log did not exist at the last look


class ClientReplica:
    """Search in process, over replicas synced through the changelog."""

    name: Literal["client"] = "client"

    def __init__(self, keyspace: Keyspace, *, local_partitions: int, hnsw_min_entries: int | None) -> None:
        self.keyspace = keyspace
        self.partitions: PartitionIndexes[tuple[str, int], Replica] = PartitionIndexes(
            Replica, hnsw_min_entries, keep_empty=True, capacity=local_partitions
        )
        self._lock = threading.Lock()  # the replicas are shared by every event loop using the backend
        self._rebuilds: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Future[Replica]]
        ] = weakref.WeakKeyDictionary()

    # -- the strategy -------------------------------------------------------------------------------------

    async def prepare_write(self, client: Client, entry: CacheEntry) -> None:
        """Nothing to prepare: the write's changelog record is what other processes read."""

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
    ) -> list[Match]:
        """Live matches of the scope; with `where`, `WHERE_CANDIDATE_FACTOR` times more for the caller to filter.
        `exact`: a lookup's exact read, sent in the first pipeline (with the changelog delta)."""
        if where:
            k *= WHERE_CANDIDATE_FACTOR
        if partition is None:
            return await self.keyspace.search_by_scan(client, query, threshold, namespace)
        return await self._search_partition(client, query, threshold, k, namespace, partition, exact)

    def forget(self) -> None:
        with self._lock:
            self.partitions.clear()

    def lost(self) -> None:
        """Nothing to do: the next search's changelog read finds out what changed."""

    async def drop(self, client: Client) -> None:
        """Nothing on the server belongs to this mode alone."""

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"local_partitions": len(self.partitions), "local_vectors": self.partitions.vectors}

    # -- search -------------------------------------------------------------------------------------------

    async def _search_partition(
        self,
        client: Client,
        query: Vector,
        threshold: float,
        k: int,
        namespace: str | None,
        partition: str,
        exact: ExactRead | None = None,
    ) -> list[Match]:
        """Search this process's index of the partition, brought up to date from the changelog first.

        In the steady state this is one round trip: the log delta and the candidates' hashes are read in one
        pipeline. A candidate that is gone (expired, evicted) or corrupt is dropped and the next one tried.
        """
        dimension = int(query.size)
        await self._local_state(client, partition, dimension)
        log_key = self.keyspace.layout.log(partition)
        fetched: dict[str, Any] = {}
        log_checked = False

        async def check(state: Replica, candidates: Found) -> Checked[CacheEntry]:
            nonlocal fetched, log_checked
            last_id = state.last_id
            missing = [digest for digest, _ in candidates if digest not in fetched]
            pipe = client.pipeline(transaction=False)
            reading = exact if exact is not None and exact.replies is None else None
            if reading is not None:
                reading.queue(pipe)
            if not log_checked:
                pipe.xrange(log_key, min="-" if last_id is None else format_id(last_id), count=DELTA_BATCH)
            for digest in missing:
                pipe.hgetall(self.keyspace.layout.entry(partition, digest))
            replies = await execute(pipe) if len(pipe) else []
            if reading is not None:
                replies = reading.take(replies)
            delta = replies.pop(0) if not log_checked else None
            fetched.update(zip(missing, replies, strict=True))
            if not log_checked:
                log_checked = True
                if isinstance(delta, BaseException):
                    if not isinstance(delta, ResponseError):
                        raise delta
                    self.keyspace.counters.count("corrupt_skipped")  # something foreign where the log belongs: no delta
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
                    self.keyspace.counters.count("corrupt_skipped")
                elif not reply:
                    self.keyspace.counters.count("stale_dropped")  # expired or evicted since it was indexed
                else:
                    entry = live_entry(partition, reply, now, self.keyspace.counters)
                if entry is not None and (entry.embedding is None or entry.embedding.size != dimension):
                    entry = None
                verdicts.append(entry)
            return verdicts

        found = await self.partitions.search_async(
            (partition, dimension),
            query,
            k,
            threshold,
            check,
            now=time.time(),
            extra=2,
            lock=self._lock,
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

    async def _local_state(self, client: Client, partition: str, dimension: int) -> Replica:
        """This process's index of (partition, dimension), built on first use (one build per loop at a time)."""
        key = (partition, dimension)
        with self._lock:
            state = self.partitions.get(key)
            if state is not None:
                return state
        loop = asyncio.get_running_loop()
        builds = self._rebuilds.setdefault(loop, {})
        pending = builds.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Replica] = loop.create_future()
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

    def _install(self, partition: str, dimension: int, state: Replica) -> Replica:
        with self._lock:
            self.partitions.install((partition, dimension), state)
        return state

    async def _rebuild(self, client: Client, partition: str, dimension: int) -> Replica:
        """Build the local index from the changelog if it holds the whole history, else by SCAN."""
        log_key = self.keyspace.layout.log(partition)
        records: list[Any] = []
        start = "-"
        while True:
            batch = await client.xrange(log_key, min=start, count=DELTA_BATCH)
            records.extend(batch)
            if len(batch) < DELTA_BATCH:
                break
            start = "(" + format_id(stream_id(batch[-1][0]))
        state = self.partitions.new("")
        if not records:
            return self._install(partition, dimension, state)  # no log: no live entries
        if _record_op(records[0]) == b"g":
            self.keyspace.counters.count("log_replays")
            operations = self._fold(records)
            await self._load(client, partition, dimension, state, [d for d, op in operations.items() if op == b"s"])
            state.last_id = stream_id(records[-1][0])
            return self._install(partition, dimension, state)
        return await self._resync(client, partition, dimension)

    async def _resync(self, client: Client, partition: str, dimension: int) -> Replica:
        """Rebuild by SCAN of the partition's keys, from the log's current end (it was trimmed past us)."""
        self.keyspace.counters.count("resyncs")
        log_key = self.keyspace.layout.log(partition)
        tip = await client.xrevrange(log_key, max="+", min="-", count=1)
        state = self.partitions.new("")
        state.last_id = stream_id(tip[0][0]) if tip else None
        node = client.get_node_from_key(log_key) if self.keyspace.connection.cluster else None
        match = self.keyspace.layout.partition_entries(partition)
        head = len(self.keyspace.layout.entry(partition, ""))
        async for chunk in self.keyspace.connection.scan_chunks(client, match, node=node):
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
                self.keyspace.counters.count("corrupt_skipped")
                continue
            operations[digest.decode(errors="replace")] = op
        return operations

    async def _read_vectors(
        self, client: Client, partition: str, dimension: int, digests: Sequence[str]
    ) -> list[tuple[str, Vector | None, float | None]]:
        """(digest, vector, expires_at) as stored now; vector None for an entry gone, corrupt or of another size."""
        field_name = vector_field(dimension)
        loaded: list[tuple[str, Vector | None, float | None]] = []
        for start in range(0, len(digests), BATCH):
            chunk = digests[start : start + BATCH]
            pipe = client.pipeline(transaction=False)
            for digest in chunk:
                entry_key = self.keyspace.layout.entry(partition, digest)
                pipe.hget(entry_key, field_name)
                pipe.pttl(entry_key)
            replies = await pipe.execute(raise_on_error=False)
            now = time.time()
            for position, digest in enumerate(chunk):
                blob, ttl = replies[2 * position], replies[2 * position + 1]
                if isinstance(blob, BaseException) or isinstance(ttl, BaseException):
                    self.keyspace.counters.count("corrupt_skipped")
                    loaded.append((digest, None, None))
                    continue
                if blob is None:
                    loaded.append((digest, None, None))
                    continue
                try:
                    vector = unit_vector_from_bytes(blob, dimension)
                except InvalidInputError:
                    self.keyspace.counters.count("corrupt_skipped")
                    loaded.append((digest, None, None))
                    continue
                loaded.append((digest, vector, None if int(ttl) < 0 else now + int(ttl) / 1000.0))
        return loaded

    async def _load(
        self, client: Client, partition: str, dimension: int, state: Replica, digests: Sequence[str]
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
        state: Replica,
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
        if not delta or stream_id(delta[0][0]) != last_id:
            await self._rebuild(client, partition, dimension)
            return {"*"}
        records = list(delta[1:])
        while len(delta) == DELTA_BATCH:  # a long delta: read the rest
            start = "(" + format_id(stream_id(delta[-1][0]))
            delta = await client.xrange(self.keyspace.layout.log(partition), min=start, count=DELTA_BATCH)
            records.extend(delta)
        if not records:
            return set()
        operations = self._fold(records)
        loaded = await self._read_vectors(
            client, partition, dimension, [d for d, op in operations.items() if op == b"s"]
        )
        vectors = {digest: (vector, expires_at) for digest, vector, expires_at in loaded}
        with self._lock:
            current = self.partitions.get((partition, dimension))
            if current is not state or state.last_id != last_id:
                return set(operations) or {"*"}  # another task moved it on meanwhile
            for digest in operations:
                vector, expires_at = vectors.get(digest, (None, None))
                if vector is None:
                    state.discard(digest)
                else:
                    state.put(digest, vector, expires_at)
            state.last_id = stream_id(records[-1][0])
        self.keyspace.counters.count("log_records_applied", len(records))
        return set(operations)


def _record_op(record: Any) -> bytes | None:
    values = record[1] if isinstance(record, (list, tuple)) and len(record) == 2 else None
    return values.get(b"o") if isinstance(values, dict) else None


def stream_id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)


def format_id(identifier: tuple[int, int]) -> str:
    return f"{identifier[0]}-{identifier[1]}"
