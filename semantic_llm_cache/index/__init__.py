"""Vector indexes used by backends that do not search on a server, and the per-partition map over them."""

from __future__ import annotations

from typing import Any

from semantic_llm_cache.index import auto
from semantic_llm_cache.index.auto import DEFAULT_HNSW_MIN_ENTRIES, AutoIndex, partition_index_factory
from semantic_llm_cache.index.flat import FlatIndex
from semantic_llm_cache.index.hnsw import HNSWIndex
from semantic_llm_cache.index.partitions import PartitionIndex, PartitionIndexes
from semantic_llm_cache.index.protocol import IndexFactory, VectorIndex


def __getattr__(name: str) -> Any:
    if name == "DEFAULT_HNSW_THRESHOLD":  # the old name, for one release
        return getattr(auto, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_HNSW_MIN_ENTRIES",
    "AutoIndex",
    "FlatIndex",
    "HNSWIndex",
    "IndexFactory",
    "PartitionIndex",
    "PartitionIndexes",
    "VectorIndex",
    "partition_index_factory",
]
