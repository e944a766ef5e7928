"""The proxy path over real sockets: routing, forwarding, headers, bodies, CORS, limits."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re

import httpx
from cloudretail.runtime.gateway.config import read_route_file

from tests.gateway.conftest import (
    ROUTES,
    Keys,
    Platform,
    problem,
    running,
    stream_digest,
)

HELMET = {
    "strict-transport-security": "max-age=31536000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def concrete(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "abc123", template)


async def test_every_route_reaches_its_service(
    platform: Platform, client: httpx.AsyncClient, keys: Keys
) -> None:
    admin = keys.bearer("admin")
    routes = read_route_file(ROUTES).routes
    for route in routes:
        path = concrete(route.path)
        response = await client.request(route.method, path, headers=admin)
        assert response.status_code == 200, (route, response.text)
        seen = response.json()
        if path.endswith("jwks.json"):  # the echo app serves real keys there
            assert seen["keys"][0]["kid"] == keys.issuer.kid
            continue
        assert seen["service"] == route.upstream, route
        assert seen["method"] == route.method and seen["path"] == path
    assert {route.upstream for route in routes} == set(platform.states)


async def test_unknown_path_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/nowhere")
    assert response.status_code == 404
    assert problem(response)["detail"] == "no route for /api/nowhere"
    assert (await client.get("/api/products/1/2/3")).status_code == 404
    assert (await client.get("/")).status_code == 404


async def test_known_path_wrong_method_is_a_405_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/orders/1")
    assert response.status_code == 405
    problem(response)
    assert response.headers["allow"] == "GET, HEAD"


async def test_method_query_body_and_status_are_passed_through(
    platform: Platform, client: httpx.AsyncClient, keys: Keys
) -> None:
    body = json.dumps({"items": [1, 2, 3]}).encode()
    response = await client.post(
        "/api/orders?dry_run=1&x=%20y", content=body, headers=keys.bearer()
    )
    assert response.status_code == 200
    seen = response.json()
    assert seen["method"] == "POST" and seen["query"] == "dry_run=1&x=%20y"
    assert seen["body_bytes"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_forwarded_headers_and_correlation_id_reach_the_upstream(
    platform: Platform, client: httpx.AsyncClient, keys: Keys
) -> None:
    token = keys.bearer()
    response = await client.get(
        "/api/orders",
        headers={
            **token,
            "X-Correlation-ID": "trace-123",
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Host": "evil.example",
            "X-Service-Token": "guess",
            "Keep-Alive": "timeout=5",
            "X-Custom": "kept",
        },
    )
    seen = response.json()["headers"]
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == platform.url.removeprefix("http://")
    assert seen["x-correlation-id"] == "trace-123"
    assert response.headers["x-correlation-id"] == "trace-123"
    # Defence in depth: the service sees the token and verifies it too.
    assert seen["authorization"] == token["Authorization"]
    assert seen["x-custom"] == "kept"
    assert "x-service-token" not in seen and "keep-alive" not in seen
    assert seen["host"] == platform.upstreams["order"].url.removeprefix("http://")


async def test_a_malformed_correlation_id_is_replaced(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/products", headers={"X-Correlation-ID": "{bad id}"})
    new_id = response.headers["x-correlation-id"]
    assert new_id != "{bad id}" and len(new_id) == 36
    assert response.json()["headers"]["x-correlation-id"] == new_id


async def test_security_headers_on_proxied_and_gateway_responses(
    client: httpx.AsyncClient,
) -> None:
    proxied = await client.get("/api/products")
    own = await client.get("/api/nowhere")
    for response in (proxied, own):
        for name, value in HELMET.items():
            assert response.headers[name] == value, name
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert proxied.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert own.headers["content-security-policy"].startswith("default-src 'none'")
    # What the upstream says about itself stays behind the gateway.
    assert "server" not in proxied.headers and "x-powered-by" not in proxied.headers


async def test_cors_preflight_and_actual_request(client: httpx.AsyncClient) -> None:
    origin = "http://localhost:3000"
    preflight = await client.options(
        "/api/products/1",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == origin
    assert set(preflight.headers["access-control-allow-methods"].split(", ")) == {
        "GET",
        "PUT",
        "PATCH",
        "DELETE",
        "OPTIONS",
    }
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    assert preflight.headers["access-control-max-age"] == "600"

    refused = await client.options(
        "/api/products",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers

    actual = await client.get("/api/products", headers={"Origin": origin})
    assert actual.headers["access-control-allow-origin"] == origin
    assert "Origin" in actual.headers["vary"]
    assert "X-Correlation-ID" in actual.headers["access-control-expose-headers"]
    other = await client.get("/api/products", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


async def test_body_over_the_limit_is_413(keys: Keys) -> None:
    async with running(keys, body_limit_bytes=1000) as platform, platform.client() as client:
        token = keys.bearer()
        with_length = await client.post("/api/orders", content=b"x" * 1001, headers=token)
        assert with_length.status_code == 413
        problem(with_length)

        async def chunks():
            for _ in range(20):
                yield b"y" * 100

        chunked = await client.post("/api/orders", content=chunks(), headers=token)
        assert chunked.status_code == 413
        problem(chunked)

        fits = await client.post("/api/orders", content=b"x" * 1000, headers=token)
        assert fits.status_code == 200 and fits.json()["body_bytes"] == 1000
    assert platform.states["order"].requests[-1]["body_bytes"] == 1000
    assert len(platform.states["order"].requests) == 1


async def test_large_bodies_stream_both_ways(keys: Keys) -> None:
    size = 8 * 1024 * 1024
    async with running(keys, body_limit_bytes=size) as platform, platform.client() as client:
        block = os.urandom(64 * 1024)

        async def upload():
            for _ in range(size // len(block)):
                yield block
                await asyncio.sleep(0)

        expected = hashlib.sha256(block * (size // len(block))).hexdigest()
        uploaded = await client.put(
            "/api/inventory/1", content=upload(), headers=keys.bearer("admin")
        )
        assert uploaded.status_code == 200
        assert uploaded.json()["body_bytes"] == size
        assert uploaded.json()["body_sha256"] == expected

        digest = hashlib.sha256()
        received = 0
        async with client.stream("GET", f"/api/products/1?stream_bytes={size * 3}") as download:
            assert download.status_code == 200
            assert "content-length" not in download.headers
            async for chunk in download.aiter_raw():
                digest.update(chunk)
                received += len(chunk)
        assert received == size * 3
        assert digest.hexdigest() == stream_digest(size * 3)


async def test_head_requests_use_the_get_route(client: httpx.AsyncClient) -> None:
    response = await client.head("/api/products")
    assert response.status_code == 200 and response.content == b""
    # The connection to the upstream is not reused after HEAD; the next request works.
    assert (await client.get("/api/products")).status_code == 200
