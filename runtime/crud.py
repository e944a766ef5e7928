"""The generic half of generated CRUD routes: filters, ordering, pages, cache-aside reads.

Generated routes say *which* columns and filters; these functions say *how*. Writes commit
before they return, so a cache invalidation never races a transaction that is still open.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from cloudretail.runtime.cache import Cache
from cloudretail.runtime.errors import Problem
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute

Row = TypeVar("Row", bound=DeclarativeBase)
Condition = sa.ColumnElement[bool]

CACHE_HEADER = "X-Cache"


def eq(column: InstrumentedAttribute[Any], value: object) -> Condition | None:
    return None if value is None else column == value


def ge(column: InstrumentedAttribute[Any], value: object) -> Condition | None:
    return None if value is None else column >= value


def le(column: InstrumentedAttribute[Any], value: object) -> Condition | None:
    return None if value is None else column <= value


def gt(column: InstrumentedAttribute[Any], value: object) -> Condition | None:
    return None if value is None else column > value


def lt(column: InstrumentedAttribute[Any], value: object) -> Condition | None:
    return None if value is None else column < value


def _like_pattern(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search(columns: Sequence[InstrumentedAttribute[Any]], term: str | None) -> Condition | None:
    """Case-insensitive substring match on any of `columns`; `%` and `_` match themselves."""
    if term is None or not term.strip():
        return None
    pattern = _like_pattern(term.strip())
    return sa.or_(*(column.ilike(pattern, escape="\\") for column in columns))


def where(*conditions: Condition | None) -> list[Condition]:
    return [condition for condition in conditions if condition is not None]


def order(model: type[Row], sort: str | None, default: str) -> list[sa.UnaryExpression[Any]]:
    """`price` ascending, `-price` descending; the primary key breaks ties so pages are stable.

    Generated routes type `sort` as the spec's sort columns, so only those arrive here; a
    name that is not a column of `model` is still a 422 on `sort`, never an AttributeError.
    """
    field = sort or default
    descending = field.startswith("-")
    name = field.removeprefix("-")
    columns = sa.inspect(model).columns
    if name not in columns:
        raise RequestValidationError(
            [{"loc": ("query", "sort"), "msg": f"cannot sort by {field!r}", "type": "value_error"}]
        )
    column = columns[name]
    keys = [column.desc() if descending else column.asc()]
    for key in sa.inspect(model).primary_key:
        if key.name != name:
            keys.append(key.asc())
    return keys


async def page(
    session: AsyncSession,
    model: type[Row],
    conditions: Iterable[Condition],
    ordering: Sequence[sa.UnaryExpression[Any]],
    limit: int,
    offset: int,
) -> tuple[list[Row], int]:
    filters = list(conditions)
    total = await session.scalar(sa.select(sa.func.count()).select_from(model).where(*filters))
    query = sa.select(model).where(*filters).order_by(*ordering).limit(limit).offset(offset)
    rows = list((await session.scalars(query)).all())
    return rows, int(total or 0)


async def get_or_404(session: AsyncSession, model: type[Row], key: object) -> Row:
    row = await session.get(model, key)
    if row is None:
        name = getattr(model, "__tablename__", model.__name__)
        raise Problem(404, detail=f"no {name} row with key {key}")
    return row


Changes = dict[str, tuple[Any, Any]]


async def insert(session: AsyncSession, model: type[Row], values: dict[str, Any]) -> Row:
    """Add a row and flush, so its key and defaults are known before events are written."""
    row = model(**values)
    session.add(row)
    await session.flush()
    return row


def assign(row: DeclarativeBase, values: dict[str, Any]) -> Changes:
    """Set `values` on `row`; return the columns whose value really changed, (old, new)."""
    changes: Changes = {}
    for name, value in values.items():
        old = getattr(row, name)
        if old != value:
            changes[name] = (old, value)
            setattr(row, name, value)
    return changes


def new_values(changes: Changes) -> dict[str, Any]:
    return {name: new for name, (_, new) in changes.items()}


async def commit(session: AsyncSession, row: DeclarativeBase) -> None:
    """Commit the row with the events written beside it, then reload server-side values."""
    await session.commit()
    await session.refresh(row)


async def delete(session: AsyncSession, row: DeclarativeBase) -> None:
    await session.delete(row)
    await session.commit()


# -- cache-aside reads ---------------------------------------------------------------------


def cache_key(table: str, request: Request) -> str:
    """One key per path and query (parameters sorted, so their order does not matter)."""
    query = "&".join(f"{k}={v}" for k, v in sorted(request.query_params.multi_items()))
    return f"{table}:{request.url.path}?{query}"


async def cached(cache: Cache, key: str) -> Response | None:
    body = await cache.get(key)
    if body is None:
        return None
    return Response(body, media_type="application/json", headers={CACHE_HEADER: "HIT"})


async def store(cache: Cache, key: str, value: BaseModel, *, ttl: float) -> Response:
    body = value.model_dump_json().encode()
    await cache.set(key, body, ttl=ttl)
    return Response(body, media_type="application/json", headers={CACHE_HEADER: "MISS"})


async def invalidate(cache: Cache, table: str) -> None:
    await cache.delete_prefix(f"{table}:")
