"""``index="search"``: the server's vector search (Redis 8, Redis Stack, Redis Cloud, Valkey with search).

One index per vector dimension over the entry hashes: TAG ``s`` (partition and namespace tags), VECTOR
``v<dim>`` (HNSW, cosine), under ``slc:idx:1:<dim>``. Expired hashes leave it by themselves. A search is one
FT.SEARCH that pre-filters by the partition's tag and returns each candidate's payload and vector, so a lookup is
one round trip.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from semantic_llm_cache.backends.redis.codec import live_entry, similarity_of_blob, vector_field
from semantic_llm_cache.backends.redis.connection import Client, ResponseError, execute
from semantic_llm_cache.backends.redis.keyspace import Keyspace
from semantic_llm_cache.backends.redis.layout import params_arguments, scope_filter
from semantic_llm_cache.backends.redis.replica import ClientReplica
from semantic_llm_cache.config import CacheEntry, Vector
from semantic_llm_cache.serialization import vector_to_bytes
from semantic_llm_cache.storage import Match

_MAX_SEARCH_ROUNDS = 8
_FILTER_SIZE_TTL = 10.0  # seconds a partition's size estimate is reused when choosing the search policy
_BATCHES_MIN_MATCHING = 1000  # below this many matching vectors brute force wins outright
_BATCHES_MIN_SHARE = 10  # and only when they are at least a tenth of the index: else batches wander far


class ServerIndex:
    """Search on the server. A partition whose id has a NUL byte is searched through `replica` instead: the search
    module cannot index such a key (its FILTER reads the key as a C string); both modes write the changelog."""

    name: Literal["search"] = "search"

    def __init__(self, keyspace: Keyspace, hnsw: dict[str, int], replica: ClientReplica) -> None:
        self.keyspace = keyspace
        self.hnsw = hnsw
        self.replica = replica
        self._indexed_dimensions: set[int] = set()
        self._filter_sizes: dict[tuple[int, str, tuple[str, ...]], tuple[int, int, float]] = {}

    # -- the strategy -------------------------------------------------------------------------------------

    async def prepare_write(self, client: Client, entry: CacheEntry) -> None:
        if entry.embedding is not None:
            await self.ensure_index(client, int(entry.embedding.size))

    async def find(
        self, client: Client, query: Vector, threshold: float, k: int, namespace: str | None, partition: str | None
    ) -> list[Match]:
        if partition is not None and "\x00" in partition:
            return await self.replica.find(client, query, threshold, k, namespace, partition)
        return await self.search(client, query, threshold, k, namespace, partition)

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

    async def hybrid_policy(self, client: Client, dimension: int, prefilter: str, params: Sequence[str] = ()) -> str:
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
            index = self.keyspace.layout.index(dimension)
            pipe = client.pipeline(transaction=False)
            pipe.execute_command("FT.SEARCH", index, prefilter, *params_arguments(params), "LIMIT", "0", "0",
                                 "DIALECT", "2")  # fmt: skip
            pipe.execute_command("FT.SEARCH", index, "*", "LIMIT", "0", "0", "DIALECT", "2")
            replies = await execute(pipe)
            if any(isinstance(reply, BaseException) for reply in replies):
                return ""  # e.g. no index yet: the caller handles that
            cached = (_search_total(replies[0]), _search_total(replies[1]), now)
            self._filter_sizes[cache_key] = cached
        matching, total = cached[0], cached[1]
        if matching >= _BATCHES_MIN_MATCHING and matching * _BATCHES_MIN_SHARE >= total:
            return " HYBRID_POLICY BATCHES"
        return " HYBRID_POLICY ADHOC_BF"

    # -- the search ---------------------------------------------------------------------------------------

    async def search(
        self, client: Client, query: Vector, threshold: float, k: int, namespace: str | None, partition: str | None
    ) -> list[Match]:
        dimension = int(query.size)
        prefilter, params = scope_filter(partition, namespace)
        policy = await self.hybrid_policy(client, dimension, prefilter, params)
        blob = vector_to_bytes(query)
        want = k + 2  # room for an expired or corrupt neighbour without a second round trip
        matches: list[Match] = []
        for _ in range(_MAX_SEARCH_ROUNDS):
            command = (
                "FT.SEARCH", self.keyspace.layout.index(dimension),
                f"{prefilter}=>[KNN {want} @{vector_field(dimension)} $vec{policy} AS __distance]",
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
                await self.ensure_index(client, dimension)  # e.g. the server restarted empty
                await self._wait_for_indexing(client, dimension)
                reply = await client.execute_command(*command)
            rows = _search_rows(reply)
            matches, past_threshold = self._matches(rows, query, threshold, namespace, partition)
            if len(matches) >= k or past_threshold or len(rows) < want:
                return matches
            want *= 4  # skipped rows hid candidates: ask for more
        return matches

    def _matches(
        self,
        rows: list[tuple[bytes, dict[bytes, bytes]]],
        query: Vector,
        threshold: float,
        namespace: str | None,
        partition: str | None,
    ) -> tuple[list[Match], bool]:
        """The rows' live entries at or above `threshold`, and whether a row fell short of it (rows come nearest
        first: once a valid one falls short, the rest do too)."""
        dimension = int(query.size)
        field = vector_field(dimension).encode()
        now = time.time()
        matches: list[Match] = []
        past_threshold = False
        for redis_key, row in rows:
            similarity = similarity_of_blob(row.get(field), query)
            if similarity is not None and similarity < threshold - 1e-6:  # (the exact test follows decoding)
                past_threshold = True  # decoding an entry that cannot match would be wasted work
                continue
            parsed = self.keyspace.layout.parse_entry(redis_key)
            if parsed is None:
                self.keyspace.counters.count("corrupt_skipped")
                continue
            fields = {name: value for name, value in row.items() if name != b"__distance"}
            entry = live_entry(parsed[0], fields, now, self.keyspace.counters)
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
