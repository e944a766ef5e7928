"""The commerce flows end to end, through the gateway, on the local stack with the real
broker: identity, catalog with cache, the order saga and its failure paths."""

from __future__ import annotations

import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from cloudretail.generator import load_platform
from cloudretail.generator.targets import k8s_monitoring
from cloudretail.generator.targets.deploy import build
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.promql import metric_names
from tests.servers import eventually
from tests.stack.conftest import (
    ROOT,
    Stack,
    assert_invariants,
    cli,
    new_product,
    order_body,
    stock_of,
)


def _events(stack: Stack, admin: dict[str, str], **params: str) -> list[dict[str, Any]]:
    with stack.client() as client:
        response = client.get("/api/events", params={**params, "limit": "200"}, headers=admin)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_order_flow_end_to_end(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    admin = stack.admin()
    email, customer = stack.customer()
    with stack.client() as client:
        # Identity: the profile, never the password hash; a duplicate email is refused.
        profile = client.get("/api/users/profile", headers=customer).json()
        assert profile["email"] == email and "password" not in profile
        again = client.post(
            "/api/users/register",
            json={
                "email": email,
                "password": "another pass 1",
                "first_name": "A",
                "last_name": "B",
                "gdpr_consent": True,
            },
        )
        assert again.status_code == 409
        # The admin adds a product and its stock; customers may not.
        product_id = new_product(stack, admin, stock=5, price="12.50")
        refused = client.post(
            "/api/products", json={"name": "x", "price": "1", "sku": "NOPE"}, headers=customer
        )
        assert refused.status_code == 403
        # Browse: a miss, then a hit from the cache.
        first = client.get("/api/products", params={"q": "Test item", "limit": 50})
        second = client.get("/api/products", params={"q": "Test item", "limit": 50})
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")

        placed = client.post(
            "/api/orders",
            json=order_body(product_id, 2),
            headers={**customer, "X-Correlation-ID": "e2e-order-1"},
        )
        assert placed.status_code == 201, placed.text
        order = placed.json()
        assert order["status"] == "confirmed"
        assert order["total_amount"] == "25.00"  # the catalog's price, not the client's
        assert stock_of(stack, product_id) == (3, 0)

        # The saga's events share the request's correlation id, each on its topic.
        wanted = {
            "order.created": "order-events",
            "inventory.reserved": "inventory-events",
            "payment.completed": "payment-events",
            "order.confirmed": "order-events",
        }

        def seen() -> dict[str, str]:
            events = _events(stack, admin, correlationId="e2e-order-1")
            return {e["type"]: e["topic"] for e in events if e["type"] in wanted}

        assert eventually(lambda: seen() == wanted), seen()

        # A declined card and an out-of-stock order leave the stock exactly as it was.
        declined = client.post(
            "/api/orders", json=order_body(product_id, 1, "tok_declined"), headers=customer
        )
        assert declined.status_code == 402, declined.text
        assert declined.headers["content-type"] == "application/problem+json"
        assert declined.json()["order"]["status"] == "cancelled"
        assert stock_of(stack, product_id) == (3, 0)
        short = client.post("/api/orders", json=order_body(product_id, 4), headers=customer)
        assert short.status_code == 409, short.text
        assert short.json()["order"]["status"] == "cancelled"
        assert stock_of(stack, product_id) == (3, 0)

        # Another customer cannot see the order; the owner can, with its timeline.
        _, other = stack.customer()
        assert client.get(f"/api/orders/{order['id']}", headers=other).status_code == 404
        mine = client.get(f"/api/orders/{order['id']}", headers=customer).json()
        assert [step["type"] for step in mine["timeline"]][:1] == ["order.created"]
        assert client.get("/api/orders", headers=other).json()["total"] == 0

        # Cancelling refunds the payment and gives the stock back.
        cancelled = client.post(f"/api/orders/{order['id']}/cancel", headers=customer)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert stock_of(stack, product_id) == (5, 0)
        payment = client.get(f"/api/payments/{order['payment_id']}", headers=customer).json()
        assert payment["status"] == "refunded"


def test_same_idempotency_key_places_one_order(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    product_id = new_product(stack, stack.admin(), stock=10)
    _, customer = stack.customer()
    headers = {**customer, "Idempotency-Key": "checkout-42"}
    with stack.client() as client:
        first = client.post("/api/orders", json=order_body(product_id, 1), headers=headers)
        second = client.post("/api/orders", json=order_body(product_id, 1), headers=headers)
        listed = client.get("/api/orders", headers=customer).json()
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    assert listed["total"] == 1
    assert stock_of(stack, product_id) == (9, 0)


def concurrent_orders(stack: Stack) -> None:
    """100 concurrent orders of one unit against a stock of 20."""
    admin = stack.admin()
    product_id = new_product(stack, admin, stock=20)
    customers = [stack.customer()[1] for _ in range(10)]

    def place(index: int) -> int:
        with httpx.Client(base_url=stack.gateway, timeout=60.0) as client:
            response = client.post(
                "/api/orders", json=order_body(product_id, 1), headers=customers[index % 10]
            )
        return response.status_code

    with ThreadPoolExecutor(max_workers=25) as pool:
        codes = list(pool.map(place, range(100)))
    assert codes.count(201) == 20, Counter(codes)
    assert codes.count(409) == 80, Counter(codes)
    assert stock_of(stack, product_id) == (0, 0)
    with stack.client() as client:
        orders = client.get("/api/orders", params={"limit": 100}, headers=admin).json()["items"]
    confirmed = [
        o
        for o in orders
        if o["status"] == "confirmed" and o["items"][0]["product_id"] == product_id
    ]
    assert len(confirmed) == 20
    with stack.client() as client:
        statuses = [
            client.get(f"/api/payments/{o['payment_id']}", headers=admin).json()["status"]
            for o in confirmed
        ]
    assert statuses == ["completed"] * 20
    assert_invariants(stack, {product_id: 20})


def test_concurrent_orders_never_oversell_sqlite(sqlite_stack: Stack) -> None:
    concurrent_orders(sqlite_stack)


def test_a_crash_between_reserve_and_charge_is_finished_on_restart(sqlite_stack: Stack) -> None:
    import os
    import signal
    import threading

    stack = sqlite_stack
    admin = stack.admin()
    product_id = new_product(stack, admin, stock=5)
    _, customer = stack.customer()
    answers: list[int] = []

    def place() -> None:
        with httpx.Client(base_url=stack.gateway, timeout=60.0) as client:
            response = client.post(
                "/api/orders", json=order_body(product_id, 2, "tok_slow"), headers=customer
            )
            answers.append(response.status_code)

    thread = threading.Thread(target=place)
    thread.start()
    # The slow card holds the saga in its charge step: stock is reserved, payment pending.
    assert eventually(lambda: stock_of(stack, product_id)[1] == 2, timeout=15)
    os.kill(stack.state()["processes"]["order"]["pid"], signal.SIGKILL)
    thread.join(timeout=60)
    assert answers and answers[0] >= 500  # the customer saw the crash

    def settled() -> str | None:
        with stack.client() as client:
            response = client.get("/api/orders", headers=customer)
        if response.status_code != 200 or not response.json()["items"]:
            return None
        status: str = response.json()["items"][0]["status"]
        return status if status in ("confirmed", "cancelled") else None

    final = eventually(settled, timeout=60)
    assert final in ("confirmed", "cancelled")
    with stack.client() as client:
        order = client.get("/api/orders", headers=customer).json()["items"][0]
        quantity, reserved = stock_of(stack, product_id)
        assert reserved == 0
        if final == "confirmed":
            assert quantity == 3
            payment = client.get(f"/api/payments/{order['payment_id']}", headers=admin).json()
            assert payment["status"] == "completed"
        else:
            assert quantity == 5
    assert_invariants(stack, {product_id: 5})


def test_more_paths_of_the_shop(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    admin = stack.admin()
    _, customer = stack.customer()
    _, stranger = stack.customer()
    product_id = new_product(stack, admin, stock=12)
    with stack.client() as client:
        # A card that never answers: the saga gives up in time, nothing is charged or held.
        slow = client.post(
            "/api/orders", json=order_body(product_id, 1, "tok_timeout"), headers=customer
        )
        assert slow.status_code == 504, slow.text
        assert slow.json()["order"]["status"] == "cancelled"
        assert stock_of(stack, product_id) == (12, 0)

        # Stock reaching the reorder level (10) is announced.
        placed = client.post("/api/orders", json=order_body(product_id, 2), headers=customer)
        assert placed.status_code == 201, placed.text
        order = placed.json()

        def low_stock() -> bool:
            events = _events(stack, admin, type="inventory.low_stock")
            return any(e["data"]["product_id"] == product_id for e in events)

        assert eventually(low_stock)

        # The admin moves the order along; customers may not; skipping a step is refused.
        path = f"/api/orders/{order['id']}/status"
        assert (
            client.patch(path, json={"status": "processing"}, headers=customer).status_code == 403
        )
        skip = client.patch(path, json={"status": "delivered"}, headers=admin)
        assert skip.status_code == 409
        for status in ("processing", "shipped", "delivered"):
            moved = client.patch(path, json={"status": status}, headers=admin)
            assert moved.status_code == 200, moved.text
            assert moved.json()["status"] == status
        delivered = client.post(f"/api/orders/{order['id']}/cancel", headers=customer)
        assert delivered.status_code == 409  # too late to cancel

        # Paying again for a settled order is refused; a stranger does not even see it.
        pay = {"order_id": order["id"], "payment_method": {"type": "card", "token": "tok_visa"}}
        assert client.post("/api/payments", json=pay, headers=customer).status_code == 409
        assert client.post("/api/payments", json=pay, headers=stranger).status_code == 404
        payment = client.get(f"/api/payments/{order['payment_id']}", headers=stranger)
        assert payment.status_code == 404

        # A price change is an event with the old and the new price.
        client.patch(f"/api/products/{product_id}", json={"price": "11.00"}, headers=admin)

        def price_changed() -> list[dict[str, Any]]:
            events = _events(stack, admin, type="product.price_changed")
            return [e for e in events if e["data"]["product_id"] == product_id]

        changed = eventually(price_changed)
        assert changed and (changed[0]["data"]["old_price"], changed[0]["data"]["new_price"]) == (
            "10.00",
            "11.00",
        )


def test_an_erased_account_cannot_order_with_its_old_token(sqlite_stack: Stack) -> None:
    """Erasure voids the account's tokens at the gateway and at every service (the order
    service is asked directly too), within the verifiers' refresh interval."""
    stack = sqlite_stack
    product_id = new_product(stack, stack.admin(), stock=5)
    _, customer = stack.customer()
    with stack.client() as client:
        assert client.delete("/api/users/profile", headers=customer).status_code == 200
        time.sleep(2.5)  # verifiers re-read the revocations at most every 2 s
        placed = client.post("/api/orders", json=order_body(product_id, 1), headers=customer)
        assert placed.status_code == 401, placed.text
        assert placed.json()["detail"] == "the token has been revoked"
    order_url = stack.state()["processes"]["order"]["url"]
    direct = httpx.post(
        f"{order_url}/api/orders", json=order_body(product_id, 1), headers=customer, timeout=30
    )
    assert direct.status_code == 401, direct.text
    assert stock_of(stack, product_id) == (5, 0)


def _exported(text: str) -> set[str]:
    """Every series name a /metrics page offers, with the suffixes each type's samples take
    (a family is listed with HELP and TYPE before its first labelled sample)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def test_every_metric_the_monitoring_names_is_exported(sqlite_stack: Stack) -> None:
    """The generated dashboard's panels and alert rules name only metrics that the running
    deployables export: each row's by its own deployable, each rule's by one it selects."""
    stack = sqlite_stack
    processes = stack.state()["processes"]
    deployment = build(load_platform(ROOT / "spec" / "cloudretail.yaml"))
    exported = {}
    for process in deployment.processes:
        name = next(n for n, info in processes.items() if info["port"] == process.port)
        page = httpx.get(f"{processes[name]['url']}/metrics", timeout=10)
        assert page.status_code == 200
        exported[process.name] = _exported(page.text)

    board = k8s_monitoring.dashboard(deployment)
    row, missing = "", []
    for panel in board["panels"]:
        if panel["type"] == "row":
            row = next(p.name for p in deployment.processes if p.deployable.title == panel["title"])
            continue
        for target in panel["targets"]:
            missing += [(row, name) for name in metric_names(target["expr"]) - exported[row]]
    for alert in k8s_monitoring.alerts(deployment):
        jobs = re.search(r'job=~"([^"]+)"', alert.expr)
        assert jobs is not None, alert.name
        offered = set().union(*(exported[job] for job in jobs.group(1).split("|")))
        missing += [(alert.name, name) for name in metric_names(alert.expr) - offered]
    assert not missing, missing

    # After the orders above, the order service's saga and consumers have samples.
    order = httpx.get(f"{processes['order']['url']}/metrics", timeout=10).text
    assert re.search(r'saga_outcomes_total\{[^}]*outcome="completed"', order), order
    assert re.search(r'consumer_events_total\{[^}]*outcome="applied"', order)
    bus = httpx.get(f"{processes['eventbus']['url']}/metrics", timeout=10).text
    applied = re.findall(r'consumer_events_total\{[^}]*outcome="applied"[^}]*\} (\S+)', bus)
    assert sum(float(value) for value in applied) > 0, bus
    assert re.search(r"consumer_lag_messages\{", bus), bus


def test_a_placed_order_mails_its_customer_once(sqlite_stack: Stack) -> None:
    """Registration reaches the notification service as `user.created`; the order's
    `order.confirmed` becomes one mail at `up`'s SMTP sink, listed by `cloudretail mails`,
    and the customer's GDPR export lists it."""
    stack = sqlite_stack
    product_id = new_product(stack, stack.admin(), stock=2)
    email, customer = stack.customer()
    with stack.client() as client:
        placed = client.post("/api/orders", json=order_body(product_id, 1), headers=customer)
    assert placed.status_code == 201, placed.text
    order_ref = placed.json()["id"][:8]
    subject = f"Your order {order_ref} is confirmed"

    def listed() -> str:
        result = cli("mails", "--data-dir", str(stack.data_dir))
        assert result.returncode == 0, result.stderr
        return result.stdout if subject in result.stdout else ""

    lines = [line for line in eventually(listed).splitlines() if subject in line]
    assert len(lines) == 1 and email in lines[0], lines
    number = lines[0].split()[0]
    shown = cli("mails", "--data-dir", str(stack.data_dir), "--show", number)
    assert shown.returncode == 0, shown.stderr
    assert f"To: {email}" in shown.stdout and placed.json()["id"] in shown.stdout
    time.sleep(2)  # a second mail for the same event would have come by now
    again = cli("mails", "--data-dir", str(stack.data_dir)).stdout
    assert again.count(subject) == 1, again

    # The customer's export gathers the mails sent, from the notification service.
    with stack.client() as client:
        export = client.get("/api/users/profile/export", headers=customer)
    assert export.status_code == 200, export.text
    sent = export.json()["data"]["notification"]["notifications"]
    assert [(row["subject"], row["recipient"]) for row in sent] == [(subject, email)]
