"""A partition's index that is exact (flat) while small and moves to HNSW once it grows past a size.

The move happens in the background: crossing the threshold snapshots the flat index and a daemon thread builds
the HNSW graph from it (hnswlib releases the GIL), while the flat index keeps serving every search, exactly, and
takes every write. Keys written meanwhile are remembered and replayed onto the graph; when few are left the
owner applies them inline and switches over. So no call ever waits for a build, and no entry is lost on the way.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from semantic_llm_cache.config import Vector
from semantic_llm_cache.errors import ConfigurationError
from semantic_llm_cache.index.flat import FlatIndex
from semantic_llm_cache.index.hnsw import (
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_EF_SEARCH,
    DEFAULT_M,
    HNSWIndex,
    hnswlib_available,
)

logger = logging.getLogger(__name__)

#: Partition size (an entry count) above which a partition moves from the exact flat index to HNSW. Below it a flat
#: search (one matrix-vector product) is fast and exact; above it its cost grows linearly while HNSW's barely grows.
DEFAULT_HNSW_MIN_ENTRIES = 20_000
#: A flat index whose sketch narrows its searches (FlatIndex.sketch_narrows: they score a few rows, not all) stays
#: flat up to this many times `hnsw_min_entries`. On the Quora questions' vectors (bundled model) a sketched flat
#: search cost 0.140 ms at 20,000 entries and 0.229 at 35,000, against 0.318 and 0.361 for the HNSW graph (p50, k=4,
#: threshold 0.94; benchmarks/sketched_flat.py): exact, and ahead until about 60,000 (extrapolated). Vectors the
#: sketch cannot narrow (no low-rank structure) move at `hnsw_min_entries` (FlatIndex.probe_narrowness judges it
#: before any search), or later, once searches show it.
SKETCHED_FLAT_FACTOR = 3

_INLINE_CATCH_UP = 32  # writes made during a build that the owner replays inline (~1 ms each); more: background
_BUILD_CHUNK = 4096  # rows per hnswlib call in the background: bounds how long an abandoned build runs on

IndexKind = Literal["flat", "migrating", "hnsw"]


class _FlatIndex(FlatIndex):
    """A FlatIndex that hands out copies of its vectors, for building a graph from it."""

    def snapshot(self) -> tuple[list[str], np.ndarray]:
        count = len(self._keys)
        return list(self._keys), self._matrix.head(count, copy=True)

    def vectors(self, keys: Sequence[str]) -> np.ndarray:
        return self._matrix.take(np.array([self._rows[key] for key in keys], dtype=np.int64))


def _check_min_entries(hnsw_min_entries: object) -> int:
    if isinstance(hnsw_min_entries, bool) or not isinstance(hnsw_min_entries, int) or hnsw_min_entries < 0:
        raise ConfigurationError(
            "hnsw_min_entries must be a non-negative integer (or None for an always-exact index), "
            f"got {hnsw_min_entries!r}"
        )
    return hnsw_min_entries


def renamed_min_entries(
    hnsw_min_entries: int | None, renamed: dict[str, Any], old_name: str = "hnsw_threshold"
) -> int | None:
    """`hnsw_min_entries`, or the value given under its old name (an entry count once named like a similarity),
    with a DeprecationWarning; the old name is accepted for one release. Any other keyword left is a TypeError."""
    if old_name in renamed:
        warnings.warn(f"{old_name} is now hnsw_min_entries", DeprecationWarning, stacklevel=3)
        hnsw_min_entries = renamed.pop(old_name)
    if renamed:
        raise TypeError(f"unexpected keyword argument {next(iter(renamed))!r}")
    return hnsw_min_entries


def __getattr__(name: str) -> Any:
    if name == "DEFAULT_HNSW_THRESHOLD":
        warnings.warn("DEFAULT_HNSW_THRESHOLD is now DEFAULT_HNSW_MIN_ENTRIES", DeprecationWarning, stacklevel=2)
        return DEFAULT_HNSW_MIN_ENTRIES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _BuildWorker:
    """One daemon thread running graph builds in order: one core builds while the other keeps serving.

    A daemon, so an unfinished build never delays interpreter exit (the graph was only a cache of the flat index).
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[None], Callable[[], None]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> Future[None]:
        future: Future[None] = Future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # first use, or after a fork
                self._thread = threading.Thread(target=self._run, name="semantic-cache-hnsw-build", daemon=True)
                self._thread.start()
        self._jobs.put((future, job))
        return future

    def _run(self) -> None:
        while True:
            future, job = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                job()
            except BaseException as exc:  # handed to the owner, which logs it and stays flat
                future.set_exception(exc)
            else:
                future.set_result(None)


_worker = _BuildWorker()
_warned_no_hnswlib = False


class _Abandoned(Exception):
    """The index that wanted this graph is gone; stop building it."""


@dataclass
class _Migration:
    target: HNSWIndex
    step: Future[None]
    started: float
    dirty: dict[str, None] = field(default_factory=dict)  # keys written since the running step's snapshot


def _apply(
    target: HNSWIndex,
    removed: Sequence[str],
    keys: Sequence[str],
    vectors: np.ndarray,
    owner: Callable[[], object] | None = None,
) -> None:
    """Bring `target` to the given state of these keys (removed ones out, the others with these vectors)."""
    for key in removed:
        target.remove(key)
    for start in range(0, len(keys), _BUILD_CHUNK):
        if owner is not None and owner() is None:
            raise _Abandoned
        target.add_many(keys[start : start + _BUILD_CHUNK], vectors[start : start + _BUILD_CHUNK])


class AutoIndex:
    """VectorIndex of one partition: exact FlatIndex up to `hnsw_min_entries` entries, HNSWIndex past it (or past
    SKETCHED_FLAT_FACTOR times that, while the flat index's sketch keeps its searches narrow).

    The move is one-way (a shrinking partition stays on HNSW) and, with `background=True`, never blocks a call:
    see the module docstring. Without hnswlib installed the index stays flat (exact, slower) and logs it once.
    Not thread-safe, like FlatIndex: the owner serialises calls (the build thread only touches its own graph).
    """

    def __init__(
        self,
        dimension: int,
        hnsw_min_entries: int = DEFAULT_HNSW_MIN_ENTRIES,
        *,
        background: bool = True,
        build_threads: int = 1,
        m: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef_search: int = DEFAULT_EF_SEARCH,
        **renamed: Any,
    ) -> None:
        self.hnsw_min_entries = _check_min_entries(renamed_min_entries(hnsw_min_entries, renamed))
        self.dimension = dimension
        self.background = background
        self._flat: _FlatIndex | None = _FlatIndex(dimension)
        self._hnsw: HNSWIndex | None = None
        self._migration: _Migration | None = None
        self._hnsw_options: dict[str, Any] = {
            "m": m,
            "ef_construction": ef_construction,
            "ef_search": ef_search,
            "num_threads": build_threads,
        }
        self._migrate_above = self.hnsw_min_entries  # raised after a failed build, so it is not retried at once
        self.migration_seconds: float | None = None

    @property
    def hnsw_threshold(self) -> int:
        """Deprecated name of `hnsw_min_entries`."""
        warnings.warn("hnsw_threshold is now hnsw_min_entries", DeprecationWarning, stacklevel=2)
        return self.hnsw_min_entries

    # -- what the backends see ----------------------------------------------------------------------------

    @property
    def kind(self) -> IndexKind:
        """Which index serves: "flat", "migrating" (flat, while the graph is built) or "hnsw"."""
        if self._hnsw is not None:
            return "hnsw"
        return "flat" if self._migration is None else "migrating"

    def _active(self) -> FlatIndex | HNSWIndex:
        active = self._hnsw if self._hnsw is not None else self._flat
        assert active is not None
        return active

    def __len__(self) -> int:
        return len(self._active())

    def __contains__(self, key: object) -> bool:
        return key in self._active()

    @property
    def nbytes(self) -> int:
        """Bytes held by the serving index, plus the graph under construction during a move (estimated: the
        build thread is writing it)."""
        total = self._active().nbytes
        if self._migration is not None:
            total += self._migration.target.estimated_nbytes
        return total

    def keys(self) -> list[str]:
        """The keys in the index."""
        return self._active().keys()

    def add(self, key: str, vector: Vector) -> None:
        """Insert or replace the vector of `key` (L2-normalised float32)."""
        if self._hnsw is not None:
            self._hnsw.add(key, vector)
            return
        assert self._flat is not None
        self._flat.add(key, vector)
        if self._migration is not None:
            self._migration.dirty[key] = None
            self._advance()
        elif self._outgrown(self._flat):
            self._start_migration()

    def remove(self, key: str) -> bool:
        """Remove `key`; True if it was there."""
        if self._hnsw is not None:
            return self._hnsw.remove(key)
        assert self._flat is not None
        removed = self._flat.remove(key)
        if removed and self._migration is not None:
            self._migration.dirty[key] = None
            self._advance()
        return removed

    def search(self, query: Vector, k: int = 1, threshold: float = -1.0) -> list[tuple[str, float]]:
        """Up to `k` (key, similarity) pairs with similarity >= threshold, best first."""
        if self._migration is not None:
            self._advance()
        found = self._active().search(query, k, threshold)
        if self._migration is None and self._flat is not None and self._outgrown(self._flat):
            self._start_migration()  # this search may have been the last of a run its sketch could not narrow
        return found

    def _outgrown(self, flat: FlatIndex) -> bool:
        """Whether the flat index should move to HNSW: past `hnsw_min_entries`, unless its sketch still narrows
        its searches (then up to SKETCHED_FLAT_FACTOR times that size)."""
        count = len(flat)
        if count <= self._migrate_above:
            return False
        if count > SKETCHED_FLAT_FACTOR * self._migrate_above:
            return True
        flat.probe_narrowness()  # decided while the entries come in (a load, a rebuild), not at the first lookups
        return not flat.sketch_narrows

    def clear(self) -> None:
        """Remove every vector and go back to a flat index (an unfinished build is abandoned)."""
        self._migration = None
        self._hnsw = None
        self._flat = _FlatIndex(self.dimension)
        self._migrate_above = self.hnsw_min_entries

    def wait(self, timeout: float | None = None) -> bool:
        """Finish a move in progress, waiting for the build thread; True once the index is on HNSW.

        For tests, benchmarks and warm-up; call it from the thread that owns the index.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._migration is not None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            try:
                self._migration.step.exception(timeout=remaining)
            except FutureTimeoutError:  # the builtin TimeoutError only from Python 3.11
                return False
            self._advance()
        return self._hnsw is not None

    # -- the move -----------------------------------------------------------------------------------------

    def _start_migration(self) -> None:
        global _warned_no_hnswlib
        if not hnswlib_available():
            if not _warned_no_hnswlib:
                _warned_no_hnswlib = True
                logger.warning(
                    "a partition holds more than %d vectors but hnswlib is not installed: searching it exactly "
                    "(pip install 'async-semantic-llm-cache[hnsw]' for HNSW)",
                    self.hnsw_min_entries,
                )
            self._migrate_above = 2**62
            return
        assert self._flat is not None
        keys, vectors = self._flat.snapshot()
        target = HNSWIndex(self.dimension, initial_capacity=max(1024, 2 * len(keys)), **self._hnsw_options)
        logger.info("moving a partition of %d vectors to an HNSW index", len(keys))
        self._migration = _Migration(target, self._submit(target, [], keys, vectors), time.perf_counter())
        self._advance()

    def _submit(self, target: HNSWIndex, removed: list[str], keys: list[str], vectors: np.ndarray) -> Future[None]:
        if self.background:
            owner = weakref.ref(self)
            return _worker.submit(lambda: _apply(target, removed, keys, vectors, owner))
        done: Future[None] = Future()
        try:
            _apply(target, removed, keys, vectors)
        except Exception as exc:  # as from the build thread: logged by _advance, and the index stays flat
            done.set_exception(exc)
        else:
            done.set_result(None)
        return done

    def _take_dirty(self, migration: _Migration) -> tuple[list[str], list[str], np.ndarray]:
        assert self._flat is not None
        dirty, migration.dirty = list(migration.dirty), {}
        present = [key for key in dirty if key in self._flat]
        removed = [key for key in dirty if key not in self._flat]
        return removed, present, self._flat.vectors(present)

    def _advance(self) -> None:
        """If the build step finished: replay the writes made meanwhile, inline if few, and switch to the graph."""
        migration = self._migration
        if migration is None or not migration.step.done():
            return
        error = migration.step.exception()
        if error is not None:
            assert self._flat is not None
            self._migration = None
            self._migrate_above = 2 * max(len(self._flat), 1)
            logger.warning("building an HNSW index failed, staying exact for now: %r", error)
            return
        removed, keys, vectors = self._take_dirty(migration)
        if self.background and len(removed) + len(keys) > _INLINE_CATCH_UP:
            migration.step = self._submit(migration.target, removed, keys, vectors)
            return
        _apply(migration.target, removed, keys, vectors)
        self._hnsw = migration.target
        self._flat = None
        self._migration = None
        self.migration_seconds = time.perf_counter() - migration.started
        logger.info("partition moved to HNSW: %d vectors in %.1f s", len(self._hnsw), self.migration_seconds)


def partition_index_factory(
    hnsw_min_entries: int | None = DEFAULT_HNSW_MIN_ENTRIES, **renamed: Any
) -> Callable[[int], FlatIndex | AutoIndex]:
    """What a backend builds per partition, from the dimension: always flat (None), or flat then HNSW past
    `hnsw_min_entries` vectors."""
    hnsw_min_entries = renamed_min_entries(hnsw_min_entries, renamed)
    if hnsw_min_entries is None:
        return FlatIndex
    min_entries = _check_min_entries(hnsw_min_entries)

    def build(dimension: int) -> FlatIndex | AutoIndex:
        return AutoIndex(dimension, min_entries)

    return build
