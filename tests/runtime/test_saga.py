"""The saga engine against real HTTP callees on loopback: what it undoes when a step fails."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from runtime.config import ServiceSettings
from runtime.db import Database
from runtime.http import ServiceClients
from runtime.saga import COMPENSATED, Call, SagaDefinition, SagaRunner, Step, saga_instances
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


async def test_a_step_whose_callee_cannot_be_reached_is_not_undone_and_the_rest_is_at_once(
    tmp_path: Path,
) -> None:
    """Connection refused: the charge never arrived, so there is nothing of it to refund, and
    the stock it held is released now instead of after the payer comes back."""
    calls: list[str] = []
    stock = await Server(_stock_service(calls)).start()
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/saga.db")
    async with database.engine.begin() as connection:
        await connection.run_sync(saga_instances.metadata.create_all)
    settings = ServiceSettings(
        service_name="shop",
        port=1,
        database_url=str(database.url),
        service_token="t" * 32,
        service_urls={"stock": stock.url, "pay": nobody},
    )
    clients = ServiceClients(settings, timeout=2.0, retries=0)
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
