"""Where each upstream's instances are, which are healthy, and which one takes a request.

Health: every `interval` seconds each instance's `GET /health/ready` is probed; an answer
other than 200 ejects it at once (it says it cannot serve, e.g. while it drains to stop),
`unhealthy_after` consecutive probes without an answer eject it too, and the first success
re-admits it.
Balancing: least outstanding requests, ties broken round-robin, so a slow instance
(many requests still open) gets fewer new ones. The circuit breaker has the last word: an
instance whose breaker is open takes nothing even when its probe says healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping

from cloudretail.runtime.gateway.breaker import CircuitBreaker
from cloudretail.runtime.gateway.config import BreakerSpec, InstanceAddress
from cloudretail.runtime.httpclient import ConnectionPool, UpstreamError

logger = logging.getLogger(__name__)

HEALTH_PATH = "/health/ready"


class UpstreamInstance:
    __slots__ = (
        "_pool",
        "address",
        "breaker",
        "health_failures",
        "healthy",
        "host_header",
        "in_flight",
        "passed_once",
        "said_not_ready",
        "upstream",
    )

    def __init__(self, upstream: str, address: InstanceAddress, breaker: CircuitBreaker) -> None:
        self.upstream = upstream
        self.address = address
        self.breaker = breaker
        # Optimistic until the first probe: a gateway that starts before its services
        # should not refuse the first requests on a guess.
        self.healthy = True
        self.passed_once = False
        # Its last answered probe said "not ready" (draining to stop, or its database down):
        # not even a last resort, unlike one whose probes merely went unanswered.
        self.said_not_ready = False
        self.health_failures = 0
        self.in_flight = 0
        self.host_header = f"{address.host}:{address.port}".encode()
        self._pool: ConnectionPool | None = None

    @property
    def url(self) -> str:
        return self.address.url

    @property
    def pool(self) -> ConnectionPool:
        # Made on first use, inside the running loop the gateway serves from.
        if self._pool is None:
            self._pool = ConnectionPool(self.address.host, self.address.port)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


class Upstream:
    """The instances of one service and the choice among them."""

    def __init__(self, name: str, instances: Iterable[UpstreamInstance]) -> None:
        self.name = name
        self.instances = tuple(instances)
        self._turn = 0

    def pick(self, avoid: Iterable[UpstreamInstance] = ()) -> UpstreamInstance | None:
        """An instance for the next attempt, or None when every breaker is open.

        Healthy instances first; if none is healthy, any whose breaker allows and that did
        not itself say it is not ready (probes can lag, and refusing everything on a stale
        probe turns a blip into an outage).
        Instances in `avoid` (already failed this request) are taken only as a last resort.
        """
        avoided = set(avoid)
        for only_healthy, skip_avoided in (
            (True, True),
            (False, True),
            (True, False),
            (False, False),
        ):
            chosen = self._least_loaded(only_healthy, avoided if skip_avoided else set())
            if chosen is not None and chosen.breaker.acquire():
                return chosen
        return None

    def _least_loaded(
        self, only_healthy: bool, avoided: set[UpstreamInstance]
    ) -> UpstreamInstance | None:
        instances = self.instances
        count = len(instances)
        self._turn = (self._turn + 1) % count
        best: UpstreamInstance | None = None
        for offset in range(count):
            instance = instances[(self._turn + offset) % count]
            if only_healthy and not instance.healthy:
                continue
            if instance.said_not_ready:
                continue
            if instance in avoided or not instance.breaker.available():
                continue
            if best is None or instance.in_flight < best.in_flight:
                best = instance
        return best

    @property
    def healthy_count(self) -> int:
        return sum(1 for instance in self.instances if instance.healthy)

    @property
    def all_open(self) -> bool:
        return all(not instance.breaker.available() for instance in self.instances)


class Registry:
    def __init__(
        self,
        instances: Mapping[str, Iterable[InstanceAddress]],
        breaker: BreakerSpec,
        *,
        interval: float = 5.0,
        timeout: float = 2.0,
        unhealthy_after: int = 2,
    ) -> None:
        self.upstreams: dict[str, Upstream] = {
            name: Upstream(
                name,
                (
                    UpstreamInstance(
                        name, address, CircuitBreaker(breaker.failures, breaker.reset_seconds)
                    )
                    for address in addresses
                ),
            )
            for name, addresses in instances.items()
        }
        self.interval = interval
        self.timeout = timeout
        self.unhealthy_after = unhealthy_after
        self.checked_once = False
        self._task: asyncio.Task[None] | None = None

    def all_instances(self) -> list[UpstreamInstance]:
        return [i for upstream in self.upstreams.values() for i in upstream.instances]

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gateway-health-checks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for instance in self.all_instances():
            instance.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.check_all()
            except Exception:
                # A bug in one round must not end health checking for the process's life.
                logger.exception("health check round failed")
            await asyncio.sleep(self.interval)

    async def check_all(self) -> None:
        instances = self.all_instances()
        results = await asyncio.gather(*(self._probe(instance) for instance in instances))
        for instance, ok in zip(instances, results, strict=True):
            self._record(instance, ok)
        self.checked_once = True

    async def _probe(self, instance: UpstreamInstance) -> bool | None:
        """True: ready. False: it answered that it is not (stopping, or its database is
        down). None: no answer (a blip, or gone)."""
        try:
            status, _ = await get(instance.pool, HEALTH_PATH, instance.host_header, self.timeout)
        except (UpstreamError, TimeoutError):
            return None
        return status == 200

    def _record(self, instance: UpstreamInstance, ok: bool | None) -> None:
        if ok is not None:  # what it said stands until it says otherwise
            instance.said_not_ready = not ok
        if ok:
            instance.passed_once = True
            instance.health_failures = 0
            if not instance.healthy:
                instance.healthy = True
                logger.info(
                    "upstream instance re-admitted",
                    extra={"upstream": instance.upstream, "instance": instance.url},
                )
            return
        instance.health_failures += 1
        # A probe that got no answer is a blip for an instance that has served; for one that
        # never answered, it is the only evidence there is. An instance that answers "not
        # ready" (a draining one, say) means it: out at once.
        threshold = self.unhealthy_after if instance.passed_once and ok is None else 1
        if instance.healthy and instance.health_failures >= threshold:
            instance.healthy = False
            logger.warning(
                "upstream instance ejected",
                extra={"upstream": instance.upstream, "instance": instance.url},
            )


async def get(pool: ConnectionPool, path: str, host: bytes, timeout: float) -> tuple[int, bytes]:
    """A whole GET exchange (for probes and documents, not the proxy path).

    Raises UpstreamError subclasses, or TimeoutError past `timeout`.
    """
    async with asyncio.timeout(timeout):
        connection = await pool.acquire()
        try:
            head = b"GET %s HTTP/1.1\r\nhost: %s\r\naccept: application/json\r\n\r\n" % (
                path.encode(),
                host,
            )
            connection.start(head, head_only=False, timeout=timeout)
            await connection.response_head()
            chunks = [chunk async for chunk in connection.body()]
            status = connection.status
        except BaseException:
            connection.abort()
            raise
        connection.finish()
        return status, b"".join(chunks)
