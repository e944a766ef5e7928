"""schemathesis against every service's and the gateway's OpenAPI document.

The whole platform runs in the test's event loop: each generated service on its own
uvicorn server and loopback port, migrated onto its own fresh PostgreSQL database and
wired to the others as `up` wires them, with the real gateway in front. schemathesis (its
CLI, in a subprocess) then generates requests from each document, with an admin token and
with a customer token, bounded by examples per operation and a fixed seed, and checks every
answer: no server error, only documented status codes and content types, bodies that match
their schemas. Each run's figures are printed (`pytest -s` shows them).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import yaml
from cloudretail.runtime.auth import (
    TokenIssuer,
    TokenVerifier,
    generate_private_key_pem,
    static_jwks,
)
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.gateway import create_gateway
from cloudretail.runtime.gateway.config import RateLimitSpec

from tests.gateway.conftest import Server, make_config
from tests.servers import drop_database, fresh_database
from tests.services.conftest import migrate

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("user", "product", "order", "inventory", "payment")
SERVICE_TOKEN = "fuzz-service-token-0123456789abcdef"
ADMIN_ID = "00000000-0000-4000-8000-0000000000a1"
CUSTOMER_ID = "00000000-0000-4000-8000-0000000000c1"
EXAMPLES = int(os.environ.get("CLOUDRETAIL_FUZZ_EXAMPLES", "25"))
SEED = 20261130
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    )
)
# The event stream is endless by design (server-sent events): nothing to fuzz there.
EXCLUDED = r"/api/events/stream$"


class Platform:
    """The generated services and the gateway, on loopback ports, in this event loop."""

    def __init__(self) -> None:
        self.issuer = TokenIssuer(
            generate_private_key_pem(), issuer="cloudretail", audience="cloudretail"
        )
        self.servers: dict[str, Server] = {}
        self.databases: list[str] = []

    def token(self, role: str) -> str:
        return self.issuer.issue(ADMIN_ID if role == "admin" else CUSTOMER_ID, role)

    def verifier(self) -> TokenVerifier:
        return TokenVerifier(
            static_jwks(self.issuer.jwks()), issuer="cloudretail", audience="cloudretail"
        )

    async def start(self, stack: AsyncExitStack) -> None:
        modules = {name: f"generated.services.{name}.app" for name in SERVICES}
        modules["eventbus"] = "generated.eventbus.app"
        servers = {name: Server(None) for name in modules}  # ports first: they call each other
        urls = {name: server.url for name, server in servers.items()}
        for name, module_name in modules.items():
            database = fresh_database(f"cloudretail_fuzz_{name}")
            self.databases.append(database)
            url = database.replace("postgresql://", "postgresql+asyncpg://")
            if name != "eventbus":
                await asyncio.to_thread(migrate, name, url)
            module = importlib.import_module(module_name)
            settings = ServiceSettings(
                service_name=name,
                port=module.PORT,
                database_url=url,
                service_token=SERVICE_TOKEN,
                service_urls=urls,
            )
            app = module.create_app(settings)
            app.state.token_verifier = self.verifier()
            servers[name].app = app
            await servers[name].start()
            stack.push_async_callback(servers[name].stop)
        self.servers = servers
        config = make_config(
            {"event_bus": [servers["eventbus"].url]}
            | {name: [servers[name].url] for name in SERVICES},
            rate_limit=RateLimitSpec(requests=1_000_000, window_seconds=60),
        )
        gateway = Server(create_gateway(config, verifier=self.verifier()))
        await gateway.start()
        stack.push_async_callback(gateway.stop)
        self.servers["gateway"] = gateway


@asynccontextmanager
async def platform() -> AsyncIterator[Platform]:
    made = Platform()
    try:
        async with AsyncExitStack() as stack:
            await made.start(stack)
            yield made
    finally:
        for database in made.databases:
            drop_database(database)


async def schemathesis(url: str, headers: list[str], report: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        *(option for header in headers for option in ("--header", header)),
        "--checks",
        CHECKS,
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        "1",
        "--exclude-path-regex",
        EXCLUDED,
        "--request-timeout",
        "20",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        cwd=report.parent,  # its own cache folder goes there, not into the checkout
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode(errors="replace")


def figures(output: str) -> str:
    found = re.search(r"Test cases:\s*\n\s*(.+)", output)
    return found.group(1).strip() if found else "no summary"


@pytest.mark.parametrize("role", ["admin", "customer"])
async def test_every_document_fuzzes_clean(role: str, tmp_path: Path) -> None:
    async with platform() as running:
        token = running.token(role)
        failures: dict[str, str] = {}
        for name in (*SERVICES, "eventbus", "gateway"):
            # Straight to a service, the caller also holds the service token, as the
            # other services do: its internal routes are fuzzed too.
            headers = [f"Authorization: Bearer {token}"]
            if name != "gateway":
                headers.append(f"X-Service-Token: {SERVICE_TOKEN}")
            code, output = await schemathesis(
                running.servers[name].url, headers, tmp_path / f"{name}.xml"
            )
            print(f"schemathesis {name} as {role}: {figures(output)}")
            (tmp_path / f"{name}.txt").write_text(output)
            if code != 0:
                failures[name] = output
    assert not failures, "\n\n".join(
        f"===== {name} =====\n{output}" for name, output in failures.items()
    )


def test_every_spec_route_is_in_its_services_document() -> None:
    """A route missing from its document would never be fuzzed."""
    spec = yaml.safe_load((ROOT / "spec" / "cloudretail.yaml").read_text())
    for name in SERVICES:
        module = importlib.import_module(f"generated.services.{name}.app")
        settings = ServiceSettings(service_name=name, port=module.PORT, database_url="sqlite://")
        document = module.create_app(settings).openapi()
        documented = {
            (method.upper(), path) for path, item in document["paths"].items() for method in item
        }
        wanted = {(route["method"], route["path"]) for route in spec["services"][name]["routes"]}
        assert wanted <= documented, wanted - documented
