"""`up --demo`: the project's demo.yaml sent through an HTTP API, generic and idempotent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cloudretail.runtime.demo import DemoError, load_demo, read_demo
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.gateway.conftest import Server

DEMO = """\
login:
  path: /login
  body: {user: "{admin_email}", secret: "{admin_password}"}
  token: token
requests:
  - as: admin
    method: POST
    path: /plants
    body: {name: fern}
    then:
      - {as: admin, method: PUT, path: "/plants/{id}/water", body: {litres: 2}}
  - {method: POST, path: /gardeners, body: {name: ada}}
show: "gardener ada"
"""


def _garden(seen: list[tuple[str, str, Any, str | None]]) -> FastAPI:
    app = FastAPI()
    plants: dict[str, str] = {}

    @app.post("/login")
    async def login(request: Request) -> dict[str, str]:
        body = await request.json()
        assert body == {"user": "root@garden", "secret": "s3cret"}
        return {"token": "T"}

    @app.post("/plants")
    async def plant(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(("POST", "/plants", body, request.headers.get("authorization")))
        if body["name"] in plants:
            return JSONResponse({"detail": "exists"}, status_code=409)
        plants[body["name"]] = f"p{len(plants) + 1}"
        return JSONResponse({"id": plants[body["name"]]}, status_code=201)

    @app.put("/plants/{plant_id}/water")
    async def water(plant_id: str, request: Request) -> dict[str, str]:
        seen.append(("PUT", f"/plants/{plant_id}/water", await request.json(), None))
        return {"ok": "yes"}

    @app.post("/gardeners")
    async def gardener(request: Request) -> JSONResponse:
        seen.append(
            ("POST", "/gardeners", await request.json(), request.headers.get("authorization"))
        )
        return JSONResponse({}, status_code=409 if len(seen) > 3 else 201)

    return app


async def test_demo_data_is_sent_in_order_and_a_second_load_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "demo.yaml").write_text(DEMO)
    demo = read_demo(tmp_path / "demo.yaml")
    seen: list[tuple[str, str, Any, str | None]] = []
    server = await Server(_garden(seen)).start()
    try:
        first = await load_demo(server.url, demo, "root@garden", "s3cret")
        assert (first.sent, first.created, first.existing, first.show) == (3, 2, 0, "gardener ada")
        assert seen == [
            ("POST", "/plants", {"name": "fern"}, "Bearer T"),
            ("PUT", "/plants/p1/water", {"litres": 2}, None),
            ("POST", "/gardeners", {"name": "ada"}, None),  # anonymous: no admin token
        ]
        again = await load_demo(server.url, demo, "root@garden", "s3cret")
        assert (again.sent, again.created, again.existing) == (2, 0, 2)  # no second watering
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("requests: [{method: FETCH, path: /x}]", "requests.0.method"),
        ("requests: [{method: GET, path: x}]", "requests.0.path"),
        ("requests: []", "requests"),
        ("requests: [{method: GET, path: /x, colour: red}]", "requests.0.colour"),
        ("requests: [{method: GET\n", "not valid YAML"),
    ],
)
def test_bad_demo_data_is_named_where(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "demo.yaml").write_text(text)
    with pytest.raises(DemoError, match=message):
        read_demo(tmp_path / "demo.yaml")


async def test_a_failed_request_and_an_unknown_field_are_named(tmp_path: Path) -> None:
    (tmp_path / "demo.yaml").write_text(
        "requests:\n"
        "  - {method: POST, path: /gardeners, body: {}, then: [{method: GET, path: '/x/{nope}'}]}\n"
    )
    demo = read_demo(tmp_path / "demo.yaml")
    seen: list[tuple[str, str, Any, str | None]] = []
    server = await Server(_garden(seen)).start()
    try:
        with pytest.raises(DemoError, match=r"requests\[0\]\.then\[0\] GET /x/\{nope\}: .*'nope'"):
            await load_demo(server.url, demo, "a", "b")
        admin_only = read_demo_text(tmp_path, "requests: [{as: admin, method: GET, path: /x}]")
        with pytest.raises(DemoError, match="no `login`"):
            await load_demo(server.url, admin_only, "a", "b")
    finally:
        await server.stop()


def read_demo_text(folder: Path, text: str) -> Any:
    (folder / "other.yaml").write_text(text)
    return read_demo(folder / "other.yaml")


async def test_then_bodies_are_filled_and_reports_wait_for_their_field(tmp_path: Path) -> None:
    app = FastAPI()
    orders: list[Any] = []
    polls: list[int] = []

    @app.post("/plants")
    async def plant() -> JSONResponse:
        return JSONResponse({"id": "p7"}, status_code=201)

    @app.post("/orders")
    async def order(request: Request) -> JSONResponse:
        orders.append(await request.json())
        return JSONResponse({"id": "o1"}, status_code=201)

    @app.get("/summary")
    async def summary() -> dict[str, Any]:
        polls.append(1)  # the order is counted from the third look on (events take a moment)
        return {"totals": {"orders": 1 if len(polls) >= 3 else 0, "revenue": "9.50"}}

    demo = read_demo_text(
        tmp_path,
        "requests:\n"
        "  - method: POST\n"
        "    path: /plants\n"
        "    then:\n"
        "      - {method: POST, path: /orders, body: {items: [{plant: '{id}', n: 1}], note: '{id}!'}}\n"
        "report:\n"
        "  - {label: figures, path: /summary, until: totals.orders, show: [totals.orders, totals.revenue, totals.nope]}\n",
    )
    server = await Server(app).start()
    try:
        loaded = await load_demo(server.url, demo, "a", "b")
    finally:
        await server.stop()
    assert orders == [{"items": [{"plant": "p7", "n": 1}], "note": "p7!"}]
    assert len(polls) == 3
    assert loaded.reports == (
        ("figures", "totals.orders=1, totals.revenue=9.50, totals.nope=None"),
    )
