"""Faults under a stream of orders, on the real processes and the real broker; each is
followed by the invariant check.

- the broker down for 10 s: every order still succeeds, and every event written meanwhile is
  delivered once the broker is back, each applied once;
- SIGTERM to a service under load: the requests it had in flight complete.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.events.broker import EmbeddedBroker
from runtime.stack import topic_specs
from tests.servers import run_in_own_loop
from tests.stack.conftest import (
    Stack,
    assert_invariants,
    new_product,
    order_body,
    start,
    stop,
)

REPLACEMENTS: list[EmbeddedBroker] = []


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    made = start(tmp_path_factory.mktemp("faults"))
    try:
        yield made
    finally:
        stop(made)
        for broker in REPLACEMENTS:  # a test's stand-in for the broker it killed
            run_in_own_loop(broker.stop)


def _plan(stack: Stack) -> dict[str, Any]:
    plan: dict[str, Any] = json.loads((stack.data_dir / "stack.json").read_text())["plan"]
    return plan


class OrderStream:
    """Orders placed one after another, a customer per thread (each within the gateway's
    rate limit), until stopped."""

    def __init__(self, stack: Stack, product_id: str, customers: list[dict[str, str]]) -> None:
        self.stack = stack
        self.product_id = product_id
        self.results: list[tuple[float, int, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(c,)) for c in customers]

    def _run(self, customer: dict[str, str]) -> None:
        with httpx.Client(base_url=self.stack.gateway, timeout=60.0) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                response = client.post(
                    "/api/orders", json=order_body(self.product_id, 1), headers=customer
                )
                body = response.json() if response.content else {}
                self.results.append((sent, response.status_code, body))
                time.sleep(0.3)

    def __enter__(self) -> OrderStream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)


def _events(stack: Stack, admin: dict[str, str], kind: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    with stack.client() as client:
        offset = 0
        while True:
            page = client.get(
                "/api/events",
                params={"type": kind, "limit": "200", "offset": str(offset)},
                headers=admin,
            ).json()
            items += page["items"]
            offset += 200
            if offset >= page["total"]:
                return items


def test_broker_down_for_ten_seconds(stack: Stack) -> None:
    admin = stack.admin()
    product_id = new_product(stack, admin, stock=400)
    customers = [stack.customer()[1] for _ in range(4)]
    state = stack.state()
    replacement = EmbeddedBroker(
        "127.0.0.1", 9092, topics=topic_specs(_plan(stack)), log_path=stack.data_dir / "b2.log"
    )
    REPLACEMENTS.append(replacement)
    with OrderStream(stack, product_id, customers) as stream:
        time.sleep(3)
        os.kill(state["broker"], signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(10)
        run_in_own_loop(replacement.start)
        time.sleep(5)
    codes = Counter(code for _, code, _ in stream.results)
    assert codes == {201: len(stream.results)}, codes
    during = [body["id"] for sent, _, body in stream.results if sent > killed_at + 0.5]
    assert len(during) >= 10, len(stream.results)

    # Written to the outbox while the broker was away, delivered once it is back.
    def delivered() -> bool:
        seen = {e["data"]["order_id"] for e in _events(stack, admin, "order.confirmed")}
        return set(during) <= seen

    deadline = time.monotonic() + 90
    while not delivered() and time.monotonic() < deadline:
        time.sleep(1)
    confirmed = _events(stack, admin, "order.confirmed")
    per_order = Counter(e["data"]["order_id"] for e in confirmed)
    missing = [o for o in during if per_order[o] == 0]
    assert not missing, f"{len(missing)} of {len(during)} orders' events never arrived"
    assert all(per_order[o] == 1 for o in during), per_order.most_common(3)
    assert_invariants(stack, {product_id: 400})


def test_sigterm_under_load_finishes_in_flight_requests(stack: Stack) -> None:
    """SIGTERM to a service under load through the gateway: it drains (not ready, still
    serving) so the gateway stops sending, finishes what it has, and exits; clients see
    answers or a fast 503 while it is away, never a dropped request or a 5xx from it. The
    supervisor restarts it and the gateway takes it back."""
    admin = stack.admin()
    product_id = new_product(stack, admin, stock=100)
    customers = [stack.customer()[1] for _ in range(6)]
    info = stack.state()["processes"]["product"]
    stopped = threading.Event()

    def browse(index: int) -> list[int]:
        codes = []
        with httpx.Client(base_url=stack.gateway, timeout=30.0) as client:
            while not stopped.is_set():
                response = client.get(
                    f"/api/products/{product_id}", headers=customers[index % len(customers)]
                )
                codes.append(response.status_code)
                time.sleep(0.05)
        return codes

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = [pool.submit(browse, i) for i in range(6)]
        time.sleep(1.0)
        os.kill(info["pid"], signal.SIGTERM)
        time.sleep(4.0)
        stopped.set()
        codes = Counter(code for result in results for code in result.result())
    assert set(codes) <= {200, 503}, codes
    assert codes[200] >= 20, codes

    def back() -> bool:
        with stack.client() as client:
            return client.get(f"/api/products/{product_id}").status_code == 200

    deadline = time.monotonic() + 30
    while not back() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert back(), "the product service did not come back behind the gateway"
    assert_invariants(stack, None)


def test_log_of_faults_has_no_traceback(stack: Stack) -> None:
    logs = Path(stack.data_dir) / "logs"
    for name in ("order", "inventory", "payment", "product"):
        text = (logs / f"{name}.log").read_text()
        assert "Traceback" not in text, f"{name}.log:\n{text[-3000:]}"
