"""The request guard on its own: limits, media types, JSON shape and NUL, then a faithful body."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudretail.runtime.app import create_service_app
from cloudretail.runtime.guard import body_problems, is_json_media_type, json_problems
from fastapi import APIRouter, Request

from tests.runtime.conftest import make_settings, running

router = APIRouter()


@router.post("/echo")
async def echo(request: Request) -> dict[str, Any]:
    body = await request.body()
    return {"length": len(body), "json": json.loads(body) if body else None}


@router.post("/empty")
async def empty() -> str:
    return "ok"


@router.get("/search")
async def search(q: str = "") -> str:
    return q


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/g.db", max_body_bytes=1000)
    async with running(create_service_app(settings, routers=[router])) as client:
        yield client


@pytest.mark.parametrize(
    ("content_type", "json_like"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        (" Application/JSON ", True),
        ("application/problem+json", True),
        ("application/vnd.api+json; charset=utf-8", True),
        ("text/plain", False),
        ("text/json", False),
        ("application/jsonp", False),
        ("multipart/form-data; boundary=x", False),
        ("", False),
        (None, False),
    ],
)
def test_json_media_types(content_type: str | None, json_like: bool) -> None:
    assert is_json_media_type(content_type) is json_like


def test_json_problems_point_at_each_place() -> None:
    value = {"a": ["ok", "bad\x00"], "b\x00": 1, "c": [[[["deep"]]]]}
    assert json_problems(value, max_depth=4) == [
        {"loc": ["body", "a", 1], "msg": "must not contain NUL (\\u0000) characters"},
        {"loc": ["body", "b\x00"], "msg": "field names must not contain NUL (\\u0000) characters"},
        {"loc": ["body", "c", 0, 0, 0], "msg": "JSON nested deeper than 4 levels"},
    ]
    assert json_problems({"fine": [1, 2.5, None, True, "text"]}) == []


def test_body_problems_within_and_beyond_the_parser() -> None:
    assert body_problems(b"not json") == []
    assert body_problems(b'{"a": "\\u0000"}') == [
        {"loc": ["body", "a"], "msg": "must not contain NUL (\\u0000) characters"}
    ]
    deep = b'{"x": 1, "s": "[{", "items": [0, ' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    (problem,) = body_problems(deep, max_depth=3)
    assert problem["loc"] == ["body", "items", 1, 0]
    assert "nested" in problem["msg"]


async def test_the_route_reads_the_body_it_was_sent(client: httpx.AsyncClient) -> None:
    body = {"name": "Ada", "tags": ["x", "y"], "n": 3}
    response = await client.post("/echo", json=body)
    assert response.status_code == 200
    assert response.json() == {"length": len(response.request.content), "json": body}


async def test_a_chunked_body_within_the_limit_arrives_whole(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"a": '
        yield b'"' + b"x" * 500 + b'"}'

    response = await client.post(
        "/echo", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    assert response.json()["json"] == {"a": "x" * 500}


async def test_the_limit_is_inclusive(client: httpx.AsyncClient) -> None:
    exactly = b'"' + b"x" * 998 + b'"'
    fits = await client.post("/echo", content=exactly, headers={"Content-Type": "application/json"})
    over = await client.post(
        "/echo", content=exactly + b" ", headers={"Content-Type": "application/json"}
    )
    assert fits.status_code == 200
    assert over.status_code == 413
    assert over.headers["content-type"] == "application/problem+json"
    assert over.json()["detail"] == "The request body is larger than 1000 bytes."


async def test_no_body_needs_no_media_type(client: httpx.AsyncClient) -> None:
    assert (await client.post("/empty")).status_code == 200
    assert (await client.post("/empty", headers={"Content-Type": "text/plain"})).status_code == 200


async def test_a_bad_content_length_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/echo", content=b"{}", headers={"Content-Type": "application/json", "Content-Length": "x"}
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


async def test_nul_in_the_query_or_path_is_a_422(client: httpx.AsyncClient) -> None:
    query = await client.get("/search", params={"q": "a\x00b", "page": "1"})
    path = await client.get("/search%00")
    fine = await client.get("/search", params={"q": "100%"})
    assert query.status_code == 422
    assert [error["loc"] for error in query.json()["errors"]] == [["query", "q"]]
    assert path.status_code == 422
    assert path.json()["errors"][0]["loc"] == ["path"]
    assert fine.json() == "100%"


async def test_refusals_are_counted_and_carry_the_correlation_id(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/echo", content=b"{}", headers={"Content-Type": "text/plain", "X-Correlation-ID": "c-1"}
    )
    assert response.status_code == 415
    assert response.json()["correlation_id"] == "c-1"
    assert response.headers["x-correlation-id"] == "c-1"
    metrics = (await client.get("/metrics")).text
    assert 'status="415"' in metrics
