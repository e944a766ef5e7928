"""FastAPI dependencies for what create_service_app puts on app.state."""

from __future__ import annotations

from typing import Annotated, cast

from cloudretail.runtime.cache import Cache
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.db import Database, SessionDep, get_database, get_session
from fastapi import Depends, Request

__all__ = [
    "CacheDep",
    "DatabaseDep",
    "SessionDep",
    "SettingsDep",
    "get_cache",
    "get_database",
    "get_session",
    "get_settings",
]


def _state_attribute(request: Request, name: str) -> object:
    value = getattr(request.app.state, name, None)
    if value is None:
        raise RuntimeError(f"app.state.{name} is not set: build the app with create_service_app")
    return value


# The dependencies are `async def` although they do not await: FastAPI runs a plain `def`
# dependency in its thread pool, a thread hand-off per dependency per request.


async def get_settings(request: Request) -> ServiceSettings:
    settings = _state_attribute(request, "settings")
    assert isinstance(settings, ServiceSettings)
    return settings


async def get_cache(request: Request) -> Cache:
    # cast, not isinstance: a runtime Protocol check would walk every method per request.
    return cast(Cache, _state_attribute(request, "cache"))


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
CacheDep = Annotated[Cache, Depends(get_cache)]
DatabaseDep = Annotated[Database, Depends(get_database)]
