"""Vector indexes used by backends that do not search on a server, and the per-partition map over them."""

from __future__ import annotations

from semantic_llm_cache.index.auto import DEFAULT_HNSW_THRESHOLD, AutoIndex, partition_index_factory
from semantic_llm_cache.index.flat import FlatIndex
from semantic_llm_cache.index.hnsw import HNSWIndex
from semantic_llm_cache.index.partitions import PartitionIndex, PartitionIndexes
from semantic_llm_cache.index.protocol import IndexFactory, VectorIndex

__all__ = [
    "DEFAULT_HNSW_THRESHOLD",
    "AutoIndex",
    "FlatIndex",
    "HNSWIndex",
    "IndexFactory",
    "PartitionIndex",
    "PartitionIndexes",
    "VectorIndex",
    "partition_index_factory",
]
