"""Where an entry lives in Redis: key names under the prefix, and the TAG values that let a search select a
partition or a namespace.

Layout under the key prefix (``slc:`` by default); ``{P}`` is the partition id, used as the Redis Cluster hash
tag so that a partition's keys live on one slot:

- ``slc:e:{P}:<digest>``: one hash per entry: ``s`` holds the partition's and the namespace's tags (one TAG
  field, see `scope_tags`; only a candidate filter: results are checked against the key and the payload),
  ``j`` the JSON payload (see codec.py) and ``v<dim>`` the vector as little-endian float32 bytes. The entry's
  TTL is Redis EXPIRE (PEXPIREAT to its ``expires_at``), set by the script that writes the hash.
- ``slc:h:{P}:<digest>``: the entry's hit counters (``h`` hits, ``t`` last hit), with the entry's TTL. They are
  kept out of the entry hash because any change to an indexed hash makes the search module re-insert its vector.
- ``slc:log:{P}``: the partition's changelog, a stream (see scripts.py and replica.py).
- ``slc:idx:1:<dim>``: with ``index="search"``, one search index per vector dimension (see server_index.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from semantic_llm_cache.errors import ConfigurationError, InvalidInputError

INDEX_SCHEMA_VERSION = 1  # part of the index name: a new schema gets a new index

_PLAIN_PARTITION = re.compile(r"[A-Za-z0-9_-]{1,128}")  # a partition id that is its own TAG value
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_TAG_DIGEST_HEX = 32  # 128 bits of sha256: tag values that no two namespaces or partitions share in practice


class KeyLayout:
    """The key names of one cache (one prefix)."""

    def __init__(self, prefix: str) -> None:
        if not isinstance(prefix, str) or not prefix or any(char in prefix for char in "{}*?[]\\"):
            raise ConfigurationError(f"prefix must be a non-empty string without braces or glob characters: {prefix!r}")
        self.prefix = prefix
        self.all_keys = f"{glob_escape(prefix)}*"
        self.all_entries = f"{glob_escape(prefix)}e:*"

    @staticmethod
    def split(key: str) -> tuple[str, str]:
        """A cache key's (partition, digest); InvalidInputError for anything else."""
        if not isinstance(key, str):
            raise InvalidInputError(f"key must be a string, got {type(key).__name__}")
        partition, separator, digest = key.partition(":")
        if not partition or not separator or not digest:
            raise InvalidInputError(f"not a cache key (expected '<partition>:<digest>'): {key!r}")
        if any(char in partition for char in "{},"):
            raise InvalidInputError(f"partition ids may not contain braces or commas: {partition!r}")
        return partition, digest

    def entry(self, partition: str, digest: str) -> str:
        return f"{self.prefix}e:{{{partition}}}:{digest}"

    def hits(self, partition: str, digest: str) -> str:
        return f"{self.prefix}h:{{{partition}}}:{digest}"

    def log(self, partition: str) -> str:
        return f"{self.prefix}log:{{{partition}}}"

    def index(self, dimension: int) -> str:
        return f"{self.prefix}idx:{INDEX_SCHEMA_VERSION}:{dimension}"

    def partition_entries(self, partition: str) -> str:
        """The SCAN pattern of one partition's entry hashes."""
        return f"{glob_escape(self.prefix)}e:{{{glob_escape(partition)}}}:*"

    def parse_entry(self, redis_key: bytes | str) -> tuple[str, str] | None:
        """(partition, digest) of an entry hash's key; None for any other key."""
        text = redis_key.decode(errors="replace") if isinstance(redis_key, bytes) else redis_key
        head = f"{self.prefix}e:{{"
        if not text.startswith(head):
            return None
        partition, separator, digest = text[len(head) :].partition("}:")
        if not partition or not separator or not digest:
            return None
        return partition, digest


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


def legacy_partition_tags(partition: str) -> list[str]:
    """TAG values older entries of `partition` may carry besides partition_tag(partition): the raw id, written
    before digests were used for ids that are not plain (such entries were findable only without a NUL or
    surrounding whitespace)."""
    if partition_tag(partition) == partition or "\x00" in partition or partition != partition.strip():
        return []
    return [partition]


def scope_tags(partition: str, namespace: str, metadata: Mapping[str, Any] | None = None) -> str:
    """The ``s`` field: the partition's tag first, then one tag per scalar metadata field (see `metadata_tag`),
    the namespace's tag last (`decode` reads the first, `clear` the last): one TAG field for all of them."""
    fields = [partition_tag(partition), *metadata_tags(metadata or {}), namespace_tag(namespace)]
    return ",".join(fields)


def metadata_tag(name: str, value: Any) -> str:
    """The TAG value of one metadata field's value (128 bits of sha256 of the field and its JSON), so a `where`
    filter is a TAG pre-filter. Only selects candidates: the payload's metadata decides."""
    text = json.dumps([name, value], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "m:" + hashlib.sha256(text.encode()).hexdigest()[:_TAG_DIGEST_HEX]


def metadata_tags(metadata: Mapping[str, Any]) -> list[str]:
    """Tags of the metadata fields a `where` filter can name: string, finite number, boolean or None values."""
    tags = []
    for name, value in metadata.items():
        if (
            value is None
            or isinstance(value, (str, bool))
            or (isinstance(value, (int, float)) and math.isfinite(value))
        ):
            tags.append(metadata_tag(name, _canonical_number(value)))
    return tags


def _canonical_number(value: Any) -> Any:
    """1 and 1.0 are the same value to a filter (as to Python's ==): one tag for both."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def where_filter(where: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The FT.SEARCH clauses requiring each `where` field's tag, and their PARAMS."""
    clauses: list[str] = []
    params: list[str] = []
    for position, (name, value) in enumerate(sorted(where.items())):
        clauses.append(f"@s:{{$w{position}}}")
        params.extend((f"w{position}", metadata_tag(name, _canonical_number(value))))
    return " ".join(clauses), params


def scope_filter(partition: str | None, namespace: str | None) -> tuple[str, list[str]]:
    """The FT.SEARCH prefilter selecting `partition` and/or `namespace` (current and legacy tags), and its
    PARAMS (name, value, ...). Values only ever travel as PARAMS: no escaping, any character is safe."""
    clauses: list[str] = []
    params: list[str] = []
    for letter, tags in (
        ("p", None if partition is None else [partition_tag(partition), *legacy_partition_tags(partition)]),
        ("n", None if namespace is None else [namespace_tag(namespace), legacy_namespace_tag(namespace)]),
    ):
        if tags is None:
            continue
        names = [f"{letter}{position}" for position in range(len(tags))]
        clauses.append("@s:{" + " | ".join(f"${name}" for name in names) + "}")
        for name, tag in zip(names, tags, strict=True):
            params.extend((name, tag))
    return (f"({' '.join(clauses)})" if clauses else "*"), params


def params_arguments(params: Sequence[Any]) -> list[Any]:
    """FT.SEARCH's PARAMS clause for (name, value, ...) pairs; nothing when there are none."""
    return ["PARAMS", str(len(params)), *params] if params else []


def glob_escape(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)
