"""A service's /docs works offline: Swagger UI from installed files, a strict policy."""

from __future__ import annotations

import base64
import hashlib
import re

import httpx
import pytest
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.docs import ASSETS, asset, inline_script_hashes, swagger_page
from fastapi import FastAPI


def _app(**settings: object) -> FastAPI:
    from cloudretail.runtime.app import create_service_app

    return create_service_app(
        ServiceSettings(
            service_name="things", port=3999, database_url="sqlite+aiosqlite://", **settings
        ),
        title="Things",
    )


@pytest.fixture
async def client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        yield client


async def test_the_page_loads_swagger_ui_from_this_origin(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"(?:src|href)=\"([^\"]+)\"", page.text)
    assert sorted(urls) == [
        "/docs/assets/favicon.png",
        "/docs/assets/swagger-ui-bundle.js",
        "/docs/assets/swagger-ui.css",
    ]
    assert "cdn" not in page.text.lower()
    for url in urls:
        loaded = await client.get(url)
        assert loaded.status_code == 200 and loaded.content == asset(url.rsplit("/", 1)[1])
    assert (await client.get("/docs/assets/other.js")).status_code == 404
    # ReDoc is not served (see cloudretail.runtime.docs).
    assert (await client.get("/redoc")).status_code == 404


async def test_the_policy_allows_this_origin_and_the_pages_one_script(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/docs")
    policy = page.headers["content-security-policy"]
    [inline] = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}';" in policy
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "http" not in policy


def test_the_assets_are_the_swagger_ui_bundle() -> None:
    assert b"SwaggerUIBundle" in asset("swagger-ui-bundle.js")
    assert asset("favicon.png").startswith(b"\x89PNG")
    assert set(ASSETS) == {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}
    with pytest.raises(KeyError):
        asset("../../etc/passwd")


def test_every_inline_script_is_hashed() -> None:
    page = swagger_page("/x.json", "X")
    assert len(inline_script_hashes(page.html.decode())) == 1
    assert inline_script_hashes("<script>a</script><p><script>b</script>") == (
        base64.b64encode(hashlib.sha256(b"a").digest()).decode(),
        base64.b64encode(hashlib.sha256(b"b").digest()).decode(),
    )


async def test_production_has_no_docs_pages() -> None:
    app = _app(
        environment="production",
        service_token="a-production-service-token-of-more-than-32-characters",
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        for path in ("/docs", "/docs/assets/swagger-ui-bundle.js", "/openapi.json"):
            assert (await client.get(path)).status_code == 404, path
