"""Rate limiting through the gateway: 100 per minute per client, in process or in Redis."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit

import httpx
import pytest
from cloudretail.runtime.gateway.config import RateLimitSpec
from cloudretail.runtime.gateway.ratelimit import RedisRateLimiter

from tests.gateway.conftest import Keys, eventually, free_port, problem, running, unique_subject
from tests.servers import REDIS_TEST_URL, unreachable


def redis_url() -> str:
    """The test Redis, or a skip (a failure under CLOUDRETAIL_REQUIRE_SERVICES=1)."""

    async def ping() -> None:
        limiter = RedisRateLimiter(REDIS_TEST_URL, 1, 1.0)
        try:
            await limiter._redis.execute("PING")
        finally:
            await limiter.close()

    try:
        asyncio.run(ping())
    except Exception as error:
        unreachable(f"Redis not reachable at {REDIS_TEST_URL}", error)
    return REDIS_TEST_URL


async def assert_101st_is_429(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    remaining = []
    for _ in range(100):
        response = await client.get("/api/orders", headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["ratelimit-limit"] == "100"
        remaining.append(int(response.headers["ratelimit-remaining"]))
    assert remaining == list(range(99, -1, -1))
    refused = await client.get("/api/orders", headers=headers)
    assert refused.status_code == 429
    problem(refused)
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit-remaining"] == "0"
    assert 0 < int(refused.headers["ratelimit-reset"]) <= 60


async def test_101st_request_in_a_minute_is_429_in_process(keys: Keys) -> None:
    async with running(keys) as platform, platform.client() as client:
        await assert_101st_is_429(client, keys.bearer(subject=unique_subject()))
        # Another client (here: another subject) has its own quota.
        other = await client.get("/api/orders", headers=keys.bearer(subject=unique_subject()))
        assert other.status_code == 200
        # Anonymous callers are limited by address, and only reach the gateway's checks.
        anonymous = await client.get("/api/products")
        assert anonymous.headers["ratelimit-remaining"] == "99"


async def test_101st_request_in_a_minute_is_429_with_redis(keys: Keys) -> None:
    url = await asyncio.to_thread(redis_url)
    async with running(keys, redis_url=url) as platform, platform.client() as client:
        await assert_101st_is_429(client, keys.bearer(subject=unique_subject()))


async def test_replicas_share_the_limit_through_redis(keys: Keys) -> None:
    url = await asyncio.to_thread(redis_url)
    token = keys.bearer(subject=unique_subject())
    async with (
        running(keys, redis_url=url) as first,
        running(keys, redis_url=url) as second,
        first.client() as one,
        second.client() as two,
    ):
        for index in range(100):
            response = await (one if index % 2 else two).get("/api/orders", headers=token)
            assert response.status_code == 200
        assert (await one.get("/api/orders", headers=token)).status_code == 429
        assert (await two.get("/api/orders", headers=token)).status_code == 429


async def test_redis_limiter_is_atomic_under_concurrency() -> None:
    url = await asyncio.to_thread(redis_url)
    limiter = RedisRateLimiter(url, 100, 60.0, prefix=f"test:{uuid.uuid4().hex}:")
    try:
        decisions = await asyncio.gather(*(limiter.hit("one-client") for _ in range(150)))
    finally:
        await limiter.close()
    assert sum(decision.allowed for decision in decisions) == 100


async def test_redis_down_falls_back_to_the_in_process_limit() -> None:
    limiter = RedisRateLimiter("redis://127.0.0.1:1/0", 3, 60.0)
    try:
        decisions = [await limiter.hit("client") for _ in range(4)]
    finally:
        await limiter.close()
    assert [decision.allowed for decision in decisions] == [True, True, True, False]


async def test_quota_comes_back_when_the_window_slides(keys: Keys) -> None:
    fast = RateLimitSpec(requests=5, window_seconds=2.0)
    async with running(keys, rate_limit=fast) as platform, platform.client() as client:
        token = keys.bearer(subject=unique_subject())
        statuses = [(await client.get("/api/orders", headers=token)).status_code]
        started = asyncio.get_running_loop().time()  # the first request is logged by now
        statuses += [(await client.get("/api/orders", headers=token)).status_code for _ in range(5)]
        assert statuses == [200] * 5 + [429]
        await asyncio.sleep(max(0.0, started + 2.05 - asyncio.get_running_loop().time()))
        assert (await client.get("/api/orders", headers=token)).status_code == 200


async def test_rate_limit_headers_on_gateway_errors_too(keys: Keys) -> None:
    async with running(keys) as platform, platform.client() as client:
        denied = await client.get("/api/users", headers=keys.bearer("customer"))
        assert denied.status_code == 403
        assert denied.headers["ratelimit-remaining"] == "99"


def closed_port_url() -> str:
    """A Redis URL nothing listens on: connections are refused at once."""
    return f"redis://127.0.0.1:{free_port()}/0"


async def test_gateway_stays_ready_and_limits_in_process_when_redis_refuses(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    small = RateLimitSpec(requests=3, window_seconds=60.0)
    async with (
        running(keys, redis_url=closed_port_url(), rate_limit=small) as platform,
        platform.client() as client,
    ):
        await eventually(
            lambda: platform.gateway is not None and platform.gateway.registry.checked_once
        )
        ready = await client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "healthy"
        assert ready.json()["rate_limit"] == {"store": "redis", "degraded": True}
        metrics = (await client.get("/metrics")).text
        assert "gateway_rate_limiter_degraded 1.0" in metrics
        # Still limited (per process), never unlimited and never an error.
        token = keys.bearer(subject=unique_subject())
        statuses = [(await client.get("/api/orders", headers=token)).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
    # Logged once when it went down, not once per request.
    lost = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert len(lost) == 1 and lost[0].levelname == "WARNING"


class TcpRelay:
    """A loopback TCP relay to the real Redis, to cut the gateway off without touching the
    shared Redis server: stop() closes the listener and every relayed connection."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = parts
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[object]] = set()

    @property
    def url(self) -> str:
        userinfo = self.target.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return self.target._replace(netloc=netloc).geturl()

    async def start(self) -> TcpRelay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        return self

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        host = self.target.hostname or "127.0.0.1"
        up_reader, up_writer = await asyncio.open_connection(host, self.target.port or 6379)
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except ConnectionError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        # The relaying tasks end once both sides are closed; wait so none outlives the test.
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 5)
        self._tasks.clear()


async def test_redis_lost_then_back_degrades_and_recovers(keys: Keys) -> None:
    relay = await TcpRelay(await asyncio.to_thread(redis_url)).start()
    try:
        async with (
            running(keys, redis_url=relay.url) as platform,
            platform.client() as client,
        ):
            token = keys.bearer(subject=unique_subject())
            assert (await client.get("/api/orders", headers=token)).status_code == 200
            ready = await client.get("/health/ready")
            assert ready.status_code == 200
            assert ready.json()["rate_limit"] == {"store": "redis", "degraded": False}
            assert "gateway_rate_limiter_degraded 0.0" in (await client.get("/metrics")).text

            await relay.stop()  # Redis is now unreachable for this gateway
            response = await client.get("/api/orders", headers=token)
            assert response.status_code == 200
            assert response.headers["ratelimit-limit"] == "100"
            ready = await client.get("/health/ready")
            assert ready.status_code == 200
            assert ready.json()["rate_limit"] == {"store": "redis", "degraded": True}
            assert "gateway_rate_limiter_degraded 1.0" in (await client.get("/metrics")).text

            await relay.start()  # reachable again: the next check (at most 1/s) sees it
            for _ in range(60):
                ready = await client.get("/health/ready")
                if not ready.json()["rate_limit"]["degraded"]:
                    break
                await asyncio.sleep(0.1)
            assert ready.status_code == 200
            assert ready.json()["rate_limit"] == {"store": "redis", "degraded": False}
            assert "gateway_rate_limiter_degraded 0.0" in (await client.get("/metrics")).text
    finally:
        await relay.stop()
