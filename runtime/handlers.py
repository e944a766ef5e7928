"""What a hand-written handler receives: one context object per request."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from cloudretail.runtime.auth import OptionalPrincipalDep, Principal
from cloudretail.runtime.cache import Cache
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.deps import CacheDep, SessionDep, SettingsDep
from cloudretail.runtime.errors import Problem
from fastapi import Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

Model = TypeVar("Model", bound=BaseModel)


@dataclass
class Context:
    """The request, its database session, the caller (if any) and the service's pieces."""

    request: Request
    session: AsyncSession
    principal: Principal | None
    settings: ServiceSettings
    cache: Cache

    @property
    def user(self) -> Principal:
        """The authenticated caller; routes with `auth: public` may have none (401 then)."""
        if self.principal is None:
            raise Problem(401, detail="send a bearer token in the Authorization header")
        return self.principal

    def path(self, name: str) -> str:
        return str(self.request.path_params[name])

    def path_uuid(self, name: str) -> uuid.UUID:
        """Path parameter `name` as a UUID; a 422 naming it when it is not one."""
        value = self.path(name)
        try:
            return uuid.UUID(value)
        except ValueError:
            raise RequestValidationError(
                [
                    {
                        "type": "uuid_parsing",
                        "loc": ("path", name),
                        "msg": "Input should be a valid UUID",
                        "input": value,
                    }
                ]
            ) from None

    def query_int(self, name: str, default: int, low: int, high: int) -> int:
        """Query parameter `name` as an integer from `low` to `high` (`default` when absent);
        a 422 naming it otherwise (a value beyond BIGINT must not reach SQL)."""
        raw = self.request.query_params.get(name)
        if raw is None:
            return default
        try:
            value: int | None = int(raw)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            message = f"must be an integer from {low} to {high}"
            raise Problem(
                422,
                detail=f"{name} {message}",
                errors=[{"loc": ["query", name], "msg": message, "type": "value_error"}],
            )
        return value

    async def json(self) -> Any:
        try:
            return await self.request.json()
        except ValueError:
            raise Problem(400, detail="the request body is not valid JSON") from None

    async def body(self, model: type[Model]) -> Model:
        """The JSON body validated strictly by `model`; a 422 problem naming each bad field
        if not. Strict as JSON types go: an `int` field takes `2`, not `true`, `"2"` or `2.0`;
        what JSON has no type for (UUIDs, decimals, times) still comes as a string."""
        try:
            return model.model_validate_json(await self.request.body(), strict=True)
        except ValidationError as error:
            if any(e["type"] == "json_invalid" for e in error.errors()):
                raise Problem(400, detail="the request body is not valid JSON") from None
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in error.errors()]
            ) from None


async def get_context(
    request: Request,
    session: SessionDep,
    principal: OptionalPrincipalDep,
    settings: SettingsDep,
    cache: CacheDep,
) -> Context:
    return Context(request, session, principal, settings, cache)


ContextDep = Annotated[Context, Depends(get_context)]


def created(body: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    """A 201 response with a JSON body (Decimal, UUID and datetime made JSON-safe)."""
    return JSONResponse(jsonable_encoder(body), status_code=201, headers=headers)


def not_implemented(service: str, handler: str) -> Problem:
    """What a generated stub raises until someone writes the handler."""
    return Problem(
        501,
        title="Not implemented",
        detail=f"handler {service}.{handler} is not written yet (handlers/{service}.py)",
    )
