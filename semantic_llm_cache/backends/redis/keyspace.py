"""One cache's keys on one server, as every part of the Redis backend shares them: the connection, the key
layout, the counters, and reading every entry back by SCAN."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from semantic_llm_cache.backends.redis.codec import live_entry
from semantic_llm_cache.backends.redis.connection import Client, Connection, Counters, execute
from semantic_llm_cache.backends.redis.layout import KeyLayout
from semantic_llm_cache.config import CacheEntry, Vector
from semantic_llm_cache.storage import Match


@dataclass
class ExactRead:
    """A lookup's exact read (an entry's hash and its counters), sent in the first pipeline of the search that
    goes with it: `replies` holds the two HGETALL replies once read."""

    entry_key: str
    hits_key: str
    replies: list[Any] | None = None

    def queue(self, pipe: Any) -> None:
        pipe.hgetall(self.entry_key)
        pipe.hgetall(self.hits_key)

    def take(self, replies: list[Any]) -> list[Any]:
        """Keep the two replies this read queued first; return the rest."""
        self.replies = replies[:2]
        return replies[2:]


@dataclass(frozen=True)
class Keyspace:
    """The connection, the key layout and the counters of one backend; `log_length` bounds each changelog."""

    connection: Connection
    layout: KeyLayout
    counters: Counters
    log_length: int

    async def scan_entries(self, client: Client) -> AsyncIterator[tuple[str, str, CacheEntry]]:
        """(partition, digest, entry) for every live, well-formed entry under the prefix, with its counters."""
        now = time.time()
        async for chunk in self.connection.scan_chunks(client, self.layout.all_entries):
            parsed_keys = [self.layout.parse_entry(redis_key) for redis_key in chunk]
            pipe = client.pipeline(transaction=False)
            for redis_key, parsed in zip(chunk, parsed_keys, strict=True):
                pipe.hgetall(redis_key)
                pipe.hgetall(self.layout.hits(*parsed) if parsed is not None else redis_key)
            replies = await execute(pipe)
            for position, parsed in enumerate(parsed_keys):
                fields, hits = replies[2 * position], replies[2 * position + 1]
                if parsed is None or isinstance(fields, BaseException):
                    self.counters.count("corrupt_skipped")
                    continue
                entry = live_entry(parsed[0], fields, now, self.counters, hits)
                if entry is not None:
                    yield parsed[0], parsed[1], entry

    async def search_by_scan(
        self, client: Client, query: Vector, threshold: float, namespace: str | None
    ) -> list[Match]:
        """Every entry at or above `threshold`, by a full scan (a search without a partition, which the engine
        never makes, where no index covers it)."""
        matches: list[Match] = []
        async for partition, digest, entry in self.scan_entries(client):
            if namespace is not None and entry.namespace != namespace:
                continue
            if entry.embedding is None or entry.embedding.size != query.size:
                continue
            similarity = float(np.dot(entry.embedding, query))
            if similarity >= threshold:
                matches.append((f"{partition}:{digest}", entry, similarity))
        return matches
