"""Exact nearest-neighbour search over a growing matrix of unit vectors.

A large index also keeps a sketch of its rows (`Sketch`): their projection onto the rows' 32 principal directions
and the length of what the projection leaves out. For unit vectors x and q, x.q <= px.pq + |x - px| |q - pq|
(Cauchy-Schwarz on the left-out parts), so the sketch bounds every similarity from above at a tenth of the bytes a
full scan reads, and only the rows whose bound reaches the threshold are scored exactly: the same answers as a
full scan, faster. On the Quora questions (4,834 x 384, the bundled model) at a threshold of 0.94 the bound leaves
1.7 rows per query on average (at most ~25), and a search costs ~27 us instead of ~275 us
(benchmarks/lookup_floor.py memory).
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np

from semantic_llm_cache.config import Vector
from semantic_llm_cache.errors import InvalidInputError

_controller: Any = None
_single_threaded: bool | None = None
_controller_lock = threading.Lock()


def single_threaded_blas() -> AbstractContextManager[Any]:
    """Run the enclosed BLAS calls on one thread.

    A search is one matrix-vector product: on a busy machine OpenBLAS's threads wait for cores, and a 10k-entry
    search measured 12 ms p50 instead of 0.2 ms single-threaded. Entering and leaving costs about 4 µs.
    """
    global _controller
    if _controller is None:
        with _controller_lock:
            if _controller is None:
                try:
                    from threadpoolctl import ThreadpoolController

                    _controller = ThreadpoolController()
                except ImportError:  # pragma: no cover - threadpoolctl is a dependency
                    _controller = False
    if _controller is False or _already_single_threaded(_controller):
        return nullcontext()
    limited: AbstractContextManager[Any] = _controller.limit(limits=1, user_api="blas")
    return limited


def _already_single_threaded(controller: Any) -> bool:
    """True when every BLAS library in the process already runs one thread (e.g. OPENBLAS_NUM_THREADS=1): then
    there is nothing to limit (checked once; limiting costs a few microseconds a search)."""
    global _single_threaded
    if _single_threaded is None:
        try:
            blas = controller.select(user_api="blas")
            _single_threaded = all(int(library.num_threads) == 1 for library in blas.lib_controllers)
        except Exception:  # an unexpected threadpoolctl: keep limiting
            _single_threaded = False
    return _single_threaded


SKETCH_DIMENSIONS = 32
SKETCH_MIN_ENTRIES = 1024  # below it a full scan is as fast (the matrix fits in the processor's caches)
_SKETCH_REFIT_GROWTH = 8  # the directions are fitted again each time the index grows this many times over
_SKETCH_SAMPLE = 1024  # rows the directions are fitted on
_SKETCH_MIN_DIMENSION = 3 * SKETCH_DIMENSIONS  # a smaller dimension gains nothing
_SKETCH_MIN_THRESHOLD = 0.5  # below it the bound prunes little: a full scan
_SKETCH_SLACK = 1e-4  # float32 rounding in the bound: a row that could reach the threshold is always scored
_SKETCH_MAX_SHARE = 8  # more than 1/8 of the rows left to score: a full scan reads less
_SKETCH_FUTILE_RUN = 8  # searches in a row that the sketch could not narrow (e.g. random vectors, or a low
_SKETCH_PAUSE = 64  # threshold) before it is left unread for this many searches, then tried again
_NARROW_SHARE = 1 / 16  # sketch_narrows: searches score at most this share of the rows exactly, on average over
_SHARE_MEMORY = 32  # about this many recent searches (an exponential moving average: one full scan adds 1/32, so
# one odd search never flips it; three full scans in a row do)
_PROBES = 8  # stored rows probe_narrowness queries the sketch with
_PROBE_THRESHOLD = 0.9  # at this threshold (the sketch narrows less the lower it is)


#: Bytes per block of a RowBlocks (768 rows of 1,024 floats, 2,048 of 384): under numpy's 4 MB threshold for asking
#: the kernel for huge pages, whose first touch stalled an add by 12-16 ms on a 2-core VM (3 MB blocks: ~2 ms).
BLOCK_BYTES = 3 << 20
_FEW_ROWS = 48  # RowBlocks.take gathers up to this many rows one by one (fewer numpy calls than per block)


class RowBlocks:
    """The rows of a growing float32 array, in blocks of BLOCK_BYTES: the first block doubles up to that size, then
    blocks are added. Growing never copies more than one block: doubling a 32,768 x 384 matrix whole stalled its
    caller (the event loop) for ~140 ms on a 2-core VM. Row r lives in block r // block_rows."""

    def __init__(self, tail: tuple[int, ...], capacity: int) -> None:
        self.tail = tail  # each row's shape: (dimension,), or () for one number per row
        self.block_rows = max(1, BLOCK_BYTES // (4 * int(np.prod(tail, dtype=np.int64))))
        self.blocks = [np.zeros((max(1, min(capacity, self.block_rows)), *tail), dtype=np.float32)]
        self.reserve(capacity)

    @property
    def capacity(self) -> int:
        return sum(len(block) for block in self.blocks)

    @property
    def nbytes(self) -> int:
        return sum(int(block.nbytes) for block in self.blocks)

    def reserve(self, rows: int) -> None:
        """Make room for `rows` rows (unwritten: no page is touched before its rows are)."""
        first, size = self.blocks[0], self.block_rows
        if len(self.blocks) == 1 and len(first) < min(rows, size):
            grown = np.empty((min(size, max(rows, 2 * len(first))), *self.tail), dtype=np.float32)
            grown[: len(first)] = first
            self.blocks[0] = grown
        while self.capacity < rows:
            self.blocks.append(np.empty((size, *self.tail), dtype=np.float32))

    def __getitem__(self, row: int) -> np.ndarray:
        return self.blocks[row // self.block_rows][row % self.block_rows]  # type: ignore[no-any-return]

    def __setitem__(self, row: int, value: Any) -> None:
        self.blocks[row // self.block_rows][row % self.block_rows] = value

    def parts(self, count: int, start: int = 0) -> list[tuple[int, np.ndarray]]:
        """(first row, view) of each block's share of rows [start, count)."""
        found = []
        for number, block in enumerate(self.blocks):
            first = number * self.block_rows
            low, high = max(start, first), min(count, first + len(block))
            if low < high:
                found.append((low, block[low - first : high - first]))
        return found

    def head(self, count: int, *, copy: bool = False) -> np.ndarray:
        """Rows [0, count) as one array: a view when they are in one block (unless `copy`), else a copy."""
        parts = [view for _, view in self.parts(count)] or [self.blocks[0][:0]]
        if len(parts) > 1:
            return np.concatenate(parts)
        return parts[0].copy() if copy else parts[0]

    def put(self, start: int, values: np.ndarray) -> None:
        """Write consecutive rows from `start` (room must be reserved)."""
        for first, view in self.parts(start + len(values), start):
            view[...] = values[first - start : first - start + len(view)]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (any order), as one array."""
        if len(self.blocks) == 1:
            return self.blocks[0][rows]  # type: ignore[no-any-return]
        size = self.block_rows
        if len(rows) <= _FEW_ROWS:
            taken = np.empty((len(rows), *self.tail), dtype=np.float32)
            for position, row in enumerate(rows.tolist()):
                taken[position] = self.blocks[row // size][row % size]
            return taken
        numbers, offsets = np.divmod(rows, size)
        taken = np.empty((len(rows), *self.tail), dtype=np.float32)
        for number in np.unique(numbers).tolist():
            chosen = numbers == number
            taken[chosen] = self.blocks[number][offsets[chosen]]
        return taken


class Sketch:
    """Rows projected onto a few principal directions, and the length of what each projection leaves out: an upper
    bound on every row's similarity to a query, read from a tenth of the bytes."""

    def __init__(self, basis: np.ndarray, capacity: int) -> None:
        self.basis = basis  # (SKETCH_DIMENSIONS, dimension), orthonormal rows
        # 132 bytes a row, grown by doubling (at least): the copy stays small (4 MB at 32,768 rows)
        self.rows = np.zeros((capacity, basis.shape[0]), dtype=np.float32)  # each row's projection
        self.rest = np.zeros(capacity, dtype=np.float32)  # the length of what it leaves out

    @classmethod
    def fit(cls, matrix: RowBlocks, count: int) -> Sketch:
        """Fit the directions on a sample of `matrix`'s first `count` rows and sketch them (a few milliseconds)."""
        rng = np.random.default_rng(0)
        picked = np.arange(count) if count <= _SKETCH_SAMPLE else np.sort(rng.choice(count, _SKETCH_SAMPLE, False))
        sketch = cls(_principal_directions(matrix.take(picked), rng), matrix.capacity)
        for start, vectors in matrix.parts(count):
            sketch.put_many(start, vectors)
        return sketch

    def put_many(self, start: int, vectors: np.ndarray) -> None:
        projected = vectors @ self.basis.T
        rest = np.linalg.norm(vectors - projected @ self.basis, axis=1)  # not sqrt(|x|^2 - |px|^2): loses a small rest
        self.rows[start : start + len(vectors)] = projected
        self.rest[start : start + len(vectors)] = rest

    def move(self, source: int, target: int) -> None:
        self.rows[target] = self.rows[source]
        self.rest[target] = self.rest[source]

    def reserve(self, capacity: int) -> None:
        if capacity > len(self.rows):
            capacity = max(capacity, 2 * len(self.rows))
            self.rows, self.rest = _grown(self.rows, capacity), _grown(self.rest, capacity)

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.rest.nbytes)

    def bounds(self, query: Vector, count: int) -> np.ndarray:
        """Each of the first `count` rows' upper bound on its similarity to `query`."""
        projected = self.basis @ query
        query_rest = float(np.linalg.norm(query - projected @ self.basis))
        bound = self.rows[:count] @ projected
        bound += query_rest * self.rest[:count]
        return bound

    def candidates(self, query: Vector, count: int, threshold: float) -> np.ndarray:
        """The rows (of the first `count`) whose similarity to `query` may reach `threshold`."""
        return np.flatnonzero(self.bounds(query, count) >= threshold - _SKETCH_SLACK)


def _grown(array: np.ndarray, capacity: int) -> np.ndarray:
    """`array` with room for `capacity` rows (the new ones zero)."""
    grown = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown


def _principal_directions(sample: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The top SKETCH_DIMENSIONS right singular vectors of `sample` (uncentred: similarities are dot products), by a
    randomised range finder with one power iteration (5 ms for 1,024 x 384; an exact eigh takes 13)."""
    probe = rng.standard_normal((sample.shape[1], SKETCH_DIMENSIONS + 16)).astype(np.float32)
    span, _ = np.linalg.qr(sample @ probe)
    span, _ = np.linalg.qr(sample @ (sample.T @ span))
    _, _, directions = np.linalg.svd(span.T @ sample, full_matrices=False)
    return np.ascontiguousarray(directions[:SKETCH_DIMENSIONS], dtype=np.float32)


class FlatIndex:
    """Brute-force inner-product index: rows of an L2-normalised float32 matrix, keyed by string.

    The matrix grows in blocks (RowBlocks: no add copies more than one block); delete moves the last row into the
    hole (O(1)).
    Search is one matrix-vector product: exact, and fast enough for partitions up to ~10^5 entries.
    """

    def __init__(self, dimension: int, initial_capacity: int = 64) -> None:
        if dimension <= 0:
            raise InvalidInputError(f"dimension must be positive, got {dimension}")
        self.dimension = dimension
        self._matrix = RowBlocks((dimension,), max(1, initial_capacity))
        self._keys: list[str] = []
        self._rows: dict[str, int] = {}
        self._sketch: Sketch | None = None
        self._sketched_at = 0  # the entry count the sketch's directions were fitted at
        self._futile = 0  # searches in a row the sketch did not narrow
        self._paused = 0  # searches left before the sketch is read again
        self._scored_share = 0.0  # of late, the share of rows a search scored exactly (sketch_narrows)
        self._probed = False  # whether probe_narrowness has run (or a search has)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    @property
    def nbytes(self) -> int:
        """Bytes held by the vector matrix and its sketch (allocated capacity, not just the used rows)."""
        return self._matrix.nbytes + (0 if self._sketch is None else self._sketch.nbytes)

    def keys(self) -> list[str]:
        """The keys in the index, in row order."""
        return list(self._keys)

    def add(self, key: str, vector: Vector) -> None:
        """Insert or replace the vector of `key`. The vector must already be L2-normalised float32."""
        if vector.shape != (self.dimension,):
            raise InvalidInputError(f"vector has shape {vector.shape}, index dimension is {self.dimension}")
        row = self._rows.get(key)
        if row is None:
            row = len(self._keys)
            if row == self._matrix.capacity:
                self._matrix.reserve(row + 1)
                if self._sketch is not None:
                    self._sketch.reserve(self._matrix.capacity)
            self._keys.append(key)
            self._rows[key] = row
        self._matrix[row] = vector
        count = len(self._keys)
        if self._sketch is not None and count < _SKETCH_REFIT_GROWTH * self._sketched_at:
            self._sketch.put_many(row, self._matrix[row][np.newaxis])
        elif (
            self.dimension >= _SKETCH_MIN_DIMENSION
            and count >= SKETCH_MIN_ENTRIES
            and count >= _SKETCH_REFIT_GROWTH * self._sketched_at
        ):
            self._sketch = Sketch.fit(self._matrix, count)
            self._sketched_at = count

    def remove(self, key: str) -> bool:
        """Remove `key`; True if it was there."""
        row = self._rows.pop(key, None)
        if row is None:
            return False
        last = len(self._keys) - 1
        if row != last:
            moved_key = self._keys[last]
            self._matrix[row] = self._matrix[last]
            if self._sketch is not None:
                self._sketch.move(last, row)
            self._keys[row] = moved_key
            self._rows[moved_key] = row
        self._keys.pop()
        return True

    def clear(self) -> None:
        """Remove every vector (the allocated matrix is kept)."""
        self._keys.clear()
        self._rows.clear()
        self._sketch = None
        self._sketched_at = 0
        self._scored_share = 0.0
        self._probed = False
        self._futile = self._paused = 0

    def _sketched_candidates(self, query: Vector, count: int, threshold: float) -> np.ndarray | None:
        """The rows that may reach `threshold`, from the sketch; None when a full scan reads less (no sketch, a
        low threshold, too many rows left, or a run of such searches: then the sketch rests a while)."""
        if self._sketch is None or threshold < _SKETCH_MIN_THRESHOLD:
            return None
        if self._paused:
            self._paused -= 1
            return None
        with single_threaded_blas():
            rows = self._sketch.candidates(query, count, threshold)
        if len(rows) <= count // _SKETCH_MAX_SHARE:
            self._futile = 0
            return rows
        self._futile += 1
        if self._futile >= _SKETCH_FUTILE_RUN:
            self._futile, self._paused = 0, _SKETCH_PAUSE
        return None

    @property
    def sketch_narrows(self) -> bool:
        """Whether searches score few rows: there is a sketch, and of late they scored at most 1/16 of the rows
        exactly (before any search: as probe_narrowness estimated, or narrow if it has not run)."""
        return self._sketch is not None and self._scored_share <= _NARROW_SHARE

    def probe_narrowness(self) -> None:
        """Before any search has shown it, estimate how narrow searches will be: the sketch's bound for a few of
        the stored rows as queries, at a cache's usual threshold (under a millisecond at 20,000 rows). Stored
        prompts stand in for the queries to come: where they sit near a low-rank subspace (sentence
        embeddings) the bound leaves a handful of rows, where they do not (random vectors) a large share."""
        count = len(self._keys)
        if self._sketch is None or self._probed or count == 0:
            return
        self._probed = True
        shares = [len(self._sketch.candidates(self._matrix[int(row)], count, _PROBE_THRESHOLD)) / count
                  for row in np.linspace(0, count - 1, _PROBES)]  # fmt: skip
        self._scored_share = float(np.mean(shares))

    def search(self, query: Vector, k: int = 1, threshold: float = -1.0) -> list[tuple[str, float]]:
        """Return up to `k` (key, similarity) pairs with similarity >= threshold, best first."""
        count = len(self._keys)
        if count == 0 or k <= 0:
            return []
        if query.shape != (self.dimension,):
            raise InvalidInputError(f"query has shape {query.shape}, index dimension is {self.dimension}")
        rows = self._sketched_candidates(query, count, threshold)
        if self._sketch is not None:  # a moving average of the share of rows scored exactly
            self._probed = True
            self._scored_share += ((1.0 if rows is None else len(rows) / count) - self._scored_share) / _SHARE_MEMORY
        if rows is not None:
            exact = self._matrix.take(rows) @ query
            return self._best(exact, k, threshold, rows)
        with single_threaded_blas():
            parts = [vectors @ query for _, vectors in self._matrix.parts(count)]
        scores = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if k == 1:
            best = int(np.argmax(scores))
            return [(self._keys[best], float(scores[best]))] if scores[best] >= threshold else []
        return self._best(scores, k, threshold)

    def _best(
        self, scores: np.ndarray, k: int, threshold: float, rows: np.ndarray | None = None
    ) -> list[tuple[str, float]]:
        """The `k` best rows at or above `threshold`, best first (ties in row order): `scores` of every row, or of
        `rows` only."""
        keep = np.flatnonzero(scores >= threshold)  # a cache's threshold leaves few: order only those
        if len(keep) > k:
            keep = keep[np.argpartition(-scores[keep], k - 1)[:k]]
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        picked = keep if rows is None else rows[keep]
        return [(self._keys[int(row)], float(score)) for row, score in zip(picked, scores[keep], strict=True)]
