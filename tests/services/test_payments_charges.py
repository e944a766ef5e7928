"""Charges and refunds of the payment service (issue 11): a refund asked for while the charge
is processing is made when it completes (defect 3), a late provider answer never
overwrites a settled charge (defect 6), and production never runs the simulated provider
(defect 5). Same bodies on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cloudretail.runtime.auth import TokenIssuer
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.events.tables import outbox

import handlers.payment as payments
from generated.services.payment.app import create_app
from generated.services.payment.models import Payment
from handlers.payment import ProviderResult
from tests.gateway.conftest import free_port
from tests.services.commerce import eventually
from tests.services.conftest import ROOT, SERVICE_TOKEN, migrate, service_client

CHARGES = "/internal/payments/charges"
SERVICE = {"X-Service-Token": SERVICE_TOKEN}


def charge(order_id: uuid.UUID, token: str, amount: str = "25.00") -> dict[str, Any]:
    return {
        "order_id": str(order_id),
        "user_id": str(uuid.uuid4()),
        "total_amount": amount,
        "currency": "USD",
        "payment_method": {"type": "card", "token": token},
    }


async def _row(client: httpx.AsyncClient, order_id: uuid.UUID) -> dict[str, Any] | None:
    database = client.app.state.database  # type: ignore[attr-defined]
    async with database.engine.connect() as connection:
        rows = await connection.execute(
            sa.select(Payment.__table__).where(Payment.__table__.c.order_id == order_id)
        )
        found = [dict(row) for row in rows.mappings()]
    assert len(found) <= 1, found
    return found[0] if found else None


async def _events(client: httpx.AsyncClient) -> list[str]:
    database = client.app.state.database  # type: ignore[attr-defined]
    async with database.engine.connect() as connection:
        rows = await connection.execute(sa.select(outbox.c.event_type).order_by(outbox.c.seq))
        return [row[0] for row in rows]


async def _processing(client: httpx.AsyncClient, order_id: uuid.UUID) -> None:
    async def check() -> bool:
        row = await _row(client, order_id)
        return row is not None and row["status"] == "processing"

    await eventually(check, 10, "the charge to be processing")


# -- defect 6: compare-and-set on the payment's status ----------------------------------------


class FlakyProvider:
    """A provider whose first answer for each charge is lost on the way (the call hangs);
    asked again under the same idempotency key it answers, as real providers do, with the
    one charge it made. Plugged in as a deployment would: PAYMENT_PROVIDER=module:Class."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    async def charge(
        self, amount: Decimal, currency: str, token: str, idempotency_key: str
    ) -> ProviderResult:
        self.calls[idempotency_key] = self.calls.get(idempotency_key, 0) + 1
        if self.calls[idempotency_key] == 1:
            await asyncio.sleep(3600)
        return ProviderResult(True, f"flaky_{idempotency_key[-12:]}")

    async def refund(self, transaction_id: str, amount: Decimal, idempotency_key: str) -> None:
        return None


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYMENT_PROVIDER", f"{__name__}:FlakyProvider")
    monkeypatch.setattr(payments, "PROVIDER_TIMEOUT", 1.0)


async def test_a_late_provider_timeout_never_overwrites_a_completed_charge(
    database_url: str, issuer: TokenIssuer, flaky: None
) -> None:
    order_id = uuid.uuid4()
    async with service_client("payment", database_url, issuer) as client:
        # The first attempt's answer never comes; a retry goes through meanwhile.
        hanging = asyncio.create_task(
            client.post(CHARGES, json=charge(order_id, "tok_visa"), headers=SERVICE)
        )
        await _processing(client, order_id)
        approved = await client.post(CHARGES, json=charge(order_id, "tok_visa"), headers=SERVICE)
        assert approved.status_code == 200, approved.text
        transaction = approved.json()["transaction_id"]
        assert transaction
        late = await hanging  # its timeout arrives after the charge completed
        row = await _row(client, order_id)
        events = await _events(client)
    assert row is not None
    assert (row["status"], row["transaction_id"]) == ("completed", transaction)
    assert row["failure_reason"] is None
    # The late attempt answers with the charge's outcome, not its own stale one.
    assert late.status_code == 200, late.text
    assert late.json()["transaction_id"] == transaction
    assert events.count("payment.completed") == 1 and "payment.failed" not in events


async def test_an_approval_after_a_timeout_records_the_charge(
    database_url: str, issuer: TokenIssuer, flaky: None
) -> None:
    """A timeout is no answer: the retry that learns the charge went through records it."""
    order_id = uuid.uuid4()
    async with service_client("payment", database_url, issuer) as client:
        timed_out = await client.post(CHARGES, json=charge(order_id, "tok_visa"), headers=SERVICE)
        assert timed_out.status_code == 504, timed_out.text
        retried = await client.post(CHARGES, json=charge(order_id, "tok_visa"), headers=SERVICE)
        row = await _row(client, order_id)
        events = await _events(client)
    assert retried.status_code == 200, retried.text
    assert row is not None
    assert (row["status"], row["failure_reason"]) == ("completed", None)
    assert row["transaction_id"] == retried.json()["transaction_id"]
    assert events.count("payment.completed") == 1


async def test_two_concurrent_charges_of_one_order_charge_once(
    database_url: str, issuer: TokenIssuer
) -> None:
    order_id = uuid.uuid4()
    async with service_client("payment", database_url, issuer) as client:
        first = asyncio.create_task(
            client.post(CHARGES, json=charge(order_id, "tok_slow"), headers=SERVICE)
        )
        await _processing(client, order_id)
        second = await client.post(CHARGES, json=charge(order_id, "tok_slow"), headers=SERVICE)
        first_answer = await first
        row = await _row(client, order_id)
        events = await _events(client)
    assert first_answer.status_code == second.status_code == 200, (first_answer, second.text)
    assert row is not None and row["status"] == "completed"
    assert first_answer.json()["transaction_id"] == second.json()["transaction_id"]
    assert row["transaction_id"] == second.json()["transaction_id"]
    assert events.count("payment.completed") == 1


# -- defect 3: a refund asked for during the charge ----------------------------------------------


async def test_a_refund_during_the_charge_is_made_when_the_charge_completes(
    database_url: str, issuer: TokenIssuer
) -> None:
    order_id = uuid.uuid4()
    async with service_client("payment", database_url, issuer) as client:
        charging = asyncio.create_task(
            client.post(CHARGES, json=charge(order_id, "tok_slow"), headers=SERVICE)
        )
        await _processing(client, order_id)
        refund = await client.post(f"{CHARGES}/{order_id}/refund", headers=SERVICE)
        charged = await charging
        row = await _row(client, order_id)
        again = await client.post(f"{CHARGES}/{order_id}/refund", headers=SERVICE)
        events = await _events(client)
    assert row is not None
    assert row["status"] == "refunded", row
    assert row["transaction_id"]
    assert refund.status_code == 200, refund.text
    assert refund.json()["refunded"] is False and refund.json()["refund_pending"] is True
    assert events.count("payment.completed") == events.count("payment.refunded") == 1
    # Whoever still waits for the charge learns it was undone, not that it went through.
    assert charged.status_code == 409, charged.text
    assert charged.headers["content-type"] == "application/problem+json"
    assert again.status_code == 200 and again.json()["refunded"] is True  # nothing new


async def test_a_refund_before_the_charge_stops_a_late_charge(
    database_url: str, issuer: TokenIssuer
) -> None:
    """The saga's charge request may still be on its way when its compensation arrives."""
    order_id = uuid.uuid4()
    body = charge(order_id, "tok_visa")
    async with service_client("payment", database_url, issuer) as client:
        refund = await client.post(f"{CHARGES}/{order_id}/refund", json=body, headers=SERVICE)
        assert refund.status_code == 200, refund.text
        late = await client.post(CHARGES, json=body, headers=SERVICE)
        row = await _row(client, order_id)
    assert late.status_code == 409, late.text
    assert row is not None and row["status"] == "failed" and row["transaction_id"] is None


# -- defect 5: no simulated payments in production -----------------------------------------------


class RecordingProvider:
    """A provider as a deployment plugs one in (PAYMENT_PROVIDER=module:Class)."""

    name = "recording"

    async def charge(
        self, amount: Decimal, currency: str, token: str, idempotency_key: str
    ) -> ProviderResult:
        return ProviderResult(True, f"rec_{idempotency_key}")

    async def refund(self, transaction_id: str, amount: Decimal, idempotency_key: str) -> None:
        return None


PRODUCTION_TOKEN = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def _production(database_url: str) -> ServiceSettings:
    return ServiceSettings(
        service_name="payment",
        port=3005,
        database_url=database_url,
        environment="production",
        service_token=PRODUCTION_TOKEN,
    )


async def test_production_refuses_to_start_without_a_payment_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PAYMENT_PROVIDER", raising=False)
    app = create_app(_production(f"sqlite+aiosqlite:///{tmp_path}/payment.db"))
    with pytest.raises(RuntimeError, match="PAYMENT_PROVIDER"):
        async with app.router.lifespan_context(app):
            pytest.fail("the payment service started in production with simulated payments")
    # Naming the simulator explicitly is no way around it.
    monkeypatch.setenv("PAYMENT_PROVIDER", "handlers.payment:SimulatedProvider")
    app = create_app(_production(f"sqlite+aiosqlite:///{tmp_path}/payment.db"))
    with pytest.raises(RuntimeError, match="PAYMENT_PROVIDER"):
        async with app.router.lifespan_context(app):
            pytest.fail("the payment service started in production with simulated payments")


async def test_production_charges_through_the_configured_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, issuer: TokenIssuer
) -> None:
    monkeypatch.setenv("PAYMENT_PROVIDER", f"{__name__}:RecordingProvider")
    url = f"sqlite+aiosqlite:///{tmp_path}/payment.db"
    production = {"environment": "production", "service_token": PRODUCTION_TOKEN}
    async with service_client("payment", url, issuer, **production) as client:
        answer = await client.post(
            CHARGES,
            json=charge(uuid.uuid4(), "tok_visa"),
            headers={"X-Service-Token": PRODUCTION_TOKEN},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["gateway"] == "recording"


async def test_development_keeps_the_simulator(
    database_url: str, issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PAYMENT_PROVIDER", raising=False)
    async with service_client("payment", database_url, issuer) as client:
        answer = await client.post(CHARGES, json=charge(uuid.uuid4(), "tok_visa"), headers=SERVICE)
    assert answer.status_code == 200, answer.text
    assert answer.json()["gateway"] == "simulated"


def test_the_payment_process_exits_in_production_without_a_provider(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/payment.db"
    migrate("payment", url)
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "PAYMENT_PROVIDER" and not key.endswith("_URL")
    }
    env.update(
        ENVIRONMENT="production",
        SERVICE_TOKEN=PRODUCTION_TOKEN,
        DATABASE_URL=url,
        HOST="127.0.0.1",
        PORT=str(free_port()),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "generated.services.payment"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"the payment service kept running in production:\n{output[-2000:]}")
    assert process.returncode != 0
    assert "PAYMENT_PROVIDER" in output, output[-2000:]
