"""What a production service shows to whoever reaches it: no API docs unless asked for.

/metrics stays: Prometheus scrapes each pod inside the cluster, and the gateway never
routes it (its route table has only the spec's routes), so it is not public.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.services.conftest import ROOT, service_client

DOC_PATHS = ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")
STRONG_TOKEN = "a-production-service-token-of-more-than-32-characters"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/s.db"


async def test_production_serves_no_docs(sqlite_url: str, issuer) -> None:
    async with service_client(
        "product", sqlite_url, issuer, environment="production", service_token=STRONG_TOKEN
    ) as client:
        docs = {path: (await client.get(path)).status_code for path in DOC_PATHS}
        metrics = await client.get("/metrics")
        ready = await client.get("/health/ready")
        listed = await client.get("/api/products")
    assert docs == dict.fromkeys(DOC_PATHS, 404)
    assert metrics.status_code == 200
    assert ready.status_code == 200
    assert listed.status_code == 200


async def test_production_serves_docs_when_a_setting_says_so(sqlite_url: str, issuer) -> None:
    async with service_client(
        "product",
        sqlite_url,
        issuer,
        environment="production",
        service_token=STRONG_TOKEN,
        docs_enabled=True,
    ) as client:
        docs = (await client.get("/docs")).status_code
        schema = await client.get("/openapi.json")
    assert docs == 200
    assert schema.status_code == 200
    assert "/api/products" in schema.json()["paths"]


async def test_development_keeps_its_docs(sqlite_url: str, issuer) -> None:
    async with service_client("product", sqlite_url, issuer) as client:
        assert (await client.get("/docs")).status_code == 200
        assert (await client.get("/openapi.json")).status_code == 200


def test_the_gateway_never_routes_metrics_or_docs() -> None:
    table = yaml.safe_load((ROOT / "generated" / "gateway" / "routes.yaml").read_text())
    paths = [route["path"] for route in table["routes"]]
    prefixes = [upstream["prefix"] for upstream in table["upstreams"]]
    for private in ("/metrics", "/docs", "/openapi.json", "/health/ready"):
        assert private not in paths
        assert not any(private.startswith(prefix) for prefix in prefixes)
