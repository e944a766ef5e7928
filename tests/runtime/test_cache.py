"""One set of behaviours, checked against every cache backend."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator

import pytest
from cloudretail.runtime.cache import (
    Cache,
    CacheUnavailableError,
    MemoryCache,
    RedisCache,
    make_cache,
)


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    # A fresh namespace per test keeps runs on a shared Redis apart.
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    if request.param == "memory":
        backend: Cache = make_cache(None, namespace=namespace)
        assert isinstance(backend, MemoryCache)
    else:
        backend = make_cache(request.getfixturevalue("redis_url"), namespace=namespace)
        assert isinstance(backend, RedisCache)
    try:
        yield backend
    finally:
        await backend.delete_prefix("")
        await backend.close()


async def test_get_returns_what_set_stored(cache: Cache) -> None:
    assert await cache.get("product:1") is None
    await cache.set("product:1", b'{"id": 1}')
    assert await cache.get("product:1") == b'{"id": 1}'
    await cache.set("product:1", "überschrieben")
    assert await cache.get("product:1") == "überschrieben".encode()


async def test_entries_expire_after_their_ttl(cache: Cache) -> None:
    await cache.set("short", b"x", ttl=0.2)
    await cache.set("long", b"y", ttl=30)
    await cache.set("forever", b"z")
    assert await cache.get("short") == b"x"
    await asyncio.sleep(0.35)
    assert await cache.get("short") is None
    assert await cache.get("long") == b"y"
    assert await cache.get("forever") == b"z"


async def test_setting_again_replaces_the_ttl(cache: Cache) -> None:
    await cache.set("k", b"1", ttl=0.2)
    await cache.set("k", b"2")
    await asyncio.sleep(0.35)
    assert await cache.get("k") == b"2"


async def test_delete_reports_whether_the_key_existed(cache: Cache) -> None:
    await cache.set("k", b"v")
    assert await cache.delete("k") is True
    assert await cache.get("k") is None
    assert await cache.delete("k") is False


async def test_delete_prefix_removes_only_matching_keys(cache: Cache) -> None:
    for key in ("products:list:page=1", "products:list:page=2", "products:7", "orders:1"):
        await cache.set(key, b"v")
    # Glob characters in a prefix are literal, not patterns.
    await cache.set("weird*[key]", b"v")
    await cache.set("weirdness", b"v")

    assert await cache.delete_prefix("products:list:") == 2
    assert await cache.get("products:list:page=1") is None
    assert await cache.get("products:7") == b"v"
    assert await cache.get("orders:1") == b"v"
    assert await cache.delete_prefix("weird*[") == 1
    assert await cache.get("weirdness") == b"v"
    assert await cache.delete_prefix("nothing-here") == 0


async def test_delete_prefix_handles_more_keys_than_one_batch(cache: Cache) -> None:
    for number in range(1200):
        await cache.set(f"bulk:{number}", b"v")
    assert await cache.delete_prefix("bulk:") == 1200
    assert await cache.get("bulk:5") is None


async def test_ping(cache: Cache) -> None:
    assert await cache.ping() is True


async def test_invalid_ttl_is_refused(cache: Cache) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await cache.set("k", b"v", ttl=0)


async def test_incr_counts_atomically_under_concurrency(cache: Cache) -> None:
    results = await asyncio.gather(*(cache.incr("hits") for _ in range(50)))
    # Every caller saw its own count: no two read the same value and wrote it back.
    assert sorted(results) == list(range(1, 51))
    assert await cache.get("hits") == b"50"
    assert await cache.incr("hits", -10) == 40
    assert await cache.incr("fresh", 3) == 3


async def test_incr_sets_the_ttl_only_when_it_creates_the_key(cache: Cache) -> None:
    assert await cache.incr("window", ttl=0.3) == 1
    await asyncio.sleep(0.15)
    # A later increment does not extend the window.
    assert await cache.incr("window", ttl=0.3) == 2
    await asyncio.sleep(0.25)
    assert await cache.get("window") is None
    assert await cache.incr("window", ttl=0.3) == 1


async def test_incr_refuses_a_value_that_is_not_an_integer(cache: Cache) -> None:
    await cache.set("text", b"abc")
    with pytest.raises(ValueError, match="integer"):
        await cache.incr("text")


async def test_add_sets_only_when_absent_and_exactly_once(cache: Cache) -> None:
    claims = await asyncio.gather(*(cache.add("claim", str(n), ttl=0.3) for n in range(20)))
    assert claims.count(True) == 1
    winner = claims.index(True)
    assert await cache.get("claim") == str(winner).encode()
    assert await cache.add("claim", b"late") is False
    await asyncio.sleep(0.4)
    assert await cache.add("claim", b"again") is True


async def test_remaining_reports_the_time_to_live(cache: Cache) -> None:
    assert await cache.remaining("absent") is None
    await cache.set("short", b"v", ttl=30)
    left = await cache.remaining("short")
    assert left is not None and 29 < left <= 30
    await cache.set("forever", b"v")
    assert await cache.remaining("forever") == math.inf


async def test_namespaces_keep_services_apart(redis_url: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    product = make_cache(redis_url, namespace=f"product-{suffix}")
    order = make_cache(redis_url, namespace=f"order-{suffix}")
    try:
        await product.set("1", b"product")
        await order.set("1", b"order")
        assert await product.delete_prefix("") == 1
        assert await order.get("1") == b"order"
    finally:
        await order.delete_prefix("")
        await product.close()
        await order.close()


async def test_memory_cache_evicts_least_recently_used() -> None:
    cache = MemoryCache(max_entries=2)
    await cache.set("a", b"1")
    await cache.set("b", b"2")
    await cache.get("a")
    await cache.set("c", b"3")
    assert await cache.get("b") is None
    assert await cache.get("a") == b"1"
    assert await cache.get("c") == b"3"


async def test_unreachable_redis_degrades_to_misses() -> None:
    cache = RedisCache.from_url("redis://127.0.0.1:1/0", timeout=0.5)
    try:
        assert await cache.ping() is False
        await cache.set("k", b"v")
        assert await cache.get("k") is None
        assert await cache.delete("k") is False
        assert await cache.delete_prefix("k") == 0
    finally:
        await cache.close()


async def test_unreachable_redis_fails_loudly_for_counters_and_claims() -> None:
    # A counter read as 0 or a claim read as won would open what they guard: these raise.
    cache = RedisCache.from_url("redis://127.0.0.1:1/0", timeout=0.5)
    try:
        with pytest.raises(CacheUnavailableError):
            await cache.incr("k", ttl=10)
        with pytest.raises(CacheUnavailableError):
            await cache.add("k", b"v", ttl=10)
        with pytest.raises(CacheUnavailableError):
            await cache.remaining("k")
    finally:
        await cache.close()
