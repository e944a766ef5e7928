"""What cloudretail.runtime.openapi and cloudretail.runtime.schemas add to a service's OpenAPI document."""

from __future__ import annotations

import re
from decimal import Decimal

from cloudretail.runtime.openapi import complete_openapi, problems, request_body
from cloudretail.runtime.schemas import decimal_pattern
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field


class Line(BaseModel):
    sku: str
    quantity: int


class Basket(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lines: list[Line]
    total: Decimal = Field(
        max_digits=10, decimal_places=2, json_schema_extra=decimal_pattern(10, 2)
    )


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/baskets", responses=problems(409, 422), openapi_extra=request_body(Basket))
    async def make() -> dict[str, str]:
        return {}

    complete_openapi(app)
    return app


def test_problem_statuses_point_at_one_problem_schema() -> None:
    document = _app().openapi()
    responses = document["paths"]["/baskets"]["post"]["responses"]
    for status in ("409", "422"):
        content = responses[status]["content"]
        assert list(content) == ["application/problem+json"]
        assert content["application/problem+json"]["schema"] == {
            "$ref": "#/components/schemas/Problem"
        }
    schemas = document["components"]["schemas"]
    assert schemas["Problem"]["required"] == ["type", "title", "status"]
    # FastAPI's own 422 body is never sent, so it is not advertised either.
    assert "HTTPValidationError" not in schemas


def test_a_handler_body_and_its_nested_models_land_in_components() -> None:
    document = _app().openapi()
    body = document["paths"]["/baskets"]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Basket"}
    schemas = document["components"]["schemas"]
    assert schemas["Basket"]["properties"]["lines"]["items"] == {
        "$ref": "#/components/schemas/Line"
    }
    assert set(schemas["Line"]["required"]) == {"sku", "quantity"}
    assert "x-definitions" not in str(document)


def test_a_decimal_string_carries_the_pattern_of_what_fits() -> None:
    price = _app().openapi()["components"]["schemas"]["Basket"]["properties"]["total"]
    (string,) = [branch for branch in price["anyOf"] if branch["type"] == "string"]
    pattern = re.compile(string["pattern"])
    assert all(pattern.search(text) for text in ("12.34", "0", "99999999.99"))
    assert not any(pattern.search(text) for text in ("", "abc", "1.234", "123456789"))
