"""Real upstreams and a real gateway on loopback ports, all in the test's event loop.

Each server is a uvicorn.Server serving on 127.0.0.1:<free port>; the gateway speaks
HTTP to its upstreams over real sockets, and tests speak HTTP to the gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cloudretail.runtime.auth import (
    TokenIssuer,
    TokenVerifier,
    generate_private_key_pem,
    http_jwks_fetcher,
)
from cloudretail.runtime.gateway import create_gateway
from cloudretail.runtime.gateway.app import Gateway
from cloudretail.runtime.gateway.config import GatewayConfig, InstanceAddress, read_route_file
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

ROOT = Path(__file__).resolve().parents[2]
ROUTES = ROOT / "generated" / "gateway" / "routes.yaml"
ADMIN_ID = "00000000-0000-4000-8000-00000000000a"
CUSTOMER_ID = "00000000-0000-4000-8000-00000000000c"
# Every upstream the route file names (the spec's services and the event bus).
SERVICES = tuple(upstream.name for upstream in read_route_file(ROUTES).upstreams)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """A uvicorn server on 127.0.0.1 that can be stopped (killed) and started again."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Server:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._task = asyncio.create_task(self._server.serve())
        for _ in range(200):
            if self._server.started:
                return self
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        raise RuntimeError(f"server on {self.port} did not start")

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        self._server = None
        self._task = None


class EchoState:
    """What an echo upstream saw, and switches the test can flip."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ready = True
        self.requests: list[dict[str, Any]] = []
        self.jwks: dict[str, Any] = {"keys": []}


def echo_app(state: EchoState) -> FastAPI:
    """An upstream that answers every path with what it received, as JSON."""
    app = FastAPI()

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)

    @app.get("/api/users/.well-known/jwks.json")
    async def jwks() -> dict[str, Any]:
        return state.jwks

    @app.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
    async def echo(request: Request, path: str) -> Response:
        size = request.query_params.get("stream_bytes")
        if size is not None:
            return StreamingResponse(_chunks(int(size)), media_type="application/octet-stream")
        digest = hashlib.sha256()
        length = 0
        async for chunk in request.stream():
            digest.update(chunk)
            length += len(chunk)
        seen = {
            "service": state.name,
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": {key: value for key, value in request.headers.items()},
            "body_bytes": length,
            "body_sha256": digest.hexdigest(),
        }
        state.requests.append(seen)
        return JSONResponse(seen, headers={"Server": "echo", "X-Powered-By": "leak"})

    return app


async def _chunks(size: int) -> AsyncIterator[bytes]:
    block = bytes(range(256)) * 256  # 64 KiB
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        sent += len(piece)
        yield piece


def stream_digest(size: int) -> str:
    block = bytes(range(256)) * 256
    digest = hashlib.sha256()
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        digest.update(piece)
        sent += len(piece)
    return digest.hexdigest()


def make_config(
    instances: Mapping[str, list[str]],
    *,
    default_url: str | None = None,
    **overrides: Any,
) -> GatewayConfig:
    """The generated route table, with instances (and any setting) as the test needs."""
    route_file = read_route_file(ROUTES)
    file_overrides = {
        key: overrides.pop(key)
        for key in ("rate_limit", "body_limit_bytes", "timeout_seconds", "circuit_breaker")
        if key in overrides
    }
    if file_overrides:
        route_file = route_file.model_copy(update=file_overrides)
    addresses = {}
    for upstream in route_file.upstreams:
        urls = instances.get(upstream.name) or [default_url or f"http://127.0.0.1:{free_port()}"]
        addresses[upstream.name] = tuple(InstanceAddress.parse(url) for url in urls)
    settings: dict[str, Any] = {"health_interval": 0.2, "retry_backoff": 0.01, **overrides}
    return GatewayConfig(routes_file=route_file, instances=addresses, **settings)


class Keys:
    """The user service's signing key(s) and the JWKS the gateway fetches."""

    def __init__(self) -> None:
        self.issuer = TokenIssuer(
            generate_private_key_pem(), issuer="cloudretail", audience="cloudretail"
        )

    def token(self, role: str = "customer", subject: str | None = None) -> str:
        return self.issuer.issue(subject or CUSTOMER_ID, role)

    def bearer(self, role: str = "customer", subject: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, subject)}"}


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys()


class CountingFetcher:
    def __init__(self, url: str) -> None:
        self.calls = 0
        self._fetch = http_jwks_fetcher(url)

    async def __call__(self) -> Mapping[str, Any]:
        self.calls += 1
        return await self._fetch()


class Platform:
    """An echo upstream per service (and the event bus) behind a gateway."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.states = {name: EchoState(name) for name in SERVICES}
        self.states["user"].jwks = keys.issuer.jwks()
        self.upstreams = {name: Server(echo_app(state)) for name, state in self.states.items()}
        self.gateway: Gateway | None = None
        self.gateway_server: Server | None = None
        self.fetcher: CountingFetcher | None = None

    async def start(self, **config: Any) -> Platform:
        for server in self.upstreams.values():
            await server.start()
        jwks_url = f"{self.upstreams['user'].url}/api/users/.well-known/jwks.json"
        self.fetcher = CountingFetcher(jwks_url)
        token = read_route_file(ROUTES).token
        verifier = TokenVerifier(
            self.fetcher,
            issuer="cloudretail",
            audience="cloudretail",
            min_refresh_interval=0,
            roles=token.roles if token else None,  # as create_gateway reads them
        )
        redis_url = config.pop("redis_url", None)
        gateway_config = make_config(
            {name: [server.url] for name, server in self.upstreams.items()}, **config
        )
        self.gateway = create_gateway(gateway_config, verifier=verifier, redis_url=redis_url)
        self.gateway_server = await Server(self.gateway).start()
        return self

    @property
    def url(self) -> str:
        assert self.gateway_server is not None
        return self.gateway_server.url

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, **{"timeout": 10, **kwargs})

    async def stop(self) -> None:
        # All at once: each uvicorn server notices should_exit on its next 0.1 s tick.
        servers = [*self.upstreams.values()]
        if self.gateway_server is not None:
            servers.append(self.gateway_server)
        await asyncio.gather(*(server.stop() for server in servers))


@asynccontextmanager
async def running(keys: Keys, **config: Any) -> AsyncIterator[Platform]:
    platform = await Platform(keys).start(**config)
    try:
        yield platform
    finally:
        await platform.stop()


@pytest.fixture
async def platform(keys: Keys) -> AsyncIterator[Platform]:
    async with running(keys) as started:
        yield started


@pytest.fixture
async def client(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with platform.client() as http:
        yield http


def problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/problem+json", response.text
    body: dict[str, Any] = json.loads(response.content)
    assert body["status"] == response.status_code
    assert body["type"] == "about:blank" and body["title"]
    assert body["correlation_id"] == response.headers["x-correlation-id"]
    return body


def unique_subject() -> str:
    return str(uuid.uuid4())


Waiter = Callable[[], bool]


async def eventually(condition: Waiter, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


class RawServer:
    """A TCP server that misbehaves on purpose: `hang` reads and never answers, `close`
    reads the request head and hangs up without a response."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.connections = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            if self.behaviour == "hang":
                await reader.read()  # until the gateway gives up and closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
