"""Every service's OpenAPI document says which routes need a bearer token: a client
generator or a fuzzer reads it to know what to send."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.services.conftest import service_client

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["user", "product", "order", "inventory", "payment"]


def spec_routes(service: str) -> dict[tuple[str, str], str]:
    spec = yaml.safe_load((ROOT / "spec" / "cloudretail.yaml").read_text())
    return {
        (route["method"].lower(), route["path"]): route["auth"]
        for route in spec["services"][service]["routes"]
    }


@pytest.fixture(autouse=True)
def isolated_keys(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLOUDRETAIL_DATA_DIR", str(tmp_path / "data"))


@pytest.mark.parametrize("service", SERVICES)
async def test_routes_that_need_a_token_declare_the_bearer_scheme(
    service: str, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/service.db"
    async with service_client(service, url, None) as client:
        document = (await client.get("/openapi.json")).json()
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    for (method, path), auth in spec_routes(service).items():
        operation = document["paths"][path][method]
        declared = operation.get("security", [])
        if auth in ("authenticated", "admin"):
            assert declared == [{"bearer": []}], (method, path)
        else:
            assert declared == [], (method, path, auth)
