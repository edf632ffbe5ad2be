"""The Redis backend, split by role:

- `backend.py`: `RedisBackend`, the StorageBackend (thin: it composes the parts below);
- `connection.py`: clients per event loop, cluster detection, SCAN, error translation (no breaker: the engine's);
- `layout.py`: key names under the prefix and the partition / namespace TAG values;
- `scripts.py`: the Lua scripts that write, delete and count hits, and the changelog they append to;
- `codec.py`: an entry as a hash (tags, JSON payload, float32 vector) and back;
- `keyspace.py`: what the parts share (connection, layout, counters) and reading every entry back;
- `server_index.py`: ``index="search"``, the server's vector search;
- `replica.py`: ``index="client"``, local indexes synced through the changelog.
"""

from __future__ import annotations

from semantic_llm_cache.backends.redis.backend import IndexMode, RedisBackend
from semantic_llm_cache.backends.redis.layout import (
    INDEX_SCHEMA_VERSION,
    legacy_namespace_tag,
    namespace_tag,
    partition_tag,
    scope_filter,
    scope_tags,
)

__all__ = [
    "INDEX_SCHEMA_VERSION",
    "IndexMode",
    "RedisBackend",
    "legacy_namespace_tag",
    "namespace_tag",
    "partition_tag",
    "scope_filter",
    "scope_tags",
]
