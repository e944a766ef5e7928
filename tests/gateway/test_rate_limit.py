"""Rate limiting through the gateway: 100 per minute per client, in process or in Redis."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from runtime.gateway.config import RateLimitSpec
from runtime.gateway.ratelimit import RedisRateLimiter
from tests.gateway.conftest import Keys, problem, running, unique_subject
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
