from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from cloudretail.runtime.app import create_service_app
from cloudretail.runtime.correlation import (
    CORRELATION_HEADER,
    CorrelationIdMiddleware,
    correlation_headers,
    get_correlation_id,
)
from cloudretail.runtime.logs import configure_logging
from cloudretail.runtime.metrics import UNMATCHED_ROUTE, Metrics, MetricsMiddleware, metrics_router
from cloudretail.runtime.saga import Call, SagaDefinition, Step, start_sagas, stop_sagas
from fastapi import APIRouter, FastAPI
from prometheus_client.parser import text_string_to_metric_families

from tests.runtime.conftest import make_settings, running

router = APIRouter()
log = logging.getLogger("tests.runtime.handler")


@router.get("/api/products/{id}")
async def get_product(id: str) -> dict[str, str | None]:
    log.info("looking up product", extra={"product_id": id})
    return {"id": id, "correlation_id": get_correlation_id(), **correlation_headers()}


@router.get("/api/fail")
async def fail() -> None:
    raise ValueError("nope")


@pytest.fixture
async def app(tmp_path: Path) -> FastAPI:
    return create_service_app(
        make_settings(f"sqlite+aiosqlite:///{tmp_path}/obs.db"), routers=[router]
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app) as client:
        yield client


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    previous_handlers, previous_level = list(root.handlers), root.level
    configure_logging("testsvc", "INFO", stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = previous_handlers
        root.setLevel(previous_level)


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


async def test_incoming_correlation_id_is_echoed_and_visible_to_handlers(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/products/7", headers={CORRELATION_HEADER: "abc-123"})
    assert response.headers[CORRELATION_HEADER] == "abc-123"
    assert response.json() == {
        "id": "7",
        "correlation_id": "abc-123",
        CORRELATION_HEADER: "abc-123",
    }


async def test_missing_correlation_id_is_generated(client: httpx.AsyncClient) -> None:
    first = (await client.get("/api/products/7")).headers[CORRELATION_HEADER]
    second = (await client.get("/api/products/7")).headers[CORRELATION_HEADER]
    assert uuid.UUID(first).version == 4
    assert first != second


@pytest.mark.parametrize("hostile", ['x"}\\n{"level":"forged', "a" * 500, " "])
async def test_unsafe_correlation_ids_are_replaced(client: httpx.AsyncClient, hostile: str) -> None:
    response = await client.get("/api/products/7", headers={CORRELATION_HEADER: hostile})
    assert uuid.UUID(response.headers[CORRELATION_HEADER]).version == 4


async def test_correlation_middleware_alone_and_outside_requests() -> None:
    app = FastAPI()
    app.include_router(router)
    app.add_middleware(CorrelationIdMiddleware)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/api/products/1", headers={"x-correlation-id": "lower-ok"})
    assert response.headers[CORRELATION_HEADER] == "lower-ok"
    assert get_correlation_id() is None
    assert correlation_headers() == {}


async def test_logs_are_json_lines_with_the_correlation_id(
    client: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    await client.get("/api/products/42", headers={CORRELATION_HEADER: "log-me"})

    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    handler_line = next(line for line in lines if line["message"] == "looking up product")
    assert handler_line["service"] == "testsvc"
    assert handler_line["level"] == "info"
    assert handler_line["correlation_id"] == "log-me"
    assert handler_line["product_id"] == "42"
    assert handler_line["timestamp"].endswith("Z")
    access_line = next(line for line in lines if line["logger"] == "cloudretail.access")
    assert access_line["correlation_id"] == "log-me"
    assert access_line["status"] == 200
    assert access_line["path"] == "/api/products/42"
    assert access_line["duration_ms"] >= 0


async def test_error_logs_carry_the_traceback_as_one_line(
    client: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    await client.get("/api/fail", headers={CORRELATION_HEADER: "err-1"})
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    error_line = next(line for line in lines if line["message"] == "unhandled error")
    assert error_line["level"] == "error"
    assert error_line["correlation_id"] == "err-1"
    assert "ValueError: nope" in error_line["exception"]


def test_uvicorn_colour_duplicates_are_dropped(log_stream: io.StringIO) -> None:
    logging.getLogger("uvicorn.error").info(
        "Started server process [%d]", 1, extra={"color_message": "\x1b[36m%d\x1b[0m"}
    )
    line = json.loads(log_stream.getvalue().splitlines()[-1])
    assert line["message"] == "Started server process [1]"
    assert "color_message" not in line


def test_unserialisable_extras_do_not_lose_the_line(log_stream: io.StringIO) -> None:
    logging.getLogger("tests").warning("odd extra", extra={"thing": object()})
    line = json.loads(log_stream.getvalue().splitlines()[-1])
    assert line["message"] == "odd extra"
    assert line["thing"].startswith("<object object")


async def test_metrics_use_route_templates_and_status(client: httpx.AsyncClient) -> None:
    for product_id in ("1", "2", "3"):
        await client.get(f"/api/products/{product_id}")
    await client.get("/api/fail")
    await client.get("/no/such/page")
    await client.request("BREW", "/api/products/1")

    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    counts = {
        (labels["method"], labels["route"], labels["status"]): value
        for labels, value in metric_samples(response.text, "http_requests_total")
    }
    assert counts[("GET", "/api/products/{id}", "200")] == 3
    assert counts[("GET", "/api/fail", "500")] == 1
    assert counts[("GET", UNMATCHED_ROUTE, "404")] == 1
    assert counts[("OTHER", "/api/products/{id}", "405")] == 1
    assert not any(route.startswith("/api/products/1") for _, route, _ in counts)
    histogram = metric_samples(response.text, "http_request_duration_seconds_count")
    assert ({"method": "GET", "route": "/api/products/{id}", "status": "200"}, 3.0) in histogram


async def test_metrics_include_database_pool_gauges(client: httpx.AsyncClient) -> None:
    text = (await client.get("/metrics")).text
    for name in ("db_pool_size", "db_pool_checked_out", "db_pool_overflow"):
        assert len(metric_samples(text, name)) == 1, name


async def test_two_apps_in_one_process_keep_separate_metrics(tmp_path: Path) -> None:
    first = create_service_app(
        make_settings(f"sqlite+aiosqlite:///{tmp_path}/a.db"), routers=[router]
    )
    second = create_service_app(
        make_settings(f"sqlite+aiosqlite:///{tmp_path}/b.db"), routers=[router]
    )
    async with running(first) as first_client, running(second) as second_client:
        await first_client.get("/api/products/1")
        await first_client.get("/api/products/1")
        await second_client.get("/api/products/1")
        first_text = (await first_client.get("/metrics")).text
        second_text = (await second_client.get("/metrics")).text

    def product_count(text: str) -> float:
        return sum(
            value
            for labels, value in metric_samples(text, "http_requests_total")
            if labels["route"] == "/api/products/{id}"
        )

    assert product_count(first_text) == 2
    assert product_count(second_text) == 1


async def test_route_templates_inside_a_mounted_app() -> None:
    inner = FastAPI()
    inner.include_router(router)
    outer = FastAPI()
    metrics = Metrics(process_metrics=False)
    outer.mount("/v2", inner)
    outer.include_router(metrics_router(metrics))
    outer.add_middleware(MetricsMiddleware, metrics=metrics)
    transport = httpx.ASGITransport(app=outer)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/v2/api/products/9")).status_code == 200
        text = (await client.get("/metrics")).text
    routes = {labels["route"] for labels, _ in metric_samples(text, "http_requests_total")}
    assert "/v2/api/products/{id}" in routes


# The families a generated dashboard and its alert rules read, by exposition name and type.
EVENT_AND_SAGA_FAMILIES = {
    "outbox_pending_events": "gauge",
    "outbox_oldest_pending_age_seconds": "gauge",
    "outbox_sent_total": "counter",
    "consumer_lag_messages": "gauge",
    "consumer_events_total": "counter",
    "saga_steps_total": "counter",
    "saga_outcomes_total": "counter",
}


async def test_a_service_app_lists_the_event_and_saga_families_from_the_start(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """Before any event or saga: HELP and TYPE for all seven, the unlabelled ones at 0."""
    text = (await client.get("/metrics")).text
    lines = text.splitlines()
    for name, kind in EVENT_AND_SAGA_FAMILIES.items():
        assert f"# TYPE {name} {kind}" in lines, name
        assert any(line.startswith(f"# HELP {name} ") for line in lines), name
    for name in ("outbox_pending_events", "outbox_oldest_pending_age_seconds", "outbox_sent_total"):
        assert metric_samples(text, name) == [({}, 0.0)], name

    # start_sagas (from the handlers' startup) reports into the same registry.
    saga = SagaDefinition("checkout", (Step("hold", Call("stock", "POST", "/hold")),))
    runner = await start_sagas(app, saga)
    try:
        assert runner.metrics is app.state.metrics.saga_metrics()
        text = (await client.get("/metrics")).text
    finally:
        await stop_sagas(app)
    outcomes = {
        labels["outcome"]: value
        for labels, value in metric_samples(text, "saga_outcomes_total")
        if labels["saga"] == "checkout"
    }
    assert outcomes == {"completed": 0.0, "compensated": 0.0, "failed": 0.0}
