"""Circuit breaker for one upstream instance: stop sending traffic to what keeps failing.

Closed: requests flow; `failures` consecutive failures open it. Open: no requests until
`reset_seconds` have passed, so callers get a fast 503 instead of waiting on a dead host.
Half-open: one probe request goes through; its success closes the breaker, its failure
opens it again for another `reset_seconds`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    __slots__ = (
        "_clock",
        "_failures",
        "_opened_at",
        "_probe_started",
        "reset_seconds",
        "state",
        "threshold",
    )

    def __init__(
        self,
        failures: int,
        reset_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = failures
        self.reset_seconds = reset_seconds
        self._clock = clock
        self.state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started = 0.0

    def available(self) -> bool:
        """Would `acquire` let a request through now? (Changes nothing.)"""
        if self.state is BreakerState.CLOSED:
            return True
        now = self._clock()
        if self.state is BreakerState.OPEN:
            return now - self._opened_at >= self.reset_seconds
        # Half-open with a probe in flight. A probe whose outcome was never reported (its
        # client went away) must not keep the instance shut forever: after another reset
        # period a new probe may go.
        return now - self._probe_started >= self.reset_seconds

    def acquire(self) -> bool:
        """Take permission for one request; turns an expired open state into half-open."""
        if self.state is BreakerState.CLOSED:
            return True
        if not self.available():
            return False
        self.state = BreakerState.HALF_OPEN
        self._probe_started = self._clock()
        return True

    def record_success(self) -> None:
        self.state = BreakerState.CLOSED
        self._failures = 0

    def record_failure(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._open()
            return
        self._failures += 1
        if self._failures >= self.threshold:
            self._open()

    def _open(self) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._failures = 0

    @property
    def is_open(self) -> bool:
        return self.state is BreakerState.OPEN
