"""Health of the components the engine calls: a circuit breaker per component and rate-limited failure logs."""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal

from semantic_llm_cache.errors import CacheBackendError, ConfigurationError


class CircuitOpen(CacheBackendError):
    """A call was not made because its component's circuit is open (it failed or hung just before)."""


class CircuitBreaker:
    """Stops calling a component that fails or hangs.

    After `failures` consecutive failures (a timeout is one) every call fails at once, for `cooldown` seconds;
    then one probe call is let through: success closes the circuit, failure reopens it for twice as long (up to
    `max_cooldown`). Opening and closing each log one WARNING; the calls refused in between log nothing.
    Thread-safe: one cache may be used from several threads and event loops.
    """

    def __init__(
        self,
        name: str,
        failures: int = 3,
        cooldown: float = 1.0,
        max_cooldown: float = 10.0,
        logger: logging.Logger | None = None,
    ) -> None:
        if failures < 1 or cooldown <= 0 or max_cooldown < cooldown:
            raise ConfigurationError("a circuit breaker needs failures >= 1 and 0 < cooldown <= max_cooldown")
        self.name = name
        self.failures = failures
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self._logger = logger or logging.getLogger("semantic_llm_cache")
        self._lock = threading.Lock()
        self._consecutive = 0
        self._opened_at: float | None = None
        self._failed_probes = 0
        self._probing = False
        self.opened = 0
        self.short_circuits = 0
        self._skipped_while_open = 0

    @property
    def _current_cooldown(self) -> float:
        return float(min(self.cooldown * 2.0**self._failed_probes, max(self.max_cooldown, self.cooldown)))

    @property
    def state(self) -> Literal["closed", "open", "half-open"]:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half-open" if self._probing else "open"

    def before_call(self) -> bool:
        """Raise CircuitOpen while open; True if this call is the half-open probe."""
        if self._opened_at is None:  # closed, the common case: no lock (a circuit opening meanwhile lets one by)
            return False
        with self._lock:
            if self._opened_at is None:
                return False
            waited = time.monotonic() - self._opened_at
            if waited < self._current_cooldown or self._probing:
                self.short_circuits += 1
                self._skipped_while_open += 1
                raise CircuitOpen(
                    f"{self.name} is not being called for another {max(0.0, self._current_cooldown - waited):.1f}s "
                    f"(circuit open after {self.failures} consecutive failures)"
                )
            self._probing = True
            return True

    def success(self) -> None:
        if self._opened_at is None and not self._consecutive and not self._probing:
            return  # closed and nothing to reset, the common case: no lock
        with self._lock:
            was_open = self._opened_at is not None
            refused, self._skipped_while_open = self._skipped_while_open, 0
            self._consecutive = 0
            self._opened_at = None
            self._probing = False
            self._failed_probes = 0
        if was_open:
            self._logger.warning(
                "semantic cache: %s answered again; circuit closed (%d calls were skipped while it was open)",
                self.name,
                refused,
            )

    def failure(self, error: BaseException) -> None:
        with self._lock:
            self._consecutive += 1
            if not self._probing and self._consecutive < self.failures:
                return
            if self._probing:  # the probe failed: wait longer before the next one
                self._failed_probes = min(self._failed_probes + 1, 30)
            newly_open = self._opened_at is None
            if newly_open:
                self.opened += 1
            self._opened_at = time.monotonic()
            self._probing = False
            cooldown = self._current_cooldown
        if newly_open:
            self._logger.warning(
                "semantic cache: %s failed %d times in a row (last: %s: %s); serving misses without calling it, "
                "probing again every %.0f-%.0fs (circuit open)",
                self.name,
                self.failures,
                type(error).__name__,
                error,
                cooldown,
                self.max_cooldown,
            )

    def abandon(self, probe: bool) -> None:
        """The call ended without an outcome (the caller was cancelled): let the next call probe."""
        if probe:
            with self._lock:
                self._probing = False


class FailureLog:
    """Logs the first failure of each kind at once, then at most one line per `interval` seconds with a count of
    the failures in between: a failing dependency never writes one line per call."""

    def __init__(self, logger: logging.Logger, interval: float = 30.0) -> None:
        self._logger = logger
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += f" ({suppressed} more like it in the last {self.interval:.0f}s not logged)"
        self._logger.warning(message, *args)


__all__ = ["CircuitBreaker", "CircuitOpen", "FailureLog"]
