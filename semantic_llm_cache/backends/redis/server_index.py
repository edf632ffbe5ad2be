"""``index="search"``: the server's vector search (Redis 8, Redis Stack, Redis Cloud, Valkey with search).

One index per vector dimension over the entry hashes: TAG ``s`` (partition and namespace tags), VECTOR
``v<dim>`` (HNSW, cosine), under ``slc:idx:1:<dim>``. Expired hashes leave it by themselves. A search is one
FT.SEARCH, a range query pre-filtered by the partition's tag, that returns each match's payload and vector: one
round trip, and only rows within the threshold come back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from semantic_llm_cache.backends.redis.codec import live_entry, vector_field
from semantic_llm_cache.backends.redis.connection import Client, ResponseError, execute
from semantic_llm_cache.backends.redis.keyspace import ExactRead, Keyspace
from semantic_llm_cache.backends.redis.layout import scope_filter, where_filter
from semantic_llm_cache.backends.redis.replica import ClientReplica
from semantic_llm_cache.call_options import WHERE_CANDIDATE_FACTOR
from semantic_llm_cache.config import CacheEntry, Vector
from semantic_llm_cache.serialization import vector_to_bytes
from semantic_llm_cache.storage import Match

_MAX_SEARCH_ROUNDS = 8
_RADIUS_SLACK = 1e-5  # the server's float32 distance may round past the threshold: the exact check follows
#: EPSILON: how far past the radius the graph walk looks. On the Quora questions (benchmarks/peers.py, 4,834 entries,
#: threshold 0.94) 0.1 lost 4 of 583 hits that an exact search finds, 0.3 and 0.5 none; the search module's default,
#: 0.01, misses 4 in 10 on random vectors. Random 384-d vectors (no structure) make a wider walk cost ~3x there.
_RANGE_ATTRIBUTES = "$EPSILON: 0.3; $YIELD_DISTANCE_AS: __distance"


class ServerIndex:
    """Search on the server. A partition whose id has a NUL byte is searched through `replica` instead: the search
    module cannot index such a key (its FILTER reads the key as a C string); both modes write the changelog."""

    name: Literal["search"] = "search"

    def __init__(self, keyspace: Keyspace, hnsw: dict[str, int], replica: ClientReplica) -> None:
        self.keyspace = keyspace
        self.hnsw = hnsw
        self.replica = replica
        self._indexed_dimensions: set[int] = set()

    # -- the strategy -------------------------------------------------------------------------------------

    async def prepare_write(self, client: Client, entry: CacheEntry) -> None:
        if entry.embedding is not None:
            await self.ensure_index(client, int(entry.embedding.size))

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
        if partition is not None and "\x00" in partition:
            fetch = k * WHERE_CANDIDATE_FACTOR if where else k
            return await self.replica.find(client, query, threshold, fetch, namespace, partition, exact=exact)
        return await self.search(client, query, threshold, k, namespace, partition, where, exact)

    def forget(self) -> None:
        self.replica.forget()

    def lost(self) -> None:
        self._indexed_dimensions.clear()  # the server may come back empty: create the indexes again

    async def drop(self, client: Client) -> None:
        """Drop this prefix's search indexes."""
        prefix = f"{self.keyspace.layout.prefix}idx:"
        for name in await client.execute_command("FT._LIST"):
            text = name.decode() if isinstance(name, bytes) else str(name)
            if text.startswith(prefix):
                await client.execute_command("FT.DROPINDEX", text)
        self._indexed_dimensions.clear()

    def stats(self) -> dict[str, Any]:
        return self.replica.stats()

    # -- the index ----------------------------------------------------------------------------------------

    async def ensure_index(self, client: Client, dimension: int) -> None:
        if dimension in self._indexed_dimensions:
            return
        field = vector_field(dimension)
        hnsw = [item for name, value in self.hnsw.items() for item in (name, value)]
        try:
            await client.execute_command(
                "FT.CREATE", self.keyspace.layout.index(dimension), "ON", "HASH",
                "PREFIX", "1", f"{self.keyspace.layout.prefix}e:", "FILTER", f"exists(@{field})",
                "SCHEMA", "s", "TAG", "SEPARATOR", ",", "CASESENSITIVE",
                field, "VECTOR", "HNSW", str(6 + len(hnsw)), "TYPE", "FLOAT32", "DIM", str(dimension),
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
            info = await client.execute_command("FT.INFO", self.keyspace.layout.index(dimension))
            if isinstance(info, list):
                info = dict(zip(info[::2], info[1::2], strict=False))
            indexing = info.get(b"indexing", info.get("indexing", 0))
            if not int(float(indexing.decode() if isinstance(indexing, bytes) else indexing)):
                return
            await asyncio.sleep(0.02)

    # -- the search ---------------------------------------------------------------------------------------

    async def search(
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
        """The entries of the scope at or above `threshold`, nearest first: one FT.SEARCH with a range query
        (VECTOR_RANGE to the threshold's cosine distance, pre-filtered by the partition's TAG) returning the fields
        an entry needs. Only rows that can match come back, usually one or none, so a search costs one round trip,
        less than a bare KNN query (the graph walk stops at the radius; like KNN on HNSW it is approximate).
        `exact`: a lookup's exact read, sent in the same pipeline as the first FT.SEARCH."""
        dimension = int(query.size)
        prefilter, params = scope_filter(partition, namespace)
        if where:  # each field's tag, in the same TAG field: the index selects only entries that can match
            clauses, where_params = where_filter(where)
            prefilter = clauses if prefilter == "*" else f"{prefilter} {clauses}"
            params = [*params, *where_params]
        field = vector_field(dimension)
        scope = "" if prefilter == "*" else f"{prefilter} "
        radius = repr(min(2.0, 1.0 - threshold + _RADIUS_SLACK))
        query_text = f"{scope}@{field}:[VECTOR_RANGE $radius $vec]=>{{{_RANGE_ATTRIBUTES}}}"
        params = [*params, "radius", radius]
        blob = vector_to_bytes(query)
        want = k + 2  # room for a gone or corrupt row without a second round trip
        matches: list[Match] = []
        for _ in range(_MAX_SEARCH_ROUNDS):
            command = (
                "FT.SEARCH", self.keyspace.layout.index(dimension), query_text,
                "PARAMS", str(len(params) + 2), *params, "vec", blob,
                "RETURN", "3", "s", "j", field, "SORTBY", "__distance", "ASC", "LIMIT", "0", str(want), "DIALECT", "2",
            )  # fmt: skip
            try:
                reply = await self._send(client, command, exact)
                exact = None
            except ResponseError as exc:
                exact = None
                text = str(exc).lower()
                if "no such index" not in text and "unknown index" not in text:
                    raise
                self._indexed_dimensions.discard(dimension)
                await self.ensure_index(client, dimension)  # e.g. the server restarted empty
                await self._wait_for_indexing(client, dimension)
                reply = await client.execute_command(*command)
            rows = _search_rows(reply)
            matches, past_threshold = self._matches(rows, query, threshold, namespace, partition)
            if len(matches) >= k or past_threshold or len(rows) < want:
                return matches
            want *= 4  # skipped rows (gone, corrupt, of another scope) hid candidates: ask for more
        return matches

    @staticmethod
    async def _send(client: Client, command: tuple[Any, ...], exact: ExactRead | None) -> Any:
        """One FT.SEARCH, with the exact read in the same pipeline when there is one (its error raised)."""
        if exact is None:
            return await client.execute_command(*command)
        pipe = client.pipeline(transaction=False)
        exact.queue(pipe)
        pipe.execute_command(*command)
        (reply,) = exact.take(await execute(pipe))
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def _matches(
        self,
        rows: list[tuple[bytes, dict[bytes, bytes]]],
        query: Vector,
        threshold: float,
        namespace: str | None,
        partition: str | None,
    ) -> tuple[list[Match], bool]:
        """The rows' live entries of the scope at or above `threshold` (the similarity of the stored vector,
        computed exactly here, as in client mode), and whether a row fell short of it (rows come nearest first:
        the rest do too)."""
        dimension = int(query.size)
        now = time.time()
        matches: list[Match] = []
        past_threshold = False
        for redis_key, row in rows:
            parsed = self.keyspace.layout.parse_entry(redis_key)
            if parsed is None:
                self.keyspace.counters.count("corrupt_skipped")
                continue
            entry = live_entry(parsed[0], row, now, self.keyspace.counters)
            if entry is None or entry.embedding is None or entry.embedding.size != dimension:
                continue
            if (partition is not None and entry.partition_id != partition) or (
                namespace is not None and entry.namespace != namespace
            ):
                continue
            similarity = float(np.dot(entry.embedding, query))
            if similarity >= threshold:
                matches.append((f"{parsed[0]}:{parsed[1]}", entry, similarity))
            else:
                past_threshold = True
        return matches, past_threshold


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
