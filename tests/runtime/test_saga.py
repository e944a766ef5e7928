"""The saga engine against real HTTP callees on loopback: what it undoes when a step fails."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.db import Database
from cloudretail.runtime.http import ServiceClients
from cloudretail.runtime.metrics import SagaMetrics
from cloudretail.runtime.saga import (
    COMPENSATED,
    COMPLETED,
    Call,
    SagaDefinition,
    SagaRunner,
    Step,
    saga_instances,
)
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event as sa_event

from tests.gateway.conftest import Server, free_port


def _stock_service(calls: list[str]) -> FastAPI:
    app = FastAPI()

    @app.post("/hold/{saga_id}")
    async def hold(saga_id: str, request: Request) -> dict[str, Any]:
        calls.append(f"hold {saga_id}")
        return {"held": True}

    @app.post("/free/{saga_id}")
    async def free(saga_id: str) -> dict[str, Any]:
        calls.append(f"free {saga_id}")
        return {"freed": True}

    return app


async def _saga_database_and_clients(
    tmp_path: Path, urls: dict[str, str]
) -> tuple[Database, ServiceClients]:
    """A SQLite database with the saga table, and clients to `urls` that do not retry."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/saga.db")
    async with database.engine.begin() as connection:
        await connection.run_sync(saga_instances.metadata.create_all)
    settings = ServiceSettings(
        service_name="shop",
        port=1,
        database_url=str(database.url),
        service_token="t" * 32,
        service_urls=urls,
    )
    return database, ServiceClients(settings, timeout=2.0, retries=0)


async def test_a_step_whose_callee_cannot_be_reached_is_not_undone_and_the_rest_is_at_once(
    tmp_path: Path,
) -> None:
    """Connection refused: the charge never arrived, so there is nothing of it to refund, and
    the stock it held is released now instead of after the payer comes back."""
    calls: list[str] = []
    stock = await Server(_stock_service(calls)).start()
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    database, clients = await _saga_database_and_clients(
        tmp_path, {"stock": stock.url, "pay": nobody}
    )
    saga = SagaDefinition(
        "checkout",
        (
            Step(
                "hold",
                Call("stock", "POST", "/hold/{saga_id}"),
                Call("stock", "POST", "/free/{saga_id}"),
            ),
            Step(
                "charge",
                Call("pay", "POST", "/charge/{saga_id}"),
                Call("pay", "POST", "/refund/{saga_id}"),
            ),
        ),
    )
    runner = SagaRunner(database, clients, {"checkout": saga})
    saga_id = uuid.uuid4()
    try:
        async with database.session() as session:
            await runner.begin(session, "checkout", saga_id, {})
            await session.commit()
        result = await runner.run(saga_id)
    finally:
        await clients.close()
        await stock.stop()
        await database.dispose()
    assert result.status == COMPENSATED, result
    assert result.error is not None and result.error["kind"] == "unreachable"
    assert calls == [f"hold {saga_id}", f"free {saga_id}"]


async def test_the_last_step_and_the_outcome_commit_together(tmp_path: Path) -> None:
    """A saga of two steps costs two transactions when it succeeds (each step's answer, the
    last one together with the completion hook), not three; and three when its second step
    is refused (the first answer; the refusal; the undo together with the failure hook),
    not four."""
    calls: list[str] = []
    stock = await Server(_refusing_stock_service(calls)).start()
    database, clients = await _saga_database_and_clients(tmp_path, {"stock": stock.url})
    hooks: list[str] = []

    async def completed(_session: Any, saga_id: uuid.UUID, data: dict[str, Any]) -> None:
        hooks.append(f"completed {data['second']}")

    async def failed(_session: Any, saga_id: uuid.UUID, data: Any, error: Any) -> None:
        hooks.append(f"failed at {error['step']}")

    saga = SagaDefinition(
        "checkout",
        (
            Step(
                "first",
                Call("stock", "POST", "/hold/{saga_id}"),
                Call("stock", "POST", "/free/{saga_id}"),
            ),
            Step("second", Call("stock", "POST", "/{outcome}/{saga_id}")),
        ),
    ).bind(on_completed=completed, on_failed=failed)
    runner = SagaRunner(database, clients, {"checkout": saga})
    commits: list[int] = []
    sa_event.listen(database.engine.sync_engine, "commit", lambda *_: commits.append(1))

    async def run(outcome: str) -> Any:
        saga_id = uuid.uuid4()
        async with database.session() as session:
            await runner.begin(session, "checkout", saga_id, {"outcome": outcome})
        commits.clear()
        result = await runner.run(saga_id)
        async with database.engine.connect() as connection:
            row = (
                await connection.execute(
                    sa.select(saga_instances.c.status, saga_instances.c.step).where(
                        saga_instances.c.id == saga_id
                    )
                )
            ).one()
        return result, tuple(row), len(commits)

    try:
        done, done_row, done_commits = await run("accept")
        refused, refused_row, refused_commits = await run("refuse")
    finally:
        await clients.close()
        await stock.stop()
        await database.dispose()
    assert (done.status, done_row, done_commits) == (COMPLETED, (COMPLETED, 2), 2)
    assert (refused.status, refused_row, refused_commits) == (COMPENSATED, (COMPENSATED, -1), 3)
    assert hooks == ["completed {'ok': True}", "failed at second"]
    assert [call.split()[0] for call in calls] == ["hold", "hold", "free"]


def _refusing_stock_service(calls: list[str]) -> FastAPI:
    app = _stock_service(calls)

    @app.post("/accept/{saga_id}")
    async def accept(saga_id: str) -> dict[str, Any]:
        return {"ok": True}

    @app.post("/refuse/{saga_id}")
    async def refuse(saga_id: str) -> Any:
        return JSONResponse({"title": "No", "status": 409, "detail": "refused"}, status_code=409)

    return app


def _counts(registry: CollectorRegistry, name: str) -> dict[tuple[str, ...], float]:
    """A family's samples from the rendered text, by label values (sorted by label name)."""
    return {
        tuple(value for _, value in sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if sample.name == name
    }


async def test_steps_and_outcomes_are_counted_once_committed(tmp_path: Path) -> None:
    """One checkout completes, one is refused at its second step (the first undone), one
    quick saga is refused at its only step (nothing to undo: failed)."""
    calls: list[str] = []
    stock = await Server(_refusing_stock_service(calls)).start()
    database, clients = await _saga_database_and_clients(tmp_path, {"stock": stock.url})
    checkout = SagaDefinition(
        "checkout",
        (
            Step(
                "hold",
                Call("stock", "POST", "/hold/{saga_id}"),
                Call("stock", "POST", "/free/{saga_id}"),
            ),
            Step("confirm", Call("stock", "POST", "/{outcome}/{saga_id}")),
        ),
    )
    quick = SagaDefinition("quick", (Step("only", Call("stock", "POST", "/{outcome}/{saga_id}")),))
    registry = CollectorRegistry()
    runner = SagaRunner(
        database, clients, {"checkout": checkout, "quick": quick}, metrics=SagaMetrics(registry)
    )
    # Declared at 0 before any saga runs, so the first of each is an increase.
    assert set(_counts(registry, "saga_outcomes_total").values()) == {0.0}
    assert len(_counts(registry, "saga_outcomes_total")) == 6
    assert len(_counts(registry, "saga_steps_total")) == 9

    async def run(saga: str, outcome: str) -> str:
        saga_id = uuid.uuid4()
        async with database.session() as session:
            await runner.begin(session, saga, saga_id, {"outcome": outcome})
        result = await runner.run(saga_id)
        await runner.run(saga_id)  # an ended saga run again counts nothing more
        return result.status

    try:
        statuses = [
            await run("checkout", "accept"),
            await run("checkout", "refuse"),
            await run("quick", "refuse"),
        ]
    finally:
        await clients.close()
        await stock.stop()
        await database.dispose()
    assert statuses == [COMPLETED, COMPENSATED, COMPENSATED]
    assert _counts(registry, "saga_outcomes_total") == {
        ("completed", "checkout"): 1,
        ("compensated", "checkout"): 1,
        ("failed", "checkout"): 0,
        ("completed", "quick"): 0,
        ("compensated", "quick"): 0,
        ("failed", "quick"): 1,
    }
    assert _counts(registry, "saga_steps_total") == {
        ("done", "checkout", "hold"): 2,
        ("failed", "checkout", "hold"): 0,
        ("compensated", "checkout", "hold"): 1,
        ("done", "checkout", "confirm"): 1,
        ("failed", "checkout", "confirm"): 1,
        ("compensated", "checkout", "confirm"): 0,
        ("done", "quick", "only"): 0,
        ("failed", "quick", "only"): 1,
        ("compensated", "quick", "only"): 0,
    }
