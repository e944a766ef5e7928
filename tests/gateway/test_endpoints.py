"""The gateway's own endpoints, a generated service behind it, and the process entry point."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest
from cloudretail.runtime.auth import TokenVerifier, static_jwks
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.gateway import create_gateway
from cloudretail.runtime.gateway.config import GatewayConfig

from tests.gateway.conftest import (
    ROOT,
    EchoState,
    Keys,
    Platform,
    Server,
    echo_app,
    free_port,
    make_config,
    problem,
    running,
)


async def test_health_live(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json()["status"] == "alive"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_ready_needs_a_healthy_instance_of_every_upstream(keys: Keys) -> None:
    async with running(keys) as platform, platform.client() as client:
        ready = await client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        assert all(ready.json()["details"].values())
        platform.states["payment"].ready = False
        assert platform.gateway is not None
        payment = platform.gateway.registry.upstreams["payment"].instances[0]
        for _ in range(100):
            if not payment.healthy:
                break
            await asyncio.sleep(0.05)
        not_ready = await client.get("/health/ready")
        assert not_ready.status_code == 503
        assert not_ready.json()["details"]["payment"] is False
        # Other routes keep working while payment is down.
        assert (await client.get("/api/products")).status_code == 200


async def test_ready_policy_any(keys: Keys) -> None:
    async with running(keys, ready_policy="any") as platform, platform.client() as client:
        await platform.upstreams["payment"].stop()
        assert platform.gateway is not None
        payment = platform.gateway.registry.upstreams["payment"].instances[0]
        for _ in range(100):
            if not payment.healthy:
                break
            await asyncio.sleep(0.05)
        response = await client.get("/health/ready")
        assert response.status_code == 200
        assert response.json()["details"]["payment"] is False


async def test_metrics(client: httpx.AsyncClient, keys: Keys) -> None:
    await client.get("/api/products/42")
    await client.get("/api/nowhere")
    await client.get("/api/orders")
    text = (await client.get("/metrics")).text
    assert 'http_requests_total{method="GET",route="/api/products/{id}",status="200"} 1.0' in text
    assert 'http_requests_total{method="GET",route="<unmatched>",status="404"} 1.0' in text
    assert 'http_requests_total{method="GET",route="/api/orders",status="401"} 1.0' in text
    assert "gateway_upstream_instance_circuit_open" in text
    assert "http_request_duration_seconds_bucket" in text


async def test_own_endpoints_refuse_other_methods(client: httpx.AsyncClient) -> None:
    response = await client.post("/metrics")
    assert response.status_code == 405
    problem(response)


@pytest.fixture
async def product_service(tmp_path: Path, keys: Keys):
    """The generated product service on SQLite, migrated, verifying tokens with the JWKS."""
    from generated.services.product.app import PORT, create_app
    from tests.services.conftest import migrate

    database_url = f"sqlite+aiosqlite:///{tmp_path}/product.db"
    await asyncio.to_thread(migrate, "product", database_url)
    settings = ServiceSettings(
        service_name="product", port=PORT, database_url=database_url, service_token="t" * 32
    )
    app = create_app(settings)
    app.state.token_verifier = TokenVerifier(
        static_jwks(keys.issuer.jwks()), issuer="cloudretail", audience="cloudretail"
    )
    server = await Server(app).start()
    yield server
    await server.stop()


async def test_generated_service_behind_the_gateway_and_aggregated_openapi(
    product_service: Server, keys: Keys
) -> None:
    verifier = TokenVerifier(
        static_jwks(keys.issuer.jwks()), issuer="cloudretail", audience="cloudretail"
    )
    gateway = create_gateway(make_config({"product": [product_service.url]}), verifier=verifier)
    server = await Server(gateway).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            created = await client.post(
                "/api/products",
                json={"name": "Lamp", "price": "19.99", "sku": "LAMP-1"},
                headers=keys.bearer("admin"),
            )
            assert created.status_code == 201, created.text
            product_id = created.json()["id"]
            fetched = await client.get(f"/api/products/{product_id}")
            assert fetched.status_code == 200 and fetched.json()["name"] == "Lamp"
            refused = await client.delete(
                f"/api/products/{product_id}", headers=keys.bearer("customer")
            )
            assert refused.status_code == 403
            missing = await client.get("/api/products/00000000-0000-4000-8000-000000000000")
            assert missing.status_code == 404  # the service's own 404, passed through

            document = (await client.get("/openapi.json")).json()
            assert set(document["paths"]) == {"/api/products", "/api/products/{id}"}
            assert set(document["paths"]["/api/products/{id}"]) == {"get", "put", "patch", "delete"}
            post = document["paths"]["/api/products"]["post"]
            assert post["security"] == [{"bearerAuth": []}]
            assert post["x-gateway-roles"] == ["admin"]
            assert "security" not in document["paths"]["/api/products"]["get"]
            assert "ProductCreate" in document["components"]["schemas"]
            # Every other upstream is down; the document still comes, saying so.
            assert "user" in document["x-unavailable-upstreams"]
            assert "product" not in document["x-unavailable-upstreams"]
            refs = json.dumps(document)
            for name in document["components"]["schemas"]:
                assert name in refs
    finally:
        await server.stop()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM semantics are POSIX")
async def test_entry_point_serves_logs_json_and_stops_on_sigterm(keys: Keys) -> None:
    upstream = await Server(echo_app(EchoState("product"))).start()
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PRODUCT_URLS": upstream.url,
        "LOG_LEVEL": "INFO",
        "GATEWAY_HEALTH_INTERVAL": "0.5",
    }
    env.pop("REDIS_URL", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cloudretail.runtime.gateway",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(200):
                try:
                    if (await client.get("/health/live")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            response = await client.get("/api/products", headers={"X-Correlation-ID": "entry-1"})
            assert response.status_code == 200
            assert response.json()["service"] == "product"
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await upstream.stop()
    assert process.returncode in (0, -signal.SIGTERM), stderr.decode()
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "cloudretail.access"]
    mine = [line for line in access if line.get("correlation_id") == "entry-1"]
    assert len(mine) == 1, lines
    assert mine[0]["status"] == 200 and mine[0]["route"] == "/api/products"
    assert mine[0]["upstream"] == "product" and mine[0]["service"] == "gateway"
    assert mine[0]["instance"] == upstream.url


async def test_route_to_platform(platform: Platform) -> None:
    # The fixture platform is reachable (guards the fixtures the other files rely on).
    async with platform.client() as client:
        assert (await client.get("/health/live")).status_code == 200


async def test_ready_names_upstreams_but_no_addresses(keys: Keys) -> None:
    async with running(keys) as platform, platform.client() as client:
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        body = ready.json()
        assert set(body) == {"status", "timestamp", "uptime", "policy", "details", "rate_limit"}
        assert set(body["details"]) == set(platform.upstreams)
        assert body["rate_limit"] == {"store": "process", "degraded": False}
        for server in platform.upstreams.values():
            assert f":{server.port}" not in ready.text, ready.text


def production_config(upstream: Server, **settings: object) -> GatewayConfig:
    return make_config({"product": [upstream.url]}, environment="production", **settings)


@pytest.mark.filterwarnings("ignore:Duplicate Operation ID")  # the echo upstream's document
async def test_production_serves_no_docs_or_metrics_unless_enabled() -> None:
    upstream = await Server(echo_app(EchoState("product"))).start()
    hidden = await Server(create_gateway(production_config(upstream))).start()
    shown = await Server(
        create_gateway(production_config(upstream, expose_docs=True, expose_metrics=True))
    ).start()
    try:
        async with httpx.AsyncClient(base_url=hidden.url, timeout=10) as client:
            for path in ("/metrics", "/openapi.json"):
                response = await client.get(path)
                assert response.status_code == 404, path  # as if there were nothing there
                problem(response)
            # What a load balancer needs is still there, and the API itself.
            assert (await client.get("/health/live")).status_code == 200
            assert (await client.get("/health/ready")).status_code in (200, 503)
            assert (await client.get("/api/products")).status_code == 200
        async with httpx.AsyncClient(base_url=shown.url, timeout=10) as client:
            assert "http_requests_total" in (await client.get("/metrics")).text
            assert "paths" in (await client.get("/openapi.json")).json()
    finally:
        await asyncio.gather(hidden.stop(), shown.stop(), upstream.stop())
