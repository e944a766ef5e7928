"""What a request costs before the handler runs: the runtime's dependencies run on the event
loop, not in FastAPI's thread pool (a thread hand-off each, per request)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi.dependencies.utils
import pytest
from cloudretail.runtime.app import create_service_app
from cloudretail.runtime.deps import DatabaseDep
from cloudretail.runtime.handlers import ContextDep
from fastapi import APIRouter

from tests.runtime.conftest import make_settings, running


async def test_a_handler_context_needs_no_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = APIRouter()

    @router.get("/things")
    async def things(ctx: ContextDep, database: DatabaseDep) -> dict[str, Any]:
        return {"service": ctx.settings.service_name, "dialect": database.dialect_name}

    hand_offs: list[object] = []
    real = fastapi.dependencies.utils.run_in_threadpool

    async def counting(function: Any, *args: Any, **kwargs: Any) -> Any:
        hand_offs.append(function)
        return await real(function, *args, **kwargs)

    monkeypatch.setattr(fastapi.dependencies.utils, "run_in_threadpool", counting)
    app = create_service_app(
        make_settings(f"sqlite+aiosqlite:///{tmp_path}/deps.db"), routers=[router]
    )
    async with running(app) as client:
        response = await client.get("/things")
    assert response.json() == {"service": "testsvc", "dialect": "sqlite"}
    assert hand_offs == []
