"""The dev console and the docs in a real browser (headless Chromium), on a running `up`,
with no route to the internet: every request that is not to 127.0.0.1 is refused and
recorded, and the tests assert there was none.

Screenshots go to the pytest basetemp (the path is printed). Chromium is Debian's
(`apt-get install chromium`), driven by Playwright for Python with that binary; without
either the tests skip, and with CLOUDRETAIL_REQUIRE_SERVICES set they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import REQUIRE_SERVICES
from tests.stack.conftest import Stack, new_product, order_body, start, stop

# Debian's chromium here; Google Chrome on GitHub's Ubuntu runners; CLOUDRETAIL_CHROMIUM
# names another build.
CHROMIUM = next(
    (
        Path(candidate)
        for candidate in (
            os.environ.get("CLOUDRETAIL_CHROMIUM", ""),
            "/usr/bin/chromium",
            "/usr/bin/google-chrome",
        )
        if candidate and Path(candidate).exists()
    ),
    Path("/usr/bin/chromium"),
)
# Screenshots are kept where CI collects them (artifacts/ is ignored by git).
ARTIFACTS = Path(
    os.environ.get("CLOUDRETAIL_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts")
)
MERMAID = Path(__file__).resolve().parents[2] / "runtime/console/static/vendor/mermaid.min.js"
LOOPBACK = "http://127.0.0.1:"
WAIT_MS = 30_000
ROWS = "rows => rows.map(row => row.dataset.{field})"


def missing(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (CLOUDRETAIL_REQUIRE_SERVICES is set: a missing tool fails)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright for Python is not installed (the dev group's `playwright`)")
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    if not MERMAID.exists():
        missing(f"{MERMAID} is missing: `make setup` vendors the Mermaid bundle from npm")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            # Nothing but loopback resolves, whatever the page asks for.
            args=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def stack(chromium: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start(tmp_path_factory.mktemp("console-stack"))
    try:
        yield running
    finally:
        stop(running)


@pytest.fixture(scope="module")
def screenshots() -> Path:
    folder = ARTIFACTS / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


class Offline:
    """A browser context that lets through requests to 127.0.0.1 only; `outside` lists
    every other URL a page tried."""

    def __init__(self, browser: Any) -> None:
        self.outside: list[str] = []
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.context.route("**/*", self._route)

    def _route(self, route: Any) -> None:
        url = route.request.url
        if url.startswith(LOOPBACK):
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()


@pytest.fixture
def offline(chromium: Any) -> Iterator[Offline]:
    browser = Offline(chromium)
    try:
        yield browser
    finally:
        browser.context.close()


def test_the_console_shows_the_stack_and_follows_an_order(
    stack: Stack, offline: Offline, screenshots: Path
) -> None:
    processes = set(stack.state()["processes"])
    page = offline.context.new_page()
    page.goto(stack.gateway + "/_console")

    # Every deployable the supervisor runs, each ready.
    page.wait_for_function(
        """count => {
            const rows = [...document.querySelectorAll('#deployables tbody tr')];
            return rows.length === count && rows.every(row => row.dataset.health === 'ready');
        }""",
        arg=len(processes),
        timeout=WAIT_MS,
    )
    # (Read at once: the page redraws its tables every two seconds.)
    names = page.eval_on_selector_all("#deployables tbody tr", ROWS.format(field="name"))
    assert set(names) == processes
    # The spec's architecture, drawn by the vendored Mermaid.
    page.wait_for_selector("#diagram svg", timeout=WAIT_MS)
    page.screenshot(path=str(screenshots / "console-overview.png"), full_page=True)

    # An order placed through the API, under a correlation id of our own.
    admin = stack.admin()
    product = new_product(stack, admin, stock=5)
    _, customer = stack.customer()
    correlation_id = f"console-{uuid.uuid4().hex[:12]}"
    with httpx.Client(base_url=stack.gateway, timeout=30) as client:
        placed = client.post(
            "/api/orders",
            json=order_body(product),
            headers={**customer, "X-Correlation-ID": correlation_id},
        )
    assert placed.status_code == 201, placed.text
    assert placed.json()["status"] == "confirmed"

    # Its events, and only its events, under its correlation id: the saga from start to end.
    page.click('nav button[data-tab="events"]')
    page.fill("#correlation", correlation_id)
    page.press("#correlation", "Enter")
    # The list shows every recent event until the filtered answer replaces it: wait for that.
    page.wait_for_function(
        """wanted => {
            const rows = [...document.querySelectorAll('#event-list tbody tr')];
            return rows.some(row => row.dataset.type === 'order.confirmed')
                && rows.every(row => row.dataset.correlationId === wanted);
        }""",
        arg=correlation_id,
        timeout=WAIT_MS,
    )
    ids = page.eval_on_selector_all("#event-list tbody tr", ROWS.format(field="correlationId"))
    types = page.eval_on_selector_all("#event-list tbody tr", ROWS.format(field="type"))
    assert set(ids) == {correlation_id}
    assert {"order.created", "inventory.reserved", "payment.completed"} <= set(types)
    page.screenshot(path=str(screenshots / "console-events.png"))

    # The API explorer over the gateway's merged document.
    page.click('nav button[data-tab="explorer"]')
    page.wait_for_selector("#swagger .opblock", timeout=WAIT_MS)
    assert "/api/orders" in page.inner_text("#swagger")
    page.screenshot(path=str(screenshots / "console-explorer.png"))

    assert offline.outside == []


def test_a_service_docs_page_renders_its_operations_offline(
    stack: Stack, offline: Offline, screenshots: Path
) -> None:
    order = stack.state()["processes"]["order"]["url"]
    page = offline.context.new_page()
    response = page.goto(order + "/docs")
    assert response is not None and response.status == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page.wait_for_selector(".opblock", timeout=WAIT_MS)
    assert page.locator(".opblock").count() >= 3
    assert "/api/orders" in page.inner_text("#swagger-ui")
    page.screenshot(path=str(screenshots / "order-docs.png"))
    assert offline.outside == []
