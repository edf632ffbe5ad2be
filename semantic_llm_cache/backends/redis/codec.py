"""An entry as a Redis hash and back: the tags, the JSON payload (the versioned codec of serialization.py,
without the vector and the hit counters, defaults left out) and the vector as float32 bytes."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from semantic_llm_cache.backends.redis.connection import Counters
from semantic_llm_cache.backends.redis.layout import partition_tag, scope_tags
from semantic_llm_cache.config import CacheEntry
from semantic_llm_cache.encryption import is_sealed
from semantic_llm_cache.serialization import entry_from_dict, entry_to_dict, vector_from_bytes, vector_to_bytes

logger = logging.getLogger("semantic_llm_cache.redis")

# Payload fields left out when they hold what entry_from_dict assumes for a missing field (saves bytes per entry).
PAYLOAD_DEFAULTS: dict[str, Any] = {"namespace": "default", "embedder": None, "expires_at": None, "metadata": {},
                                    "compute_seconds": None, "tokens": None, "min_similarity": 0.0,
                                    "evidence": {}}  # fmt: skip

_VECTOR_FIELD = re.compile(rb"v([0-9]+)")


class CorruptEntry(Exception):
    """Data under the prefix that is not an entry this backend wrote."""


def vector_field(dimension: int) -> str:
    """The hash field holding a vector of `dimension` floats (one search index per dimension reads it)."""
    return f"v{dimension}"


def encode(entry: CacheEntry) -> dict[str, Any]:
    """The entry's hash fields: ``s`` (tags), ``j`` (payload) and, with a vector, ``v<dim>``."""
    payload = entry_to_dict(entry, include_vector=False)
    for name in ("partition_id", "hits", "last_hit_at"):
        payload.pop(name, None)
    for name, default in PAYLOAD_DEFAULTS.items():  # what entry_from_dict fills in costs no bytes here
        if name in payload and payload[name] == default and type(payload[name]) is type(default):
            del payload[name]
    fields: dict[str, Any] = {
        "s": scope_tags(entry.partition_id, entry.namespace, None if is_sealed(entry) else entry.metadata),
        "j": json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")),
    }
    if entry.embedding is not None:
        fields[vector_field(entry.embedding.size)] = vector_to_bytes(entry.embedding)
    return fields


def decode(partition: str, fields: dict[bytes, bytes]) -> CacheEntry:
    """Rebuild an entry from its hash; raise CorruptEntry for anything this backend did not write."""
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
        raise CorruptEntry(f"{type(exc).__name__}: {exc}") from exc


def live_entry(partition: str, fields: Any, now: float, counters: Counters, hits: Any = None) -> CacheEntry | None:
    """The entry in `fields` (a HGETALL reply), or None when missing, expired or corrupt (counted).

    `hits` is the HGETALL reply of the entry's counters, when read.
    """
    if not fields:
        return None
    if not isinstance(fields, dict):
        counters.count("corrupt_skipped")
        return None
    try:
        entry = decode(partition, fields)
    except CorruptEntry as exc:
        counters.count("corrupt_skipped")
        logger.debug("skipping corrupt entry in partition %s: %s", partition, exc)
        return None
    if entry.is_expired(now):
        return None
    if hits:
        _apply_hits(entry, hits, counters)
    return entry


def _apply_hits(entry: CacheEntry, hits: Any, counters: Counters) -> None:
    """Copy the counters onto `entry`; counters that are not ours are ignored (and counted)."""
    try:
        if not isinstance(hits, dict):
            raise TypeError("not a hash")
        count = int(hits.get(b"h", 0))
        last_hit_at = float(hits[b"t"]) if b"t" in hits else None
    except (TypeError, ValueError, OverflowError):
        counters.count("corrupt_skipped")
        return
    entry.hits = max(0, count)
    entry.last_hit_at = last_hit_at


def payload_namespace(payload: Any, counters: Counters) -> str | None:
    """The namespace in an entry's JSON payload (missing: the default); None when it is no payload of ours."""
    try:
        data = json.loads(payload) if isinstance(payload, bytes) else None
    except (ValueError, UnicodeDecodeError):
        data = None
    namespace = data.get("namespace", PAYLOAD_DEFAULTS["namespace"]) if isinstance(data, dict) else None
    if not isinstance(namespace, str):
        counters.count("corrupt_skipped")
        return None
    return namespace
