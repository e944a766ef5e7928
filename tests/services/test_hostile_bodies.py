"""Bodies a service must refuse before reading them: too large (413), or not JSON (415).

The services are reached directly here, as anything inside the cluster can reach them; the
gateway's own limits are tested in tests/gateway.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cloudretail.generator import load_platform
from cloudretail.runtime.auth import TokenIssuer
from cloudretail.runtime.config import ServiceSettings

from tests.services.conftest import ROOT, SERVICE_TOKEN, migrate, service_client

PROBLEM = "application/problem+json"
MiB = 1024 * 1024
PLATFORM = load_platform(ROOT / "spec" / "cloudretail.yaml")
# The services with a route that takes a body (the event consumers may have none).
SERVICES = [
    service.name
    for service in PLATFORM.services
    if any(route.method in {"POST", "PUT"} for route in service.routes)
]


@pytest.fixture(autouse=True)
def isolated_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDRETAIL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CLOUDRETAIL_ADMIN_EMAIL", raising=False)
    monkeypatch.delenv("CLOUDRETAIL_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("MAX_BODY_BYTES", raising=False)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/s.db"


class CountingBody:
    """A request body that says how much of it the server pulled."""

    def __init__(self, total: int, chunk: int = 64 * 1024) -> None:
        self.total = total
        self.chunk = chunk
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.sent < self.total:
            piece = min(self.chunk, self.total - self.sent)
            self.sent += piece
            yield b" " * piece


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    return body


# -- 14: body size --------------------------------------------------------------------------


async def test_a_declared_oversized_body_is_refused_unread(sqlite_url: str) -> None:
    body = CountingBody(60 * MiB)
    async with service_client("user", sqlite_url, None) as client:
        response = await client.post(
            "/api/users/login",
            content=body,
            headers={"Content-Type": "application/json", "Content-Length": str(60 * MiB)},
        )
    problem = assert_problem(response, 413)
    assert "1048576" in problem["detail"]
    assert body.sent <= 64 * 1024  # at most the first chunk the client pushed


async def test_a_chunked_oversized_body_is_refused_at_the_limit(sqlite_url: str) -> None:
    body = CountingBody(60 * MiB)
    async with service_client("user", sqlite_url, None) as client:
        response = await client.post(
            "/api/users/login", content=body, headers={"Content-Type": "application/json"}
        )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413)
    assert body.sent <= MiB + 2 * body.chunk


@pytest.mark.parametrize("service", SERVICES)
async def test_every_service_limits_bodies(
    service: str, sqlite_url: str, issuer: TokenIssuer, admin: dict[str, str]
) -> None:
    route = next(r for r in PLATFORM.service(service).routes if r.method in {"POST", "PUT"})
    path = route.path.replace("{", "").replace("}", "")
    async with service_client(service, sqlite_url, issuer) as client:
        response = await client.request(
            route.method,
            path,
            content=b"[" + b"0," * MiB + b"0]",
            headers={"Content-Type": "application/json", **admin},
        )
    assert_problem(response, 413)


async def test_the_limit_comes_from_the_spec_and_the_environment(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from generated.services.product.app import settings_from_env

    assert settings_from_env().max_body_bytes == PLATFORM.gateway.body_limit_bytes
    monkeypatch.setenv("MAX_BODY_BYTES", "2048")
    assert settings_from_env().max_body_bytes == 2048


async def test_a_configured_limit_is_enforced_and_a_body_within_it_is_not(
    sqlite_url: str,
) -> None:
    async with service_client("user", sqlite_url, None, max_body_bytes=200) as client:
        small = await client.post("/api/users/login", json={"email": "a@b.c", "password": "x"})
        large = await client.post(
            "/api/users/login", json={"email": "a@b.c", "password": "x" * 300}
        )
    assert small.status_code == 401, small.text
    assert_problem(large, 413)


async def test_a_real_server_answers_413_before_the_body_arrives(tmp_path: Path) -> None:
    """Over a socket: only the headers are sent, and the 413 comes back anyway."""
    url = f"sqlite+aiosqlite:///{tmp_path}/s.db"
    await asyncio.to_thread(migrate, "user", url)
    from generated.services.user.app import create_app

    settings = ServiceSettings(
        service_name="user",
        port=3001,
        database_url=url,
        service_token=SERVICE_TOKEN,
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))  # a free loopback port, never a platform one
    config = uvicorn.Config(
        create_app(settings), log_config=None, access_log=False, timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    writer: asyncio.StreamWriter | None = None
    try:
        while not server.started:
            assert not serving.done()
            await asyncio.sleep(0.01)
        port = listener.getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /api/users/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {60 * MiB}\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    finally:
        if writer is not None:
            writer.close()
        server.should_exit = True
        await serving
        listener.close()
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"application/problem+json" in head


# -- 20: JSON bodies must say they are JSON --------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "application/jsonx"},
        {},  # no Content-Type at all
    ],
)
async def test_a_json_route_refuses_other_media_types(
    tmp_path: Path, issuer: TokenIssuer, admin: dict[str, str], headers: dict[str, str]
) -> None:
    raw = json.dumps({"email": "a@b.c", "password": "x"}).encode()
    product = json.dumps({"name": "Saw", "sku": "S-1", "price": "1.00"}).encode()
    user_db, product_db = (f"sqlite+aiosqlite:///{tmp_path}/{name}.db" for name in "up")
    async with service_client("user", user_db, issuer) as users:
        handler = await users.post("/api/users/login", content=raw, headers=headers)
    async with service_client("product", product_db, issuer) as products:
        crud = await products.post("/api/products", content=product, headers={**headers, **admin})
        count = (await products.get("/api/products")).json()["total"]
    for response in (handler, crud):
        problem = assert_problem(response, 415)
        assert "application/json" in problem["detail"]
    assert count == 0


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "application/merge-patch+json",
    ],
)
async def test_json_media_types_are_accepted(
    sqlite_url: str, issuer: TokenIssuer, admin: dict[str, str], content_type: str
) -> None:
    product = json.dumps({"name": "Saw", "sku": "S-1", "price": "1.00"}).encode()
    async with service_client("product", sqlite_url, issuer) as client:
        response = await client.post(
            "/api/products", content=product, headers={"Content-Type": content_type, **admin}
        )
    assert response.status_code == 201, response.text


async def test_requests_without_a_body_need_no_media_type(sqlite_url: str, issuer, admin) -> None:
    async with service_client("product", sqlite_url, issuer) as client:
        made = await client.post(
            "/api/products", json={"name": "Saw", "sku": "S-1", "price": "1.00"}, headers=admin
        )
        deleted = await client.delete(f"/api/products/{made.json()['id']}", headers=admin)
        listed = await client.get("/api/products", headers={"Content-Type": "text/plain"})
    assert deleted.status_code == 204
    assert listed.status_code == 200


@pytest.mark.parametrize("body", [b"{not json", b"", b'{"email": "a@b.c",'])
async def test_a_handler_route_answers_400_to_a_body_that_is_not_json(
    tmp_path: Path, issuer: TokenIssuer, body: bytes
) -> None:
    async with service_client("user", f"sqlite+aiosqlite:///{tmp_path}/u.db", issuer) as users:
        response = await users.post(
            "/api/users/login", content=body, headers={"Content-Type": "application/json"}
        )
    problem = assert_problem(response, 400)
    assert problem["detail"] == "the request body is not valid JSON"
