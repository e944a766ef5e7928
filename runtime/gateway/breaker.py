"""Circuit breaker for one upstream instance: stop sending traffic to what keeps failing.

Closed: requests flow; `failures` consecutive failures open it. Open: no requests until
`reset_seconds` have passed, so callers get a fast 503 instead of waiting on a dead host.
Half-open: one probe request goes through; its success closes the breaker, its failure
opens it again for another `reset_seconds`.

What is a failure. The breaker protects callers from an instance that is unhealthy, not
from answers the instance chose to give; counting those would let one client shut a
service for everyone (five requests whose outside provider timed out, each answered 504 on
purpose, would open that service's breaker for every other client). So:

* failures: no connection (refused, reset, lost before the response head), no response
  head in time, and answers that say the instance itself broke: 500 and 502 whatever
  their body, and 503/504 that are *not* `application/problem+json` (a crash page, a
  sidecar or proxy in front of the service);
* answers, which count as successes (the instance was reached and replied on purpose):
  every other status, including a problem+json 503/504 the service sent deliberately
  (a dependency of that one request timed out or is down).

An instance that cannot serve at all says so on `/health/ready`, and the registry's
readiness probes eject it; the breaker need not guess from business answers.
`answer_is_failure` holds the rule for responses; the proxy records transport errors and
timeouts as failures itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

# Statuses that always mean the instance failed, and those that do unless sent on purpose.
_FAILED_STATUSES = frozenset({500, 502})
_UNAVAILABLE_STATUSES = frozenset({503, 504})
_PROBLEM_JSON = b"application/problem+json"


def answer_is_failure(status: int, content_type: bytes | None) -> bool:
    """Does this upstream response count against the instance's breaker? (See above.)"""
    if status in _FAILED_STATUSES:
        return True
    if status in _UNAVAILABLE_STATUSES:
        media_type = (content_type or b"").split(b";", 1)[0].strip().lower()
        return media_type != _PROBLEM_JSON
    return False


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
