"""Calls to other services (cloudretail.runtime.http.ServiceClients) against real callees on loopback:
what is sent, kept-alive connections, and the failure kinds a saga acts on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.correlation import correlation_id_var
from cloudretail.runtime.http import ServiceCallError, ServiceClients
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.gateway.conftest import Server, free_port

TOKEN = "s" * 32


def _callee(seen: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()

    @app.post("/base/api/things")
    async def make(request: Request) -> Any:
        seen.append(
            {
                "body": await request.json(),
                "headers": dict(request.headers),
                "peer": request.client.port if request.client else None,
            }
        )
        return JSONResponse({"id": len(seen), "echo": await request.json()}, status_code=201)

    @app.post("/base/api/refused")
    async def refused() -> Any:
        return JSONResponse(
            {"title": "Conflict", "status": 409, "detail": "not enough stock"},
            status_code=409,
            media_type="application/problem+json",
        )

    @app.get("/base/api/busy")
    async def busy() -> Any:
        seen.append({"busy": True})
        return JSONResponse({"detail": "try later"}, status_code=503)

    @app.post("/base/api/slow")
    async def slow() -> Any:
        await asyncio.sleep(2)
        return {"late": True}

    @app.delete("/base/api/things/1")
    async def gone() -> Any:
        return Response(status_code=204)

    return app


@pytest.fixture
async def callee() -> AsyncIterator[tuple[Server, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    server = await Server(_callee(seen)).start()
    yield server, seen
    await server.stop()


def _clients(url: str, **options: Any) -> ServiceClients:
    settings = ServiceSettings(
        service_name="caller",
        port=1,
        database_url="sqlite+aiosqlite://",
        service_token=TOKEN,
        service_urls={"stock": url},
    )
    return ServiceClients(settings, **options)


async def test_a_call_sends_json_token_correlation_and_reuses_its_connection(
    callee: tuple[Server, list[dict[str, Any]]],
) -> None:
    server, seen = callee
    clients = _clients(server.url + "/base/")
    token = correlation_id_var.set("req-42")
    try:
        answers = [
            await clients.call(
                "stock",
                "post",
                "/api/things",
                json={"n": n, "name": "Zoë"},
                headers={"Idempotency-Key": f"saga:{n}"},
            )
            for n in range(20)
        ]
        assert await clients.call("stock", "DELETE", "/api/things/1") is None
    finally:
        correlation_id_var.reset(token)
        await clients.close()
    assert answers[3] == {"id": 4, "echo": {"n": 3, "name": "Zoë"}}
    first = seen[0]["headers"]
    assert first["x-service-token"] == TOKEN
    assert first["x-correlation-id"] == "req-42"
    assert first["idempotency-key"] == "saga:0"
    assert first["content-type"] == "application/json"
    assert len({call["peer"] for call in seen}) == 1  # one kept-alive connection


async def test_failures_come_back_as_kinds_a_saga_can_act_on(
    callee: tuple[Server, list[dict[str, Any]]],
) -> None:
    server, seen = callee
    clients = _clients(server.url + "/base", retries=2, backoff=0.01)
    try:
        with pytest.raises(ServiceCallError) as refused:
            await clients.call("stock", "POST", "/api/refused", json={})
        assert (refused.value.kind, refused.value.status) == ("rejected", 409)
        assert refused.value.detail == "not enough stock"
        assert refused.value.problem["title"] == "Conflict"

        with pytest.raises(ServiceCallError) as busy:
            await clients.call("stock", "GET", "/api/busy")
        assert (busy.value.kind, busy.value.status) == ("unavailable", 503)
        assert len(seen) == 3  # an idempotent call is tried again, twice

        with pytest.raises(ServiceCallError) as slow:
            await clients.call("stock", "POST", "/api/slow", json={}, timeout=0.3)
        assert slow.value.kind == "timeout"
    finally:
        await clients.close()

    nobody = _clients(f"http://127.0.0.1:{free_port()}", retries=0)
    try:
        with pytest.raises(ServiceCallError) as unreachable:
            await nobody.call("stock", "POST", "/api/things", json={})
        assert unreachable.value.kind == "unreachable"
        # What a saga may pass on to a client names no internal address.
        assert "127.0.0.1" not in unreachable.value.detail
    finally:
        await nobody.close()


async def test_a_url_that_is_not_http_is_named(callee: tuple[Server, list[dict[str, Any]]]) -> None:
    clients = _clients("ftp://stock.internal")
    with pytest.raises(ValueError, match="STOCK_URL must be an http"):
        await clients.call("stock", "GET", "/api/things")
