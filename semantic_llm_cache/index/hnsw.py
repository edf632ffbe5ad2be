"""Approximate nearest-neighbour search over unit vectors with an HNSW graph (hnswlib), for large partitions.

hnswlib was chosen over usearch and faiss because a cache deletes all the time (TTL expiry, LRU eviction,
overwrites): hnswlib marks a deleted element and reuses its slot for the next insert (`mark_deleted` +
`replace_deleted`), so a partition under churn neither grows nor needs rebuilding. faiss's HNSW cannot delete
at all; usearch can, but its delete path had correctness bugs under churn until recently. The cost: PyPI
ships hnswlib as source only, so installing the `hnsw` extra compiles it (a C++ compiler is needed); without
it the backends stay exact (flat).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from semantic_llm_cache.config import Vector
from semantic_llm_cache.errors import ConfigurationError, InvalidInputError

#: Graph degree: 16 links per node (32 on the bottom layer): ~130 bytes of links per entry (~310 with bookkeeping).
DEFAULT_M = 16
#: Candidate list size while inserting: 200 gained at most 0.02 recall@1 over 100 (100k entries), at twice the cost.
DEFAULT_EF_CONSTRUCTION = 100
#: Candidate list size while searching (raised to k when k is larger): the recall/latency knob. On clustered
#: 384-dimension data (benchmarks/hnsw.py) 256 reaches recall@1 0.995 at 1M entries in ~0.7 ms, where 128 gives
#: 0.985 in ~0.35 ms: a missed hit costs an LLM call, a few hundred microseconds do not.
DEFAULT_EF_SEARCH = 256

# hnswlib's per-slot bookkeeping outside the serialised graph: a link-list pointer (8), the element's level (4),
# its std::mutex (40) and a visited-list entry (2).
_SLOT_OVERHEAD_BYTES = 54


def hnswlib_available() -> bool:
    """True if hnswlib can be imported (the `hnsw` extra is installed)."""
    try:
        import hnswlib  # noqa: F401
    except ImportError:
        return False
    return True


class HNSWIndex:
    """Inner-product HNSW index over L2-normalised float32 vectors (inner product = cosine), keyed by string.

    Approximate: a search may miss the true nearest neighbour (rarely; see `ef_search`), but every similarity it
    reports is the real cosine similarity of that entry, and results are filtered inclusively (`>= threshold`).
    Deletes mark the element; the next insert reuses its slot. Capacity doubles when full. Not thread-safe: the
    backends call it from one thread at a time (apart from that, the GIL is released while hnswlib works).
    """

    def __init__(
        self,
        dimension: int,
        *,
        initial_capacity: int = 1024,
        m: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef_search: int = DEFAULT_EF_SEARCH,
        num_threads: int = 1,
        random_seed: int = 100,
    ) -> None:
        if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension <= 0:
            raise InvalidInputError(f"dimension must be a positive integer, got {dimension!r}")
        for name, value in (("m", m), ("ef_construction", ef_construction), ("ef_search", ef_search)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ConfigurationError(f"{name} must be an integer >= 2, got {value!r}")
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ConfigurationError(f"num_threads must be a positive integer, got {num_threads!r}")
        try:
            import hnswlib
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigurationError("HNSWIndex needs hnswlib: pip install 'async-semantic-llm-cache[hnsw]'") from exc
        self.dimension = dimension
        self.m = m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.num_threads = num_threads
        self._random_seed = random_seed
        self._hnswlib: Any = hnswlib
        self._graph: Any = None
        self._labels: dict[str, int] = {}  # key -> hnswlib label
        self._keys: dict[int, str] = {}  # hnswlib label -> key
        self._next_label = 0  # labels are never reused: hnswlib still maps a deleted slot's old label
        self._vacant = 0  # marked-deleted slots that the next inserts will take over
        self._init_graph(max(1, initial_capacity))

    def _init_graph(self, capacity: int) -> None:
        graph = self._hnswlib.Index(space="ip", dim=self.dimension)
        graph.init_index(
            max_elements=capacity,
            ef_construction=self.ef_construction,
            M=self.m,
            random_seed=self._random_seed,
            allow_replace_deleted=True,
        )
        graph.set_ef(self.ef_search)
        self._graph = graph
        self._ef = self.ef_search

    # -- size ---------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, key: object) -> bool:
        return key in self._labels

    @property
    def capacity(self) -> int:
        """Slots allocated in the graph (live + deleted-awaiting-reuse + free)."""
        return int(self._graph.get_max_elements())

    @property
    def nbytes(self) -> int:
        """Bytes held: vectors and links (hnswlib's own accounting), per-slot bookkeeping and the key maps.

        Not counted: the key strings themselves (shared with the backend). O(entries) to compute.
        """
        graph_bytes = int(self._graph.index_file_size()) + self.capacity * _SLOT_OVERHEAD_BYTES
        key_map_bytes = sys.getsizeof(self._labels) + sys.getsizeof(self._keys) + 32 * len(self._labels)
        return graph_bytes + key_map_bytes

    @property
    def estimated_nbytes(self) -> int:
        """`nbytes` from the capacity alone, without reading the graph (safe while another thread builds it)."""
        links = 2 * self.m * 4 + 4  # the bottom layer's links and their count; upper layers add ~1/m of that
        return self.capacity * (self.dimension * 4 + links + 8 + _SLOT_OVERHEAD_BYTES + 100)

    def keys(self) -> list[str]:
        """The keys in the index (in insertion order of their current slot)."""
        return list(self._labels)

    # -- writes -------------------------------------------------------------------------------------------

    def add(self, key: str, vector: Vector) -> None:
        """Insert or replace the vector of `key`. The vector must already be L2-normalised float32."""
        if vector.shape != (self.dimension,):
            raise InvalidInputError(f"vector has shape {vector.shape}, index dimension is {self.dimension}")
        self.add_many([key], vector.reshape(1, -1))

    def add_many(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or replace many vectors at once (one row per key; a key given twice keeps its last row).

        Much faster than `add` in a loop: hnswlib inserts a batch in C++ (with `num_threads` threads when no
        deleted slot is being reused).
        """
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != self.dimension or matrix.shape[0] != len(keys):
            raise InvalidInputError(
                f"expected a ({len(keys)}, {self.dimension}) matrix of vectors, got shape {matrix.shape}"
            )
        last_row = {key: row for row, key in enumerate(keys)}
        if len(last_row) != len(keys):
            keys = list(last_row)
            matrix = matrix[list(last_row.values())]
        existing = [row for row, key in enumerate(keys) if key in self._labels]
        if existing:
            labels = np.array([self._labels[keys[row]] for row in existing], dtype=np.int64)
            self._graph.add_items(matrix[existing], labels, num_threads=1, replace_deleted=False)
        new_rows = [row for row, key in enumerate(keys) if key not in self._labels]
        if not new_rows:
            return
        self._reserve(len(new_rows))
        labels = np.arange(self._next_label, self._next_label + len(new_rows), dtype=np.int64)
        # Reusing a deleted slot rewires its neighbours (updatePoint); keep that single-threaded.
        threads = self.num_threads if self._vacant == 0 else 1
        self._graph.add_items(matrix[new_rows], labels, num_threads=threads, replace_deleted=True)
        self._next_label += len(new_rows)
        self._vacant = max(0, self._vacant - len(new_rows))
        for row, label in zip(new_rows, labels.tolist(), strict=True):
            self._labels[keys[row]] = label
            self._keys[label] = keys[row]

    def _reserve(self, new_count: int) -> None:
        """Grow the graph (doubling) so `new_count` inserts fit, after the deleted slots they will reuse."""
        needed = int(self._graph.get_current_count()) + max(0, new_count - self._vacant)
        capacity = self.capacity
        if needed > capacity:
            self._graph.resize_index(max(needed, capacity * 2))

    def remove(self, key: str) -> bool:
        """Remove `key` (its slot is reused by a later insert); True if it was there."""
        label = self._labels.pop(key, None)
        if label is None:
            return False
        del self._keys[label]
        self._graph.mark_deleted(label)
        self._vacant += 1
        return True

    def clear(self) -> None:
        """Remove every vector and release the graph."""
        self._labels.clear()
        self._keys.clear()
        self._vacant = 0
        self._init_graph(1024)

    # -- search -------------------------------------------------------------------------------------------

    def search(self, query: Vector, k: int = 1, threshold: float = -1.0) -> list[tuple[str, float]]:
        """Return up to `k` (key, similarity) pairs with similarity >= threshold, best first (approximately)."""
        live = len(self._labels)
        if live == 0 or k <= 0:
            return []
        if query.shape != (self.dimension,):
            raise InvalidInputError(f"query has shape {query.shape}, index dimension is {self.dimension}")
        want = min(k, live)
        labels, distances = self._query(query, want)
        # hnswlib's "ip" distance is 1 - inner product; clip the float error so an exact duplicate scores 1.0.
        similarities = np.minimum(1.0 - distances.astype(np.float64), 1.0)
        return [
            (self._keys[label], float(similarity))
            for label, similarity in zip(labels.tolist(), similarities.tolist(), strict=True)
            if similarity >= threshold
        ]

    def _query(self, query: Vector, want: int) -> tuple[np.ndarray, np.ndarray]:
        ef = max(self.ef_search, want)
        for widen in (False, True):
            if widen:
                # Fewer than `want` live elements were reached (deletes can cut the graph): search wider once,
                # then scan exactly rather than miss an entry that is there.
                ef = max(ef * 4, min(int(self._graph.get_current_count()), 4096))
            if ef != self._ef:
                self._graph.set_ef(ef)
                self._ef = ef
            try:
                labels, distances = self._graph.knn_query(query, k=want, num_threads=1)
            except RuntimeError:
                continue
            return labels[0], distances[0]
        return self._exact(query, want)

    def _exact(self, query: Vector, want: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.fromiter(self._keys, dtype=np.int64, count=len(self._keys))
        distances = 1.0 - np.asarray(self._graph.get_items(labels), dtype=np.float32) @ query
        order = np.argsort(distances, kind="stable")[:want]
        return labels[order], distances[order]
