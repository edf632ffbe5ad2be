"""Single-flight: concurrent identical misses compute once, across the threads and event loops of one cache."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

#: What a flight's future holds when its leader was cancelled or abandoned its stream: a waiter takes over.
LEADER_GONE: Any = object()


@dataclass(frozen=True)
class Ticket:
    """What a caller noted before its lookup: the key's count of finished flights (see `Flights.claim`)."""

    key: str
    finished_before: int


@dataclass(frozen=True)
class Claim:
    """The outcome of `Flights.claim`: lead a new flight (`leader`), or wait for `future` (another's)."""

    future: Future[Any]
    leader: bool


class Flights:
    """The flights under way, keyed by exact key, shared by every thread and event loop using one cache.

    A caller first takes a `ticket`, then looks the prompt up, then `claim`s the key: it joins a flight under
    way, or one that finished while it was looking up (its lookup may have read the backend before that flight
    stored), or else leads a new one. Leaders `finish` with a result, an exception, or LEADER_GONE. The results
    of the last `remember` finished flights are kept for callers whose lookup overlapped them.
    """

    def __init__(self, remember: int = 1024) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, Future[Any]] = {}
        self._finished: OrderedDict[str, tuple[int, Future[Any]]] = OrderedDict()
        self._sequence = 0
        self._remember = remember
        self._unstarted: dict[Future[Any], object] = {}  # stream flights nobody reads yet -> who opened them

    def running(self, key: str) -> Future[Any] | None:
        """The flight of `key` under way, if any."""
        with self._lock:
            return self._active.get(key)

    def ticket(self, key: str) -> Ticket:
        with self._lock:
            finished = self._finished.get(key)
        return Ticket(key, 0 if finished is None else finished[0])

    def claim(self, ticket: Ticket, *, opener: object = None) -> Claim:
        """Join the flight of the ticket's key that runs now or finished since the ticket; else lead one.

        opener: the new flight is a stream not read yet, opened by this task or thread (see `waitable`)."""
        with self._lock:
            active = self._active.get(ticket.key)
            if active is not None:
                return Claim(active, leader=False)
            finished = self._finished.get(ticket.key)
            if finished is not None and finished[0] != ticket.finished_before and _succeeded(finished[1]):
                return Claim(finished[1], leader=False)
            future: Future[Any] = Future()
            self._active[ticket.key] = future
            if opener is not None:
                self._unstarted[future] = opener
            return Claim(future, leader=True)

    def started(self, future: Future[Any]) -> None:
        """The leader's stream is being read: waiting on it now ends."""
        with self._lock:
            self._unstarted.pop(future, None)

    def waitable(self, future: Future[Any], caller: object) -> bool:
        """False for a stream not read yet that `caller` (a task or thread) opened itself: waiting on it there
        would wait forever, so such a caller computes on its own. Any other caller may wait."""
        with self._lock:
            return self._unstarted.get(future, None) != caller

    def finish(self, key: str, future: Future[Any]) -> None:
        """Called by the leader once `future` is resolved: the flight leaves the table, its result is kept."""
        with self._lock:
            self._unstarted.pop(future, None)
            if self._active.get(key) is future:
                del self._active[key]
            self._sequence += 1
            self._finished[key] = (self._sequence, future)
            self._finished.move_to_end(key)
            while len(self._finished) > self._remember:
                self._finished.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._active)


def _succeeded(future: Future[Any]) -> bool:
    return (
        future.done() and not future.cancelled() and future.exception() is None and future.result() is not LEADER_GONE
    )


async def wait_async(future: Future[Any]) -> Any:
    """The flight's result, awaited from any event loop; cancelling the waiter leaves the flight running."""
    return await asyncio.shield(asyncio.wrap_future(future))


__all__ = ["LEADER_GONE", "Claim", "Flights", "Ticket", "wait_async"]
