"""The analytics service as `cloudretail up` runs it: started from the spec with the rest,
it consumes the platform's own events from the embedded broker and answers admins through
the gateway; `cloudretail replay analytics` rebuilds its database from that broker into
another one with the same figures."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.stack.conftest import Stack, cli, new_product, order_body


def _wait_for(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def test_an_order_placed_through_the_gateway_reaches_the_analytics(
    sqlite_stack: Stack, tmp_path: Path
) -> None:
    stack = sqlite_stack
    assert "analytics" in stack.state()["processes"]
    admin = stack.admin()
    product_id = new_product(stack, admin, stock=5, price="12.50")
    _, customer = stack.customer()
    with stack.client() as client:
        placed = client.post("/api/orders", json=order_body(product_id, 2), headers=customer)
        assert placed.status_code == 201, placed.text
        assert client.get("/api/analytics/summary", headers=customer).status_code == 403

        def counted() -> dict[str, Any] | None:
            answer = client.get("/api/analytics/summary", headers=admin)
            assert answer.status_code == 200, answer.text
            summary: dict[str, Any] = answer.json()
            sold = [p for p in summary["top_products"] if p["product_id"] == product_id]
            return summary if sold and summary["all_time"]["revenue"] else None

        live = _wait_for(counted)
    [sold] = [p for p in live["top_products"] if p["product_id"] == product_id]
    assert (sold["name"], sold["units"], sold["revenue"]) == ("Test item", 2, {"USD": "25.00"})
    assert live["all_time"]["orders_confirmed"] >= 1
    assert live["all_time"]["registrations"] >= 2  # the admin and the customer

    rebuilt = tmp_path / "rebuilt.db"
    replayed = cli("replay", "analytics", "--database-url", f"sqlite:///{rebuilt}")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "failed 0" in replayed.stdout, replayed.stdout
    # Every event the live service applied is in the rebuilt database's claims too.
    live_db = stack.data_dir / "data" / "cloudretail_analytics.db"
    query = "SELECT event_id FROM processed_events"
    live_ids = {row[0] for row in sqlite3.connect(live_db).execute(query)}
    rebuilt_ids = {row[0] for row in sqlite3.connect(rebuilt).execute(query)}
    assert live_ids and live_ids <= rebuilt_ids
    query = "SELECT product_id, currency, units, orders, revenue FROM product_sales"
    live_sales = sorted(sqlite3.connect(live_db).execute(query))
    assert sorted(sqlite3.connect(rebuilt).execute(query)) == live_sales
