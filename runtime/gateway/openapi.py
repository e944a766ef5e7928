"""One OpenAPI document for everything the gateway routes, merged from the services' own.

Each service's `/openapi.json` is fetched on first demand and cached for `ttl` seconds; a
service that cannot be reached is retried after a short pause and, meanwhile, left out
(named under `x-unavailable-upstreams`) so the rest of the document is still served. Only
operations the route table exposes are kept: a service's internal routes never appear.
Component schemas are merged; two services defining the same name differently get their
own copies, renamed `<upstream>_<name>`, with references rewritten to match.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from cloudretail.runtime.gateway.registry import Registry, get
from cloudretail.runtime.gateway.routing import Route, RouteTable
from cloudretail.runtime.httpclient import UpstreamError
from cloudretail.runtime.openapi import PROBLEM_SCHEMA, problems

logger = logging.getLogger(__name__)

_REF_PREFIX = "#/components/schemas/"
_RETRY_FAILED_AFTER = 5.0


class OpenApiAggregator:
    def __init__(
        self,
        registry: Registry,
        table: RouteTable,
        *,
        ttl: float = 60.0,
        timeout: float = 3.0,
        title: str = "API",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._table = table
        self._ttl = ttl
        self._timeout = timeout
        self._title = title
        self._clock = clock
        # upstream -> (document or None when unreachable, fetched at)
        self._documents: dict[str, tuple[dict[str, Any] | None, float]] = {}
        self._lock = asyncio.Lock()

    async def document(self) -> dict[str, Any]:
        async with self._lock:  # one refresh at a time, however many clients ask
            names = sorted({route.upstream for route in self._table.routes})
            stale = [name for name in names if self._stale(name)]
            if stale:
                fetched = await asyncio.gather(*(self._fetch(name) for name in stale))
                now = self._clock()
                for name, document in zip(stale, fetched, strict=True):
                    self._documents[name] = (document, now)
            return self._merge(names)

    def _stale(self, name: str) -> bool:
        cached = self._documents.get(name)
        if cached is None:
            return True
        document, fetched_at = cached
        age = self._clock() - fetched_at
        return age >= (self._ttl if document is not None else _RETRY_FAILED_AFTER)

    async def _fetch(self, name: str) -> dict[str, Any] | None:
        upstream = self._registry.upstreams.get(name)
        if upstream is None:
            return None
        candidates = sorted(upstream.instances, key=lambda instance: not instance.healthy)
        for instance in candidates:
            try:
                status, body = await get(
                    instance.pool, "/openapi.json", instance.host_header, self._timeout
                )
                if status == 200:
                    document = json.loads(body)
                    if isinstance(document, dict):
                        return document
            except (UpstreamError, TimeoutError, ValueError) as error:
                logger.info(
                    "openapi document unavailable",
                    extra={"upstream": name, "instance": instance.url, "error": repr(error)},
                )
        return None

    def _merge(self, names: list[str]) -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        schemas: dict[str, Any] = {}
        unavailable: list[str] = []
        documents = {name: self._documents.get(name, (None, 0.0))[0] for name in names}
        for name in names:
            document = documents[name]
            if document is None:
                unavailable.append(name)
                continue
            renames = _claim_schemas(name, document, schemas)
            for template, routes in self._table.paths().items():
                item = document.get("paths", {}).get(template)
                if not isinstance(item, dict):
                    continue
                for method, route in routes.items():
                    if route.upstream != name or method.lower() not in item:
                        continue
                    operation = _rewrite_refs(item[method.lower()], renames)
                    responses = operation.setdefault("responses", {})
                    for status, response in problems(*_gateway_problems(route)).items():
                        responses.setdefault(str(status), response)
                    operation["x-gateway-auth"] = route.auth
                    if route.auth != "public":
                        operation["security"] = [{"bearerAuth": []}]
                        if route.roles:
                            operation["x-gateway-roles"] = sorted(route.roles)
                    paths.setdefault(template, {})[method.lower()] = operation
        merged: dict[str, Any] = {
            "openapi": "3.1.0",
            "info": {"title": self._title, "version": "1.0.0"},
            "paths": dict(sorted(paths.items())),
            "components": {
                "schemas": dict(sorted({**schemas, "Problem": PROBLEM_SCHEMA}.items())),
                "securitySchemes": {
                    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
                },
            },
        }
        if unavailable:
            merged["x-unavailable-upstreams"] = unavailable
        return merged


def _gateway_problems(route: Route) -> tuple[int, ...]:
    """What the gateway itself may answer instead of the service: a missing or bad token,
    a role it lacks, a body over the limit, the rate limit, an upstream it cannot reach
    (502), one whose breaker is open or that has no ready instance (503), or one too slow
    (504)."""
    found = {413, 429, 502, 503, 504}
    if route.auth != "public":
        found.add(401)
    if route.roles:
        found.add(403)
    return tuple(sorted(found))


def _claim_schemas(name: str, document: dict[str, Any], merged: dict[str, Any]) -> dict[str, str]:
    """Add the document's schemas to `merged`; return the renames its references need."""
    own = document.get("components", {}).get("schemas", {})
    renames: dict[str, str] = {}
    for schema_name in own:
        if schema_name in merged and merged[schema_name] != own[schema_name]:
            renames[schema_name] = f"{name}_{schema_name}"
    for schema_name, schema in own.items():
        merged[renames.get(schema_name, schema_name)] = _rewrite_refs(schema, renames)
    return renames


def _rewrite_refs(value: Any, renames: dict[str, str]) -> Any:
    """A deep copy of `value` with `$ref`s to renamed schemas pointing at the new names."""
    if isinstance(value, dict):
        copied = {key: _rewrite_refs(item, renames) for key, item in value.items()}
        ref = copied.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF_PREFIX):
            target = ref[len(_REF_PREFIX) :]
            if target in renames:
                copied["$ref"] = _REF_PREFIX + renames[target]
        return copied
    if isinstance(value, list):
        return [_rewrite_refs(item, renames) for item in value]
    return value
