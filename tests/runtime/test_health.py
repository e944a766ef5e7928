from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cloudretail.runtime.app import create_service_app
from cloudretail.runtime.health import HealthChecks
from prometheus_client.parser import text_string_to_metric_families

from tests.runtime.conftest import DEAD_POSTGRES_URL, make_settings, running

SEED_KEYS = {"status", "timestamp", "uptime", "details"}
SEED_DETAILS = {"database", "cache", "eventBus"}


def dependency_gauge(metrics: str) -> dict[str, float]:
    return {
        sample.labels["dependency"]: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "dependency_up"
    }


def assert_seed_shape(body: dict[str, object], status: str) -> dict[str, bool]:
    assert set(body) == SEED_KEYS
    assert body["status"] == status
    assert isinstance(body["uptime"], int) and body["uptime"] >= 0
    timestamp = body["timestamp"]
    assert isinstance(timestamp, str) and timestamp.endswith("Z")
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - moment) < timedelta(minutes=1)
    details = body["details"]
    assert isinstance(details, dict) and set(details) == SEED_DETAILS
    assert all(isinstance(value, bool) for value in details.values())
    return details


async def test_liveness_answers_without_touching_dependencies() -> None:
    app = create_service_app(make_settings(DEAD_POSTGRES_URL))
    async with running(app) as client:
        response = await client.get("/health/live")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "alive"
    assert set(body) == {"status", "timestamp", "uptime"}


async def test_ready_on_sqlite(tmp_path: Path) -> None:
    app = create_service_app(make_settings(f"sqlite+aiosqlite:///{tmp_path}/ready.db"))
    async with running(app) as client:
        response = await client.get("/health/ready")
    assert response.status_code == 200
    details = assert_seed_shape(response.json(), "healthy")
    assert details == {"database": True, "cache": True, "eventBus": True}


async def test_ready_on_postgres(postgres_url: str) -> None:
    app = create_service_app(make_settings(postgres_url))
    async with running(app) as client:
        response = await client.get("/health/ready")
    assert response.status_code == 200
    assert assert_seed_shape(response.json(), "healthy")["database"] is True


async def test_ready_with_redis_cache(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/ready.db", redis_url=redis_url)
    app = create_service_app(settings)
    async with running(app) as client:
        response = await client.get("/health/ready")
    assert response.status_code == 200
    assert assert_seed_shape(response.json(), "healthy")["cache"] is True


async def test_not_ready_when_the_database_is_down() -> None:
    app = create_service_app(make_settings(DEAD_POSTGRES_URL))
    async with running(app) as client:
        response = await client.get("/health/ready")
        # Liveness stays green: restarting would not bring the database back.
        assert (await client.get("/health/live")).status_code == 200
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    details = assert_seed_shape(response.json(), "unhealthy")
    assert details == {"database": False, "cache": True, "eventBus": True}


async def test_redis_down_is_degraded_not_unready(tmp_path: Path) -> None:
    # Requests still work without the cache (reads go to the database), so the service can
    # serve: readiness stays 200 and says "degraded", and a metric shows which dependency.
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/ready.db", redis_url="redis://127.0.0.1:1/0"
    )
    app = create_service_app(settings)
    async with running(app) as client:
        response = await client.get("/health/ready")
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 200
    details = assert_seed_shape(response.json(), "degraded")
    assert details == {"database": True, "cache": False, "eventBus": True}
    assert dependency_gauge(metrics) == {"database": 1.0, "cache": 0.0, "eventBus": 1.0}


async def test_event_bus_down_is_degraded_not_unready(tmp_path: Path) -> None:
    async def broker_down() -> bool:
        return False

    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/ready.db")
    app = create_service_app(settings, event_bus_check=broker_down)
    async with running(app) as client:
        response = await client.get("/health/ready")
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 200
    assert assert_seed_shape(response.json(), "degraded")["eventBus"] is False
    assert dependency_gauge(metrics)["eventBus"] == 0.0


async def test_the_database_alone_decides_even_when_everything_is_down() -> None:
    async def broker_down() -> bool:
        return False

    settings = make_settings(DEAD_POSTGRES_URL, redis_url="redis://127.0.0.1:1/0")
    app = create_service_app(settings, event_bus_check=broker_down)
    async with running(app) as client:
        response = await client.get("/health/ready")
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 503
    details = assert_seed_shape(response.json(), "unhealthy")
    assert details == {"database": False, "cache": False, "eventBus": False}
    assert dependency_gauge(metrics) == {"database": 0.0, "cache": 0.0, "eventBus": 0.0}


async def test_a_hung_dependency_is_down_within_the_timeout(tmp_path: Path) -> None:
    async def hangs() -> bool:
        await asyncio.sleep(3600)
        return True

    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/ready.db", health_check_timeout=0.3)
    app = create_service_app(settings, event_bus_check=hangs, extra_checks={"critical": hangs})
    async with running(app) as client:
        started = time.perf_counter()
        response = await client.get("/health/ready")
        elapsed = time.perf_counter() - started
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["details"]["eventBus"] is False and body["details"]["critical"] is False
    assert elapsed < 2


async def test_checks_that_raise_or_ignore_cancellation_count_as_down() -> None:
    async def raises() -> bool:
        raise ConnectionError("broker gone")

    async def stubborn() -> bool:
        # Swallows the first cancellation, as badly written client code sometimes does.
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)
        return True

    async def fine() -> bool:
        return True

    checks = HealthChecks(timeout=0.2)
    checks.register("broken", raises)
    checks.register("stubborn", stubborn)
    checks.register("fine", fine)
    started = time.perf_counter()
    assert await checks.run() == {"broken": False, "stubborn": False, "fine": True}
    assert time.perf_counter() - started < 0.5
    await asyncio.sleep(0.6)


async def test_extra_checks_join_the_details(tmp_path: Path) -> None:
    async def payments_provider() -> bool:
        return False

    app = create_service_app(
        make_settings(f"sqlite+aiosqlite:///{tmp_path}/ready.db"),
        extra_checks={"paymentProvider": payments_provider},
    )
    async with running(app) as client:
        response = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["details"]["paymentProvider"] is False


@pytest.mark.parametrize("path", ["/health/live", "/health/ready"])
async def test_health_routes_are_documented(tmp_path: Path, path: str) -> None:
    app = create_service_app(make_settings(f"sqlite+aiosqlite:///{tmp_path}/ready.db"))
    assert path in app.openapi()["paths"]
    async with running(app) as client:
        assert (await client.get(path)).status_code == 200
