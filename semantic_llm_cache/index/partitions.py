"""One vector index per partition, shared by the backends that search in process (memory, SQLite, Redis client).

`PartitionIndexes` maps a partition to a `PartitionIndex`: its vectors (exact flat index, moving to HNSW past
`hnsw_min_entries`, see auto.py), its namespace and the expiry times of vectors that expire. It keeps the
dimension wall (a partition holds vectors of one dimension) and runs the search every such backend needs:
search, check the candidates through the backend's callback (is the entry still there, still live?), drop the
stale ones and search again until every candidate checked is live.

Not thread-safe: the owner serialises calls (a lock, or one worker thread).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator, Hashable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from enum import Enum
from typing import Any, Generic, Literal, TypeVar

from semantic_llm_cache.config import Vector
from semantic_llm_cache.errors import InvalidInputError
from semantic_llm_cache.index.auto import DEFAULT_HNSW_MIN_ENTRIES, partition_index_factory
from semantic_llm_cache.index.protocol import IndexFactory, VectorIndex

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
Found = list[tuple[str, float]]
"""(key, similarity) candidates from a partition's index, best first."""


class Recheck(Enum):
    """What a candidate check may answer instead of one verdict per candidate."""

    SEARCH_AGAIN = "search again"  # the index changed while checking (e.g. a changelog was applied): no verdict


SEARCH_AGAIN = Recheck.SEARCH_AGAIN
Checked = Sequence["T | None"] | Literal[Recheck.SEARCH_AGAIN]
"""A check's answer: per candidate its value (None: stale, drop it from the index), or SEARCH_AGAIN."""


class ExpiryHeap:
    """Lazy expiry: keys with the time they expire, handed back once due (rescheduled or cancelled keys skipped)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}

    def schedule(self, key: str, expires_at: float | None) -> None:
        """Expire `key` at `expires_at` (None: never), replacing what was scheduled for it."""
        if expires_at is None:
            self._due.pop(key, None)
            return
        self._due[key] = expires_at
        heapq.heappush(self._heap, (expires_at, key))

    def cancel(self, key: str) -> None:
        self._due.pop(key, None)

    def pop_due(self, now: float) -> list[str]:
        """The keys due at `now`, forgotten by the heap."""
        heap, due = self._heap, []
        while heap and heap[0][0] <= now:
            expires_at, key = heapq.heappop(heap)
            if self._due.get(key) == expires_at:
                del self._due[key]
                due.append(key)
        return due

    def clear(self) -> None:
        self._heap.clear()
        self._due.clear()


class PartitionIndex:
    """One partition's vectors, its namespace and the expiry of its vectors (the index is built by the first put).

    An empty partition holds no dimension: the wall stands only while vectors are there.
    """

    def __init__(self, namespace: str, index_factory: IndexFactory) -> None:
        self.namespace = namespace
        self.index: VectorIndex | None = None  # built by the first put, for that vector's dimension
        self.expiry = ExpiryHeap()
        self._index_factory = index_factory

    def __len__(self) -> int:
        return 0 if self.index is None else len(self.index)

    @property
    def dimension(self) -> int | None:
        """The dimension of the vectors held, None while the partition is empty."""
        return None if self.index is None or len(self.index) == 0 else self.index.dimension

    @property
    def nbytes(self) -> int:
        return 0 if self.index is None else self.index.nbytes

    def put(self, key: str, vector: Vector, expires_at: float | None = None) -> None:
        """Insert or replace `key`'s vector (unit float32), expiring at `expires_at` (None: with its entry)."""
        if self.index is None or (len(self.index) == 0 and self.index.dimension != vector.size):
            self.index = self._index_factory(int(vector.size))
        self.index.add(key, vector)
        self.expiry.schedule(key, expires_at)

    def discard(self, key: str) -> bool:
        """Remove `key`'s vector; True if it was there."""
        self.expiry.cancel(key)
        return self.index is not None and self.index.remove(key)

    def purge_expired(self, now: float) -> None:
        for key in self.expiry.pop_due(now):
            if self.index is not None:
                self.index.remove(key)

    def search(self, query: Vector, k: int, threshold: float) -> Found:
        if self.index is None or self.index.dimension != query.size:
            return []
        return self.index.search(query, k, threshold)


P = TypeVar("P", bound=PartitionIndex)
_Rounds = Generator[tuple[P, Found], "Checked[T] | None", list[tuple[str, T, float]]]
"""The search loop: yields (index, candidates to check), is sent the check's answer, returns the live matches."""


class PartitionIndexes(Generic[K, P]):
    """Partition -> PartitionIndex, bounded to `capacity` partitions (least recently used dropped) if given.

    hnsw_min_entries: a partition holding more vectors than this moves from the exact flat index to an HNSW graph,
        built in the background (needs the `hnsw` extra); None keeps every partition exact.
    index_factory: builds a partition's index from its dimension (default: from `hnsw_min_entries`).
    keep_empty: keep a partition once its last vector is gone (an owner that remembers it as loaded, or synced).
    partition_type: the PartitionIndex class to build (an owner's subclass carrying its sync state).
    """

    def __init__(
        self,
        partition_type: type[P],
        hnsw_min_entries: int | None = DEFAULT_HNSW_MIN_ENTRIES,
        *,
        index_factory: IndexFactory | None = None,
        keep_empty: bool = False,
        capacity: int | None = None,
    ) -> None:
        self._partition_type = partition_type
        self._index_factory = index_factory if index_factory is not None else partition_index_factory(hnsw_min_entries)
        self._keep_empty = keep_empty
        self._capacity = capacity
        self._partitions: OrderedDict[K, P] = OrderedDict()

    # -- the map --------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._partitions)

    def __contains__(self, partition: object) -> bool:
        return partition in self._partitions

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._partitions))

    def get(self, partition: K) -> P | None:
        """The partition's index (marked as recently used), or None."""
        found = self._partitions.get(partition)
        if found is not None and self._capacity is not None:
            self._partitions.move_to_end(partition)
        return found

    def values(self) -> list[P]:
        return list(self._partitions.values())

    def new(self, namespace: str) -> P:
        """A partition index not yet installed (to be filled, then `install`ed)."""
        return self._partition_type(namespace, self._index_factory)

    def install(self, partition: K, index: P) -> None:
        """Make `index` the partition's, replacing any (and dropping the least recently used beyond capacity)."""
        self._partitions[partition] = index
        self._partitions.move_to_end(partition)
        while self._capacity is not None and len(self._partitions) > self._capacity:
            self._partitions.popitem(last=False)

    def drop(self, partition: K) -> None:
        self._partitions.pop(partition, None)

    def clear(self) -> None:
        self._partitions.clear()

    @property
    def nbytes(self) -> int:
        return sum(index.nbytes for index in self._partitions.values())

    @property
    def vectors(self) -> int:
        return sum(len(index) for index in self._partitions.values())

    # -- vectors ----------------------------------------------------------------------------------------------

    def check_dimension(self, partition: K, dimension: int) -> None:
        """Raise InvalidInputError if the partition holds vectors of another dimension (the dimension wall)."""
        found = self._partitions.get(partition)
        held = None if found is None else found.dimension
        if held is not None and held != dimension:
            raise InvalidInputError(
                f"partition {partition} holds {held}-dimension vectors, got {dimension}: an embedder change must "
                "change the partition (see Scope)"
            )

    def put(self, partition: K, namespace: str, key: str, vector: Vector, expires_at: float | None = None) -> None:
        """Add `key`'s vector to the partition (created with `namespace` if new), behind the dimension wall."""
        self.check_dimension(partition, int(vector.size))
        found = self._partitions.get(partition)
        if found is None:
            found = self.new(namespace)
            self.install(partition, found)
        elif len(found) == 0:
            found.namespace = namespace  # an empty partition takes the namespace of its first vector
        found.put(key, vector, expires_at)

    def discard(self, partition: K, key: str) -> bool:
        """Remove `key`'s vector from the partition; an emptied partition goes unless `keep_empty`."""
        found = self._partitions.get(partition)
        if found is None:
            return False
        removed = found.discard(key)
        if not self._keep_empty and len(found) == 0:
            del self._partitions[partition]
        return removed

    # -- search ---------------------------------------------------------------------------------------------

    def search(
        self,
        partition: K,
        query: Vector,
        k: int,
        threshold: float,
        check: Callable[[P, Found], Checked[T]],
        *,
        now: float,
        extra: int = 0,
    ) -> list[tuple[str, T, float]]:
        """Up to `k` checked live candidates of the partition (best first), for an owner whose check is a call.

        `check(index, candidates)` answers each candidate's value, None for a stale one (dropped, and the
        partition searched again). `extra` more candidates are asked for, so one stale neighbour costs no round.
        """
        rounds: _Rounds[P, T] = self._rounds(partition, query, k, threshold, now, extra)
        step = _step(rounds, None)
        while not isinstance(step, list):
            step = _step(rounds, check(*step))
        return step

    async def search_async(
        self,
        partition: K,
        query: Vector,
        k: int,
        threshold: float,
        check: Callable[[P, Found], Awaitable[Checked[T]]],
        *,
        now: float,
        extra: int = 0,
        lock: AbstractContextManager[Any] | None = None,
        check_first: bool = False,
    ) -> list[tuple[str, T, float]]:
        """`search` for an owner whose check awaits (a round trip); the index is touched only under `lock`.

        `check_first`: the first round is checked even without candidates (the check brings the index up to date).
        """
        guard = lock if lock is not None else nullcontext()
        rounds: _Rounds[P, T] = self._rounds(partition, query, k, threshold, now, extra, check_first)
        with guard:
            step = _step(rounds, None)
        while not isinstance(step, list):
            checked = await check(*step)
            with guard:
                step = _step(rounds, checked)
        return step

    def _rounds(
        self, partition: K, query: Vector, k: int, threshold: float, now: float, extra: int, check_first: bool = False
    ) -> _Rounds[P, T]:
        """The search loop, without the check: yields (index, candidates), is sent the check's answer."""
        first = True
        while True:
            index = self._partitions.get(partition)  # read each round: a check may have rebuilt or emptied it
            if index is None:
                return []
            index.purge_expired(now)
            found = index.search(query, k + extra, threshold)
            if not found and not (first and check_first):
                return []
            first = False
            checked = yield index, found
            if checked is SEARCH_AGAIN or checked is None:
                continue
            verdicts = list(zip(found, checked, strict=True))
            live = [(key, value, score) for (key, score), value in verdicts if value is not None]
            for (key, _), value in verdicts:
                if value is None and self._partitions.get(partition) is index:
                    self.discard(partition, key)
            if len(live) == len(found) or len(live) >= k:  # (no candidates: none there)
                return live


def _step(rounds: _Rounds[P, T], answer: Checked[T] | None) -> tuple[P, Found] | list[tuple[str, T, float]]:
    """Send the check's answer into the search loop: the next candidates to check, or the result."""
    try:
        return rounds.send(answer)
    except StopIteration as done:
        return list(done.value)
