"""The dev console at /_console: off unless `cloudretail up` turns it on (never in the
generated deployments, refused in production), and its API over a supervisor's data dir.
The gateway's own /docs: Swagger UI over the merged document, from local files.
(tests/stack/test_console.py drives both in a browser on a running stack.)"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jwt
import pytest
import yaml
from cloudretail.runtime.auth import generate_private_key_pem
from cloudretail.runtime.console.architecture import diagrams
from cloudretail.runtime.console.events import admin_tokens
from cloudretail.runtime.console.stackview import tail
from cloudretail.runtime.gateway import create_gateway, load_config
from cloudretail.runtime.gateway.config import ConsoleSettings
from cloudretail.runtime.gateway.ratelimit import LocalRateLimiter

from tests.gateway.conftest import ROOT, ROUTES, make_config

GENERATED = ROOT / "generated"
CONSOLE_ENV = "GATEWAY_CONSOLE_DATA_DIR"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A supervisor's data dir: its state (one live process, one gone) and their logs."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "product.log").write_text("".join(f"line {n}\n" for n in range(1, 301)))
    (logs / "supervisor.log").write_text("supervisor | started\n")
    state = {
        "status": "ready",
        "processes": {
            "product": {
                "pid": os.getpid(),
                "url": "http://127.0.0.1:9",  # alive, but nothing answers there
                "log": str(logs / "product.log"),
                "kind": "service",
                "restarts": 2,
            },
            "event_bus": {"pid": None, "url": "http://127.0.0.1:9", "log": "", "kind": "x"},
        },
    }
    (tmp_path / "state.json").write_text(json.dumps(state))
    return tmp_path


async def _client(config_settings: dict[str, object]) -> AsyncIterator[httpx.AsyncClient]:
    gateway = create_gateway(make_config({}, **config_settings))
    transport = httpx.ASGITransport(app=gateway)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client
    finally:
        await gateway.shutdown()


@pytest.fixture
async def console(data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = ConsoleSettings(
        data_dir=str(data_dir),
        architecture=str(GENERATED / "docs" / "architecture.md"),
        events_url="http://127.0.0.1:9/api/events",
    )
    async for client in _client({"console": settings}):
        yield client


def test_the_console_is_off_unless_up_turns_it_on(tmp_path: Path) -> None:
    assert load_config(ROUTES, {}).console is None
    on = load_config(ROUTES, {CONSOLE_ENV: str(tmp_path), "JWT_PRIVATE_KEY_FILE": "/k.pem"})
    assert on.console == ConsoleSettings(data_dir=str(tmp_path), signing_key_file="/k.pem")
    with pytest.raises(ValueError, match="never for a deployment"):
        load_config(ROUTES, {CONSOLE_ENV: str(tmp_path), "ENVIRONMENT": "production"})


def test_only_up_sets_the_console_never_a_generated_deployment(in_root: Path) -> None:
    from cloudretail.generator.stack import StackOptions, plan_stack

    for path in [GENERATED / "compose.yaml", *sorted((GENERATED / "k8s").rglob("*"))]:
        if path.is_file():
            assert "GATEWAY_CONSOLE" not in path.read_text(), path
    compose = yaml.safe_load((GENERATED / "compose.yaml").read_text())
    assert not any(key.startswith("GATEWAY_CONSOLE") for key in _env(compose["services"]))
    plan = plan_stack(Path("spec/cloudretail.yaml"), StackOptions(in_root / ".cloudretail"))
    [gateway] = [process for process in plan.processes if process.kind == "gateway"]
    assert gateway.env[CONSOLE_ENV] == str((in_root / ".cloudretail").resolve())
    assert gateway.env["GATEWAY_CONSOLE_EVENTS_URL"] == "http://127.0.0.1:4000/api/events"
    assert all(CONSOLE_ENV not in p.env for p in plan.processes if p.kind != "gateway")


def _env(services: dict[str, dict[str, object]]) -> list[str]:
    names: list[str] = []
    for service in services.values():
        environment = service.get("environment") or {}
        names += list(environment) if isinstance(environment, dict) else []
    return names


async def test_without_the_setting_there_is_no_console() -> None:
    async for client in _client({}):
        assert (await client.get("/_console")).status_code == 404
        assert (await client.get("/_console/api/deployables")).status_code == 404


async def test_the_page_loads_only_files_of_its_own_origin(console: httpx.AsyncClient) -> None:
    page = await console.get("/_console")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self';" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert page.headers["x-frame-options"] == "DENY"
    # No inline script (every <script> has a src) and no other origin.
    scripts = re.findall(r"<script\b[^>]*>", page.text)
    assert scripts and all(" src=" in script for script in scripts)
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
    for src in re.findall(r"(?:src|href)=\"(/[^\"]+)\"", page.text):
        loaded = await console.get(src)
        assert loaded.status_code == 200, f"{src} (`make setup` vendors the Mermaid bundle)"
    assert "mermaid" in (await console.get("/_console/static/vendor/mermaid.min.js")).text


async def test_processes_health_restarts_and_logs(console: httpx.AsyncClient) -> None:
    body = (await console.get("/_console/api/deployables")).json()
    assert body["stack"] == "ready"
    found = {process["name"]: process for process in body["processes"]}
    assert found["product"]["health"] == "not answering"
    assert found["product"]["restarts"] == 2
    assert found["event_bus"]["health"] == "down"
    # Joined with the gateway's upstream of the same name: its instances and breakers.
    [instance] = found["product"]["upstream"]["instances"]
    assert instance["breaker"] == "closed"
    assert found["event_bus"]["upstream"]["name"] == "event_bus"

    logs = (await console.get("/_console/api/logs/product?lines=3")).json()
    assert logs["lines"] == ["line 298", "line 299", "line 300"]
    supervisor = (await console.get("/_console/api/logs/supervisor")).json()
    assert supervisor["lines"] == ["supervisor | started"]
    unknown = await console.get("/_console/api/logs/nobody")
    assert unknown.status_code == 404 and "no process nobody" in unknown.json()["detail"]


async def test_breakers_and_rate_limit_counters(console: httpx.AsyncClient) -> None:
    for _ in range(3):
        await console.get("/api/products")  # no upstream answers: the breaker counts
    edge = (await console.get("/_console/api/edge")).json()
    limit = edge["rate_limit"]
    assert limit["limit"] == 100 and limit["store"] == "process" and not limit["degraded"]
    assert limit["clients"] == [{"client": "ip:127.0.0.1", "requests": 3}]
    assert {upstream["name"] for upstream in edge["upstreams"]} >= {"product", "order"}


async def test_events_and_traces_say_why_they_are_missing(console: httpx.AsyncClient) -> None:
    events = await console.get("/_console/api/events?correlationId=abc")
    assert events.status_code == 503
    assert "no signing key" in events.json()["detail"]
    missing = await console.get("/_console/api/traces/0123abcd")
    assert missing.status_code == 404 and "no trace" in missing.json()["detail"]
    assert (await console.get("/_console/api/traces")).json() == {"traces": []}


async def test_the_architecture_diagrams_come_from_the_generated_page(
    console: httpx.AsyncClient,
) -> None:
    found = (await console.get("/_console/api/architecture")).json()["diagrams"]
    assert found[0]["title"] == "System"
    assert found[0]["source"].startswith("graph TB")
    assert len(found) == (GENERATED / "docs" / "architecture.md").read_text().count("```mermaid")


def test_diagrams_and_log_tails() -> None:
    page = "# A\n\n## One\n\n```mermaid\ngraph LR\n  a-->b\n```\n\ntext\n\n```mermaid\nx\n```\n"
    assert diagrams(page) == [
        {"title": "One", "source": "graph LR\n  a-->b\n"},
        {"title": "One", "source": "x\n"},
    ]
    assert tail(Path("/nonexistent/log"), 5) == []


def test_the_console_signs_admin_tokens_with_the_stacks_key(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    pem = generate_private_key_pem()
    key.write_text(pem)
    token = admin_tokens(str(key), "shop", "shop")()
    public = jwt.api_jws.get_unverified_header(token)["kid"]
    assert public
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(pem.encode(), password=None)
    claims = jwt.decode(
        token,
        private.public_key(),
        algorithms=["RS256"],
        audience="shop",
        issuer="shop",  # type: ignore[arg-type]
    )
    assert claims["role"] == "admin" and claims["sub"] == "dev-console"


def test_the_limiter_lists_clients_busiest_first() -> None:
    now = [0.0]
    limiter = LocalRateLimiter(10, 60, clock=lambda: now[0])
    for key in ("a", "b", "b", "c"):
        limiter.hit_now(key)
    now[0] = 30.0
    limiter.hit_now("a")
    now[0] = 61.0  # the first four left the window
    assert limiter.usage() == [("a", 1)]


async def test_the_gateway_docs_page_is_offline() -> None:
    async for client in _client({}):
        page = await client.get("/docs")
        assert page.status_code == 200
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "'sha256-" in policy
        assert "unsafe-inline" not in policy
        assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
        assert "url: '/openapi.json'" in page.text
        for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
            asset = await client.get(f"/docs/assets/{name}")
            assert asset.status_code == 200 and asset.content, name
    async for client in _client({"environment": "production"}):
        assert (await client.get("/docs")).status_code == 404


async def test_event_streams_lose_their_names_and_end_when_the_gateway_stops() -> None:
    from cloudretail.runtime.console.app import _unnamed, _until

    async def bus() -> AsyncIterator[bytes]:
        yield b': connected\n\nid: 1\nevent: order.created\ndata: {"id": 1}\n\nid: 2\nev'
        yield b"ent: order.confirmed\ndata: {}\n\n"
        await asyncio.sleep(3600)  # an idle stream: only the stop ends it
        yield b"never"

    stop = asyncio.Event()
    got: list[bytes] = []

    async def read() -> None:
        async for chunk in _until(stop, _unnamed(bus())):
            got.append(chunk)

    reading = asyncio.create_task(read())
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(reading, 1.0)
    assert b"".join(got) == b': connected\n\nid: 1\ndata: {"id": 1}\n\nid: 2\ndata: {}\n\n'
