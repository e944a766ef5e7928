"""Every service of the spec: it migrates, starts, answers its probes and serves metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from cloudretail.generator import load_platform
from cloudretail.runtime.auth import TokenIssuer

from tests.services.conftest import ROOT, service_client

PLATFORM = load_platform(ROOT / "spec" / "cloudretail.yaml")
SERVICES = [service.name for service in PLATFORM.services]


@pytest.mark.parametrize("service", SERVICES)
async def test_service_starts_and_is_ready(service: str, database_url: str, issuer: TokenIssuer):
    async with service_client(service, database_url, issuer) as client:
        live = await client.get("/health/live")
        assert live.status_code == 200
        ready = await client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert set(body) == {"status", "timestamp", "uptime", "details"}
        assert body["status"] == "healthy"
        details = {"database": True, "cache": True, "eventBus": True}
        if PLATFORM.service(service).uses_mail:
            details["mail"] = True  # no SMTP_URL: mails wait in the outbox, not an outage
        assert body["details"] == details
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert "http_requests_total" in metrics.text
        assert 'route="/health/ready"' in metrics.text


@pytest.mark.parametrize("service", SERVICES)
async def test_openapi_lists_every_route_of_the_spec(
    service: str, tmp_path: Path, issuer: TokenIssuer
):
    url = f"sqlite+aiosqlite:///{tmp_path}/s.db"
    async with service_client(service, url, issuer) as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    for route in PLATFORM.service(service).routes:
        assert route.method.lower() in paths[route.path], (route.method, route.path)


async def test_service_routes_need_the_service_token(tmp_path: Path, issuer: TokenIssuer):
    url = f"sqlite+aiosqlite:///{tmp_path}/s.db"
    async with service_client("payment", url, issuer) as client:
        missing = await client.post("/internal/payments/charges", json={})
        wrong = await client.post(
            "/internal/payments/charges", json={}, headers={"X-Service-Token": "nope"}
        )
    assert missing.status_code == 401
    assert wrong.status_code == 403


@pytest.mark.parametrize("service", SERVICES)
async def test_a_broker_or_cache_outage_degrades_but_keeps_serving(
    service: str, tmp_path: Path, issuer: TokenIssuer
):
    url = f"sqlite+aiosqlite:///{tmp_path}/s.db"
    async with service_client(
        service,
        url,
        issuer,
        redis_url="redis://127.0.0.1:1/0",
        kafka_bootstrap_servers="127.0.0.1:1",
    ) as client:
        ready = await client.get("/health/ready")
        metrics = (await client.get("/metrics")).text
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "degraded"
    assert body["details"]["database"] is True
    assert body["details"]["cache"] is False
    assert 'dependency_up{dependency="cache"} 0.0' in metrics
    assert 'dependency_up{dependency="database"} 1.0' in metrics


async def test_product_requests_work_without_cache_and_broker(tmp_path: Path, issuer, admin):
    url = f"sqlite+aiosqlite:///{tmp_path}/s.db"
    async with service_client(
        "product",
        url,
        issuer,
        redis_url="redis://127.0.0.1:1/0",
        kafka_bootstrap_servers="127.0.0.1:1",
    ) as client:
        made = await client.post(
            "/api/products", json={"name": "Saw", "sku": "S-1", "price": "1.00"}, headers=admin
        )
        listed = await client.get("/api/products")
        ready = await client.get("/health/ready")
    assert made.status_code == 201, made.text
    assert listed.json()["total"] == 1
    assert ready.status_code == 200
