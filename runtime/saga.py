"""Orchestrated sagas with persisted state: steps are calls to other services, a failed step
undoes the earlier ones in reverse, and a crash at any point is finished on restart.

The saga's row is written in the same transaction as the business change that starts it
(the order, say), so no saga is lost. Every call carries the saga id as its idempotency
key, which makes re-running a step after a crash harmless: callees must treat a repeated
key as the same request. Compensations run for the failed step too when its outcome is
unknown (timeout, connection lost); they are idempotent as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from cloudretail.runtime.db import Database
from cloudretail.runtime.http import ServiceCallError, ServiceClients
from cloudretail.runtime.jsonenc import dumps
from cloudretail.runtime.tracing import get_tracer
from cloudretail.runtime.types import UTCDateTime
from opentelemetry.trace import Tracer
from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from cloudretail.runtime.metrics import SagaMetrics, SagaOutcome, SagaStepOutcome
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

_metadata = sa.MetaData()
saga_instances = sa.Table(
    "saga_instances",
    _metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("saga", sa.String(100), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("deadline", UTCDateTime, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

RUNNING = "running"
COMPENSATING = "compensating"
COMPLETED = "completed"
COMPENSATED = "compensated"
Hook = Callable[[AsyncSession, uuid.UUID, dict[str, Any]], Awaitable[None]]
FailHook = Callable[[AsyncSession, uuid.UUID, dict[str, Any], dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Call:
    """An operation of another service: `POST /internal/x/{order_id}` with the saga's data."""

    service: str
    method: str
    path: str

    def url(self, data: Mapping[str, Any]) -> str:
        return self.path.format(**{k: v for k, v in data.items() if isinstance(v, str | int)})


@dataclass(frozen=True)
class Step:
    name: str
    call: Call
    compensate: Call | None = None


@dataclass(frozen=True)
class SagaDefinition:
    name: str
    steps: tuple[Step, ...]
    timeout: float = 30.0
    on_completed: Hook | None = None
    on_failed: FailHook | None = None

    def bind(self, *, on_completed: Hook, on_failed: FailHook) -> SagaDefinition:
        return SagaDefinition(self.name, self.steps, self.timeout, on_completed, on_failed)


@dataclass(frozen=True)
class SagaResult:
    saga_id: uuid.UUID
    status: str  # completed | compensated | compensating (compensation still owed)
    data: dict[str, Any]
    error: dict[str, Any] | None

    @property
    def succeeded(self) -> bool:
        return self.status == COMPLETED


def _now() -> datetime:
    return datetime.now(UTC)


def _first_undo(index: int, failure: Mapping[str, Any]) -> int:
    """Where compensation starts after step `index` failed: a step that was refused, or never
    reached its callee, changed nothing; one whose outcome is unknown may have, so it is
    undone too."""
    unknown = failure.get("kind") in ("timeout", "unavailable")
    return index if unknown else index - 1


def _undoes_anything(definition: SagaDefinition, failure: Mapping[str, Any]) -> bool:
    """Whether the failure `failure` leaves any compensation to run (known from the saga's
    stored error alone, so recovery in another process reaches the same answer)."""
    names = [step.name for step in definition.steps]
    if failure.get("step") not in names:
        return False  # a step the definition no longer has: nothing of it to undo here
    owed = definition.steps[: _first_undo(names.index(failure["step"]), failure) + 1]
    return any(step.compensate is not None for step in owed)


@dataclass
class _Progress:
    """What one saga transaction did, for the metrics once it has committed."""

    steps: list[tuple[str, SagaStepOutcome]] = field(default_factory=list)
    outcome: SagaOutcome | None = None


def _failure(step: Step, error: ServiceCallError | None, reason: str) -> dict[str, Any]:
    if error is None:
        return {"step": step.name, "kind": "timeout", "detail": reason, "status": None}
    return {
        "step": step.name,
        "service": error.service,
        "kind": error.kind,
        "status": error.status,
        "detail": error.detail,
        "problem": error.problem,
    }


@dataclass
class SagaRunner:
    database: Database
    clients: ServiceClients
    definitions: Mapping[str, SagaDefinition]
    stale_after: float = 10.0
    recovery_interval: float = 5.0
    # While the request that started a saga waits for it, a compensation sent to the service
    # whose call just went unanswered (hung, or gone) gets one short try: waiting a whole
    # call timeout again would make the client wait two and pass the gateway's timeout.
    # What that try cannot do is owed, and recovery makes it with the full call timeout.
    suspect_timeout: float = 1.0
    # Steps and outcomes, counted once the transaction that records them has committed.
    metrics: SagaMetrics | None = None
    # Each step and each compensation is a span (its call to the other service inside).
    tracer: Tracer = field(default_factory=get_tracer)
    _locks: dict[uuid.UUID, asyncio.Lock] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        if self.metrics is not None:
            for definition in self.definitions.values():
                steps = [step.name for step in definition.steps]
                self.metrics.declare_saga(definition.name, steps)

    async def begin(
        self, session: AsyncSession, saga: str, saga_id: uuid.UUID, data: Mapping[str, Any]
    ) -> None:
        """Record a new saga in the caller's transaction; `run` it after the commit."""
        definition = self.definitions[saga]
        now = _now()
        await session.execute(
            saga_instances.insert().values(
                id=saga_id,
                saga=saga,
                status=RUNNING,
                step=0,
                data=dumps({"saga_id": str(saga_id), **data}),
                deadline=now + timedelta(seconds=definition.timeout),
                created_at=now,
                updated_at=now,
            )
        )

    async def run(self, saga_id: uuid.UUID, *, waiting: bool = True) -> SagaResult:
        """Drive the saga as far as it goes now: to completion, or through compensation.
        `waiting`: a client waits for the outcome (see `suspect_timeout`)."""
        lock = self._locks.setdefault(saga_id, asyncio.Lock())
        async with lock:
            try:
                while True:
                    result = await self._advance(saga_id, waiting)
                    if result is not None:
                        return result
            finally:
                self._locks.pop(saga_id, None)

    async def _advance(self, saga_id: uuid.UUID, waiting: bool) -> SagaResult | None:
        """One step (or one compensation) in its own transaction; a result when it stops."""
        progress = _Progress()
        async with self.database.session() as session:
            query = sa.select(saga_instances).where(saga_instances.c.id == saga_id)
            if self.database.dialect_name == "postgresql":
                # Another replica's recovery may hold it; it will finish the saga.
                query = query.with_for_update(skip_locked=True)
            found = (await session.execute(query)).mappings().first()
            if found is None:
                raise LookupError(f"no saga {saga_id}")
            row: dict[str, Any] = dict(found)
            data: dict[str, Any] = json.loads(row["data"])
            error = json.loads(row["error"]) if row["error"] else None
            if row["status"] in (COMPLETED, COMPENSATED):
                return SagaResult(saga_id, row["status"], data, error)
            definition = self.definitions[row["saga"]]
            if row["status"] == RUNNING:
                result = await self._forward(session, definition, row, data, progress)
            else:
                result = await self._backward(
                    session, definition, row, data, error or {}, waiting, progress
                )
        if self.metrics is not None:
            for step, step_outcome in progress.steps:
                self.metrics.record_step(definition.name, step, step_outcome)
            if progress.outcome is not None:
                self.metrics.record_outcome(definition.name, progress.outcome)
        return result

    async def _forward(
        self,
        session: AsyncSession,
        definition: SagaDefinition,
        row: Mapping[str, Any],
        data: dict[str, Any],
        progress: _Progress,
    ) -> SagaResult | None:
        index: int = row["step"]
        saga_id: uuid.UUID = row["id"]
        if index >= len(definition.steps):
            return await self._complete(session, definition, saga_id, data, progress)
        step = definition.steps[index]
        remaining = (row["deadline"] - _now()).total_seconds()
        failure: dict[str, Any] | None = None
        if remaining <= 0:
            failure = _failure(step, None, f"the saga passed its deadline before {step.name}")
        else:
            try:
                with self.tracer.start_as_current_span(
                    f"{definition.name} {step.name}",
                    attributes={"saga.id": str(saga_id), "saga.step": step.name},
                ):
                    answer = await self.clients.call(
                        step.call.service,
                        step.call.method,
                        step.call.url(data),
                        json=data,
                        headers={"Idempotency-Key": f"{saga_id}:{step.name}"},
                        timeout=min(remaining, self.clients.timeout),
                    )
            except ServiceCallError as error:
                failure = _failure(step, error, error.detail)
            else:
                data[step.name] = answer
                progress.steps.append((step.name, "done"))
                if index + 1 == len(definition.steps):
                    # The last step's answer and the completion commit together: one
                    # transaction fewer, and no state where all is done but not marked so.
                    return await self._complete(session, definition, saga_id, data, progress)
                await self._update(session, saga_id, step=index + 1, data=data)
                return None
        start = _first_undo(index, failure)
        logger.warning("saga step failed; compensating", extra={"saga": str(saga_id), **failure})
        progress.steps.append((step.name, "failed"))
        await self._update(session, saga_id, status=COMPENSATING, step=start, error=failure)
        return None

    async def _backward(
        self,
        session: AsyncSession,
        definition: SagaDefinition,
        row: Mapping[str, Any],
        data: dict[str, Any],
        error: dict[str, Any],
        waiting: bool,
        progress: _Progress,
    ) -> SagaResult | None:
        index: int = row["step"]
        saga_id: uuid.UUID = row["id"]
        if index < 0:
            return await self._compensated(session, definition, saga_id, data, error, progress)
        step = definition.steps[index]
        if step.compensate is not None:
            unanswered = error.get("status") is None and error.get("kind") != "rejected"
            suspect = waiting and unanswered and error.get("service") == step.compensate.service
            try:
                with self.tracer.start_as_current_span(
                    f"{definition.name} {step.name} undo",
                    attributes={"saga.id": str(saga_id), "saga.step": step.name},
                ):
                    await self.clients.call(
                        step.compensate.service,
                        step.compensate.method,
                        step.compensate.url(data),
                        json=data,
                        headers={"Idempotency-Key": f"{saga_id}:{step.name}:undo"},
                        timeout=(
                            min(self.suspect_timeout, self.clients.timeout) if suspect else None
                        ),
                    )
            except ServiceCallError as failure:
                # Owed, not forgotten: recovery tries again until the callee answers.
                logger.warning(
                    "compensation failed; will retry",
                    extra={"saga": str(saga_id), "step": step.name, "error": failure.detail},
                )
                await session.rollback()
                return SagaResult(saga_id, COMPENSATING, data, error)
            progress.steps.append((step.name, "compensated"))
        if index == 0:  # the last undo and the outcome commit together
            return await self._compensated(session, definition, saga_id, data, error, progress)
        await self._update(session, saga_id, step=index - 1)
        return None

    async def _complete(
        self,
        session: AsyncSession,
        definition: SagaDefinition,
        saga_id: uuid.UUID,
        data: dict[str, Any],
        progress: _Progress,
    ) -> SagaResult:
        if definition.on_completed is not None:
            await definition.on_completed(session, saga_id, data)
        await self._update(
            session, saga_id, status=COMPLETED, step=len(definition.steps), data=data
        )
        progress.outcome = "completed"
        return SagaResult(saga_id, COMPLETED, data, None)

    async def _compensated(
        self,
        session: AsyncSession,
        definition: SagaDefinition,
        saga_id: uuid.UUID,
        data: dict[str, Any],
        error: dict[str, Any],
        progress: _Progress,
    ) -> SagaResult:
        if definition.on_failed is not None:
            await definition.on_failed(session, saga_id, data, error)
        await self._update(session, saga_id, status=COMPENSATED, step=-1)
        # Both end in the failure hook; "failed" when nothing had to be undone.
        progress.outcome = "compensated" if _undoes_anything(definition, error) else "failed"
        return SagaResult(saga_id, COMPENSATED, data, error)

    async def _update(self, session: AsyncSession, saga_id: uuid.UUID, **values: Any) -> None:
        if "data" in values:
            values["data"] = dumps(values["data"])
        if "error" in values:
            values["error"] = dumps(values["error"])
        await session.execute(
            saga_instances.update()
            .where(saga_instances.c.id == saga_id)
            .values(**values, updated_at=_now())
        )

    # -- recovery ----------------------------------------------------------------------------

    async def pending(self) -> Sequence[uuid.UUID]:
        """Sagas nobody is driving: untouched for `stale_after` seconds, or past deadline."""
        now = _now()
        async with self.database.session() as session:
            rows = await session.execute(
                sa.select(saga_instances.c.id)
                .where(saga_instances.c.status.in_((RUNNING, COMPENSATING)))
                .where(
                    sa.or_(
                        saga_instances.c.updated_at < now - timedelta(seconds=self.stale_after),
                        saga_instances.c.deadline < now,
                    )
                )
                .order_by(saga_instances.c.created_at)
            )
            return [row[0] for row in rows]

    async def recover(self) -> int:
        """Finish every abandoned saga; returns how many it took up."""
        taken = 0
        for saga_id in await self.pending():
            if saga_id in self._locks:
                continue
            taken += 1
            try:
                await self.run(saga_id, waiting=False)
            except Exception:
                logger.exception("saga recovery failed", extra={"saga": str(saga_id)})
        return taken

    async def _recover_forever(self) -> None:
        while True:
            try:
                await self.recover()
            except Exception:
                logger.exception("saga recovery pass failed")
            await asyncio.sleep(self.recovery_interval)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._recover_forever(), name="saga-recovery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def start_sagas(app: FastAPI, *definitions: SagaDefinition) -> SagaRunner:
    """Run a service's sagas: a runner, and the clients it calls other services with, on
    `app.state.sagas` and `app.state.service_clients`, recovering abandoned sagas until
    `stop_sagas`. Call it from the handlers' `startup`, with each saga bound to its hooks."""
    tracer = getattr(app.state, "tracer", None) or get_tracer()  # create_service_app's
    clients = ServiceClients(app.state.settings, tracer=tracer)
    app.state.service_clients = clients
    metrics = getattr(app.state, "metrics", None)  # create_service_app's
    runner = SagaRunner(
        app.state.database,
        clients,
        {saga.name: saga for saga in definitions},
        metrics=metrics.saga_metrics() if metrics is not None else None,
        tracer=tracer,
    )
    app.state.sagas = runner
    await runner.start()
    return runner


async def stop_sagas(app: FastAPI) -> None:
    await app.state.sagas.stop()
    await app.state.service_clients.close()
