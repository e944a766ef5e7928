"""The analytics service: events of every topic, fed through the runtime's consumer into its
tables, add up to the summary admins read; redelivered events count once, and events of
different topics give the same figures in whatever order they arrive.

On SQLite and on a real PostgreSQL, with the same test bodies.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cloudretail.runtime.auth import TokenIssuer
from cloudretail.runtime.events.consumer import consumer_topics

from generated.events import REGISTRY
from generated.services.analytics import app as analytics_app
from generated.services.analytics.models import CustomerFact
from tests.servers import drop_database, fresh_database
from tests.services.analytics import (
    ORDERS,
    PRODUCTS,
    Feed,
    assert_scenario_summary,
    at,
    event,
    line,
    read_summary,
    scenario,
    without_window,
)
from tests.services.conftest import service_client


async def table_rows(client: httpx.AsyncClient, table: sa.Table) -> list[dict[str, Any]]:
    async with client.app.state.database.engine.connect() as connection:  # type: ignore[attr-defined]
        return [dict(row._mapping) for row in await connection.execute(sa.select(table))]


@pytest.fixture(params=["sqlite", "postgres"])
def two_databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two fresh, empty databases of one kind (PostgreSQL ones dropped after)."""
    if request.param == "sqlite":
        yield (f"sqlite+aiosqlite:///{tmp_path}/a.db", f"sqlite+aiosqlite:///{tmp_path}/b.db")
        return
    made = [fresh_database("cloudretail_test_analytics") for _ in range(2)]
    try:
        yield (made[0], made[1])
    finally:
        for url in made:
            drop_database(url)


@pytest.fixture
async def analytics(database_url: str, issuer: TokenIssuer) -> AsyncIterator[httpx.AsyncClient]:
    async with service_client("analytics", database_url, issuer) as client:
        yield client


async def test_every_topic_is_consumed():
    topics = consumer_topics(REGISTRY, analytics_app.event_handlers())
    assert topics == sorted(REGISTRY.topics())


async def test_the_summary_adds_up_the_events_of_every_topic(
    analytics: httpx.AsyncClient, admin: dict[str, str]
):
    async with Feed(analytics.app) as feed:  # type: ignore[attr-defined]
        await feed.send(*scenario())
    assert_scenario_summary(await read_summary(analytics, admin))


async def test_a_redelivered_event_counts_once(analytics: httpx.AsyncClient, admin: dict[str, str]):
    events = scenario()
    async with Feed(analytics.app) as feed:  # type: ignore[attr-defined]
        await feed.send(*events)
        await feed.send(*events)  # every one of them again, same ids
        # The same facts in new events (a producer that published twice): still once.
        o1, p1 = ORDERS[0], PRODUCTS[0]
        await feed.send(
            event(
                "order.created",
                {
                    "order_id": o1,
                    "user_id": uuid.uuid4(),
                    "items": [line(p1, 5, "10.00", "Widget")],
                    "total_amount": "50.00",
                },
                at(80),
            ),
            event(
                "order.confirmed",
                {
                    "order_id": o1,
                    "user_id": uuid.uuid4(),
                    "payment_id": uuid.uuid4(),
                    "total_amount": "50.00",
                },
                at(81),
            ),
        )
        stats = feed.consumer.stats
    assert (stats.applied, stats.duplicates) == (len(events) + 2, len(events))
    assert_scenario_summary(await read_summary(analytics, admin))


async def test_arrival_order_across_topics_does_not_matter(
    two_databases: tuple[str, str], issuer: TokenIssuer, admin: dict[str, str]
):
    events = scenario()
    forward, backward = two_databases
    async with service_client("analytics", forward, issuer) as client:
        async with Feed(client.app) as feed:  # type: ignore[attr-defined]
            await feed.send(*events)
        in_order = await read_summary(client, admin)
    assert_scenario_summary(in_order)

    # Everything backwards: confirmations before payments before creations, the catalog's
    # rename before its creation, the later stock alert first.
    created, paid, confirmed = events[5], events[6], events[7]
    async with service_client("analytics", backward, issuer) as client:
        async with Feed(client.app) as feed:  # type: ignore[attr-defined]
            await feed.send(confirmed)
            waiting = await read_summary(client, admin)
            assert waiting["confirmed_awaiting_payment"] == 1
            assert waiting["all_time"]["revenue"] == {}
            await feed.send(paid)
            paid_only = await read_summary(client, admin)
            assert paid_only["confirmed_awaiting_payment"] == 0
            assert paid_only["all_time"]["revenue"] == {"USD": "25.00"}
            assert paid_only["top_products"] == []  # the lines are not known yet
            await feed.send(created)
            lines_known = await read_summary(client, admin)
            assert [p["units"] for p in lines_known["top_products"]] == [2, 1]
            await feed.send(*reversed([e for e in events if e not in (created, paid, confirmed)]))
        out_of_order = await read_summary(client, admin)
    assert without_window(out_of_order) == without_window(in_order)


async def test_the_summary_is_for_admins(
    analytics: httpx.AsyncClient, admin: dict[str, str], customer: dict[str, str]
):
    nobody = await analytics.get("/api/analytics/summary")
    assert nobody.status_code == 401
    refused = await analytics.get("/api/analytics/summary", headers=customer)
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    allowed = await analytics.get("/api/analytics/summary", headers=admin)
    assert allowed.status_code == 200
    assert allowed.json()["all_time"]["orders_created"] == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [("hours", "0"), ("hours", "721"), ("hours", "x"), ("limit", "0"), ("limit", "101")],
)
async def test_summary_parameters_are_bounded(
    tmp_path: Path, issuer: TokenIssuer, admin: dict[str, str], name: str, value: str
):
    async with service_client("analytics", f"sqlite:///{tmp_path}/a.db", issuer) as client:
        answer = await client.get("/api/analytics/summary", params={name: value}, headers=admin)
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["loc"] == ["query", name]


async def test_the_window_and_the_limit_shape_the_summary(
    tmp_path: Path, issuer: TokenIssuer, admin: dict[str, str]
):
    async with service_client("analytics", f"sqlite:///{tmp_path}/a.db", issuer) as client:
        async with Feed(client.app) as feed:  # type: ignore[attr-defined]
            await feed.send(*scenario())
        widest = await read_summary(client, admin, hours=720, limit=100)
        last_hour = await read_summary(client, admin, hours=1, limit=1)
    assert_scenario_summary(widest)
    assert widest["window"]["hours"] == 720
    # The scenario's events are one and two hours old: outside the last hour's window,
    # still in the all-time totals.
    assert last_hour["hourly"] == []
    assert last_hour["totals"]["orders_created"] == 0
    assert last_hour["conversion"]["orders_created"] == 0
    assert last_hour["conversion"]["confirmed_share"] is None
    assert last_hour["all_time"] == widest["all_time"]
    assert [p["product_id"] for p in last_hour["top_products"]] == [str(PRODUCTS[0])]
    assert len(last_hour["low_stock"]) == 1


async def test_an_erased_account_leaves_no_customer_row(
    analytics: httpx.AsyncClient, admin: dict[str, str]
):
    """`user.deleted` drops the account's `customer_facts` row (the spec's `pii` on it);
    the sales it made stay in the figures."""
    gone, kept = uuid.uuid4(), uuid.uuid4()
    async with Feed(analytics.app) as feed:  # type: ignore[attr-defined]
        for user in (gone, kept):
            await feed.send(
                event(
                    "user.created",
                    {"user_id": user, "email": "a@b.test", "role": "customer"},
                    at(1),
                )
            )
        await feed.send(event("user.deleted", {"user_id": gone}, at(2)))
    rows = await table_rows(analytics, CustomerFact.__table__)
    assert [row["user_id"] for row in rows] == [kept]
