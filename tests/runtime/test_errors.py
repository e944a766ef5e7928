from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cloudretail.runtime.app import create_service_app
from cloudretail.runtime.correlation import CORRELATION_HEADER
from cloudretail.runtime.db import SessionDep
from cloudretail.runtime.errors import PROBLEM_MEDIA_TYPE, Problem, install_problem_handlers
from fastapi import APIRouter, FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, insert, text

from tests.runtime.conftest import DEAD_POSTGRES_URL, make_settings, running, unique_name

SECRET_MESSAGE = "password=hunter2 at db-internal-7:5432"

metadata = MetaData()
skus = Table(
    "skus",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code", String(20), unique=True, nullable=False),
)


class NewProduct(BaseModel):
    name: str = Field(min_length=1)
    price: float = Field(gt=0)


router = APIRouter()


@router.get("/api/products/{product_id}")
async def get_product(product_id: int) -> dict[str, int]:
    if product_id == 404:
        raise Problem(404, f"Product {product_id} does not exist", type="/problems/not-found")
    if product_id == 409:
        raise Problem(409, "Not enough stock", title="Out of stock", available=2)
    return {"id": product_id}


@router.post("/api/products")
async def create_product(product: NewProduct) -> NewProduct:
    return product


@router.get("/api/private")
async def private() -> None:
    raise HTTPException(401, "Sign in first", headers={"WWW-Authenticate": "Bearer"})


@router.get("/api/forbidden")
async def forbidden() -> None:
    raise HTTPException(403)


@router.get("/api/odd")
async def odd() -> None:
    raise HTTPException(400, detail={"field": "sku", "problem": "taken"})


@router.get("/api/boom")
async def boom() -> None:
    raise RuntimeError(SECRET_MESSAGE)


@router.post("/api/skus/{code}")
async def add_sku(code: str, session: SessionDep) -> dict[str, str]:
    await session.execute(insert(skus).values(code=code))
    # The unique violation surfaces at commit, after the handler returned.
    return {"code": code}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_service_app(
        make_settings(f"sqlite+aiosqlite:///{tmp_path}/errors.db"), routers=[router]
    )
    async with running(app) as client:
        async with app.state.database.engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        yield client


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert body["type"]
    assert body["correlation_id"] == response.headers[CORRELATION_HEADER]
    assert isinstance(body, dict)
    return body


async def test_unknown_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/nowhere"), 404)
    assert body == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "correlation_id": body["correlation_id"],
    }


async def test_raised_problem_keeps_its_members(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/api/products/404"), 404)
    assert body["detail"] == "Product 404 does not exist"
    assert body["type"] == "/problems/not-found"

    body = assert_problem(await client.get("/api/products/409"), 409)
    assert body["title"] == "Out of stock"
    assert body["available"] == 2


async def test_wrong_method_is_a_405_problem_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.delete("/api/products/1")
    assert_problem(response, 405)
    assert "GET" in response.headers["allow"]


async def test_auth_errors_keep_their_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/private")
    body = assert_problem(response, 401)
    assert body["detail"] == "Sign in first"
    assert response.headers["www-authenticate"] == "Bearer"
    assert_problem(await client.get("/api/forbidden"), 403)


async def test_structured_http_exception_detail_goes_to_errors(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/api/odd"), 400)
    assert body["errors"] == {"field": "sku", "problem": "taken"}
    assert "detail" not in body


async def test_validation_errors_are_a_422_problem_with_locations(
    client: httpx.AsyncClient,
) -> None:
    body = assert_problem(await client.post("/api/products", json={"name": "", "price": -1}), 422)
    assert body["title"] == "Unprocessable Content"
    errors = body["errors"]
    assert isinstance(errors, list)
    assert {tuple(error["loc"]) for error in errors} == {("body", "name"), ("body", "price")}
    assert all(set(error) == {"loc", "msg"} and error["msg"] for error in errors)

    body = assert_problem(await client.get("/api/products/not-a-number"), 422)
    assert body["errors"][0]["loc"] == ["path", "product_id"]  # type: ignore[index]


async def test_integrity_error_is_a_409_without_sql(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/skus/ABC-1")).status_code == 200
    response = await client.post("/api/skus/ABC-1")
    body = assert_problem(response, 409)
    assert body["detail"] == "A resource with the same unique value already exists."
    text = response.text.lower()
    for leak in ("insert", "skus", "unique constraint", "sqlite", "abc-1"):
        assert leak not in text


async def test_unexpected_error_is_a_generic_500(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="cloudretail.runtime.errors"):
        response = await client.get("/api/boom", headers={CORRELATION_HEADER: "trace-500"})
    body = assert_problem(response, 500)
    assert body["correlation_id"] == "trace-500"
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert "Traceback" not in response.text
    # The details go to the log instead, with the traceback.
    logged = [record for record in caplog.records if record.exc_info]
    assert len(logged) == 1
    assert SECRET_MESSAGE in str(logged[0].exc_info[1])  # type: ignore[index]


async def test_handlers_work_on_a_plain_fastapi_app() -> None:
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/api/boom")
        assert response.status_code == 500
        assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
        # Without the correlation middleware there is no id, and the member says so.
        assert response.json()["correlation_id"] is None
        assert (await client.get("/missing")).json()["title"] == "Not Found"


async def test_integrity_errors_are_classified_on_every_backend(database_url: str) -> None:
    local = MetaData()
    parents = Table(unique_name("parents"), local, Column("id", Integer, primary_key=True))
    children = Table(
        unique_name("children"),
        local,
        Column("id", Integer, primary_key=True),
        Column("parent_id", ForeignKey(parents.c.id), nullable=False),
        Column("label", String(20), unique=True),
    )
    child_router = APIRouter()

    @child_router.post("/children/{child_id}")
    async def add_child(child_id: int, parent_id: int, label: str, session: SessionDep) -> None:
        await session.execute(
            insert(children).values(id=child_id, parent_id=parent_id, label=label)
        )

    app = create_service_app(make_settings(database_url), routers=[child_router])
    async with running(app) as client:
        database = app.state.database
        async with database.engine.begin() as connection:
            await connection.run_sync(local.create_all)
        try:
            async with database.session() as session:
                await session.execute(insert(parents).values(id=1))
            assert (await client.post("/children/1?parent_id=1&label=a")).status_code == 200
            duplicate = assert_problem(await client.post("/children/2?parent_id=1&label=a"), 409)
            assert "already exists" in str(duplicate["detail"])
            orphan = assert_problem(await client.post("/children/3?parent_id=99&label=b"), 409)
            assert "does not exist" in str(orphan["detail"])
        finally:
            async with database.engine.begin() as connection:
                await connection.run_sync(local.drop_all)


async def test_unreachable_database_is_a_503_problem() -> None:
    db_router = APIRouter()

    @db_router.get("/query")
    async def query(session: SessionDep) -> int:
        return int((await session.execute(text("SELECT 1"))).scalar_one())

    app = create_service_app(make_settings(DEAD_POSTGRES_URL), routers=[db_router])
    async with running(app) as client:
        response = await client.get("/query")
    body = assert_problem(response, 503)
    assert response.headers["retry-after"] == "5"
    assert "127.0.0.1" not in response.text
    assert "refused" not in str(body.get("detail", "")).lower()


def test_problem_refuses_to_shadow_standard_members() -> None:
    with pytest.raises(TypeError, match="standard names"):
        Problem(400, correlation_id=str(uuid.uuid4()))


async def test_a_value_postgres_cannot_store_is_a_422_as_a_last_resort(postgres_url: str) -> None:
    # Routes bound their input first (generated parameter types, the request guard); this
    # is what is left when a hand-written route passes something on unchecked.
    cast_router = APIRouter()

    @cast_router.get("/cast/{number}")
    async def cast(number: int, session: SessionDep) -> int:
        return int(
            (await session.execute(text("SELECT CAST(:n AS integer)"), {"n": number})).one()[0]
        )

    app = create_service_app(make_settings(postgres_url), routers=[cast_router])
    async with running(app) as client:
        fits = await client.get("/cast/7")
        too_big = await client.get(f"/cast/{10**20}")
    assert fits.json() == 7
    body = assert_problem(too_big, 422)
    assert "integer" not in too_big.text and "$1" not in too_big.text
    assert body["detail"] == "A value in the request does not fit what the service can store."
