"""API docs that work offline: Swagger UI served from installed files, never from a CDN.

FastAPI's default `/docs` page loads Swagger UI from a CDN, so a browser with no route to
the internet (an air-gapped network, a build machine) shows a blank page. The Swagger UI
files come from the `fastapi-offline` package (its `static/` folder holds the
swagger-ui-dist bundle, its stylesheet and FastAPI's favicon; it depends on FastAPI alone),
and the page is FastAPI's own `get_swagger_ui_html` pointed at them. Every docs response
carries a Content-Security-Policy that allows this origin only; the page's one inline
script (Swagger UI's settings) is allowed by its hash, so no other inline script runs.

ReDoc is not served: its bundle injects <style> elements and starts a worker from a blob:
URL, which a policy without 'unsafe-inline' refuses, and Swagger UI shows the same document.

Services mount this with `install_docs(app)`; the gateway (a plain ASGI app) serves the
same page and files through `swagger_page` and `asset`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from cloudretail.runtime.errors import Problem
from fastapi import FastAPI, Response
from fastapi.openapi.docs import get_swagger_ui_html

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
# The files a docs page loads, and their media types.
ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
_PACKAGE = "fastapi_offline"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
# Swagger UI's settings beyond FastAPI's: no online validator badge (it would send the
# document to a third-party service and load its image from there).
_PARAMETERS = {"validatorUrl": None}


class DocsAssetsMissingError(RuntimeError):
    """The Swagger UI files are not installed where the docs expect them."""


@dataclass(frozen=True)
class DocsPage:
    html: bytes
    # The Content-Security-Policy the page needs: this origin, and its inline script's hash.
    policy: str


def content_security_policy(script_hashes: tuple[str, ...] = ()) -> str:
    """A policy for a page that loads only from its own origin. `script_hashes` (base64
    SHA-256 digests) allow those inline scripts and no others."""
    scripts = " ".join(["'self'", *(f"'sha256-{digest}'" for digest in script_hashes)])
    return (
        f"default-src 'none'; script-src {scripts}; style-src 'self'; "
        "img-src 'self' data:; font-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def inline_script_hashes(html: str) -> tuple[str, ...]:
    """The CSP hash of every inline <script> of `html`."""
    return tuple(
        base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        for body in _INLINE_SCRIPT.findall(html)
    )


def swagger_page(openapi_url: str, title: str) -> DocsPage:
    """Swagger UI over the document at `openapi_url`, loading its files from ASSETS_PATH."""
    html = bytes(
        get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters=_PARAMETERS,
        ).body
    ).decode()
    return DocsPage(html.encode(), content_security_policy(inline_script_hashes(html)))


@cache
def asset(name: str) -> bytes:
    """The bytes of one of ASSETS (KeyError for any other name)."""
    if name not in ASSETS:
        raise KeyError(name)
    try:
        return files(_PACKAGE).joinpath("static", name).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise DocsAssetsMissingError(
            f"the Swagger UI file {name} is missing: install {_PACKAGE.replace('_', '-')} "
            f"(a dependency of cloudretail): {error}"
        ) from None


def install_docs(app: FastAPI, openapi_url: str = "/openapi.json") -> None:
    """Serve Swagger UI at DOCS_PATH, its files under ASSETS_PATH, all from this origin."""
    for name in ASSETS:
        asset(name)  # a missing file fails the app's start, not a browser's page
    page = swagger_page(openapi_url, f"{app.title} - Swagger UI")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> Response:
        return Response(
            page.html,
            media_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": page.policy},
        )

    @app.get(ASSETS_PATH + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if name not in ASSETS:
            raise Problem(404, detail=f"no docs file {name}")
        return Response(
            asset(name),
            media_type=ASSETS[name],
            headers={
                "Cache-Control": "public, max-age=86400",
                "X-Content-Type-Options": "nosniff",
            },
        )
