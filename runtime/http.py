"""Calls to other services: one pooled client per callee, with timeouts, bounded retries of
idempotent requests, the caller's correlation id and trace context, and the platform's
service token. Each call is a client span (its retries included).

Failures come back as `ServiceCallError` with a `kind` a saga can act on: the callee said
no (`rejected`, with its status and problem body), it took too long (`timeout`), it failed
after the request may have reached it (`unavailable`), or no attempt ever reached it
(`unreachable`: refused or timed out connecting, so it cannot have acted on the call).
"""

from __future__ import annotations

import asyncio
import json as json_module
from dataclasses import dataclass, field
from typing import Any

from cloudretail.runtime.auth import SERVICE_TOKEN_HEADER
from cloudretail.runtime.config import ServiceSettings, service_env_key
from cloudretail.runtime.correlation import correlation_headers
from cloudretail.runtime.httpclient import (
    ConnectionPool,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeoutError,
    exchange,
    pool_for,
)
from cloudretail.runtime.jsonenc import dumps
from cloudretail.runtime.tracing import get_tracer, inject_headers
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer

# Methods a retry cannot apply twice; the gateway and service calls both go by it.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class ServiceCallError(Exception):
    def __init__(
        self,
        service: str,
        kind: str,
        detail: str,
        *,
        status: int | None = None,
        problem: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{service}: {detail}")
        self.service = service
        self.kind = kind  # "rejected" | "timeout" | "unavailable" | "unreachable"
        self.detail = detail
        self.status = status
        self.problem = problem or {}


@dataclass(frozen=True)
class _Callee:
    pool: ConnectionPool
    prefix: str  # the base URL's path, put before each call's path


@dataclass
class ServiceClients:
    """Pooled keep-alive connections to the services this one calls (`<SERVICE>_URL` in the
    settings), over the platform's own HTTP/1.1 client: httpx spent about a fifth of a
    saga-driving service's CPU on its own machinery."""

    settings: ServiceSettings
    timeout: float = 5.0
    retries: int = 2
    backoff: float = 0.1
    tracer: Tracer = field(default_factory=get_tracer)
    _callees: dict[str, _Callee] = field(default_factory=dict)

    def _callee(self, service: str) -> _Callee:
        callee = self._callees.get(service)
        if callee is None:
            url = self.settings.service_url(service)
            try:
                pool, prefix = pool_for(url, connect_timeout=min(self.timeout, 2.0))
            except ValueError:
                raise ValueError(
                    f"{service_env_key(service)}_URL must be an http(s) URL, not {url!r}"
                ) from None
            callee = self._callees[service] = _Callee(pool, prefix.rstrip("/"))
        return callee

    async def call(
        self,
        service: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """The JSON body of a 2xx answer; ServiceCallError for anything else."""
        callee = self._callee(service)
        method = method.upper()
        with self.tracer.start_as_current_span(
            f"{method} {service}",
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": method, "url.path": path, "peer.service": service},
        ) as span:
            try:
                return await self._call(service, callee, method, path, json, headers, timeout)
            except ServiceCallError as error:
                # The span ends marked failed, with the error recorded.
                if error.status is not None:
                    span.set_attribute("http.response.status_code", error.status)
                raise

    async def _call(
        self,
        service: str,
        callee: _Callee,
        method: str,
        path: str,
        json: Any,
        headers: dict[str, str] | None,
        timeout: float | None,
    ) -> Any:
        attempts = 1 + (self.retries if method in IDEMPOTENT else 0)
        body = b"" if json is None else dumps(json).encode()
        sent = {
            "accept": "application/json",
            SERVICE_TOKEN_HEADER: self.settings.service_token.get_secret_value(),
            **({"content-type": "application/json"} if json is not None else {}),
            **correlation_headers(),
            **inject_headers(),
            **(headers or {}),
        }
        wait = self.timeout if timeout is None else timeout
        delivered = False  # may some attempt have reached the callee?
        for attempt in range(1, attempts + 1):
            try:
                reply = await exchange(
                    callee.pool, method, callee.prefix + path, sent.items(), body, wait
                )
            except UpstreamConnectError as error:
                if attempt < attempts:
                    await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
                    continue
                raise ServiceCallError(
                    service,
                    "unavailable" if delivered else "unreachable",
                    # The error's class only: its text names internal addresses, and a
                    # saga's failure detail reaches the client.
                    f"{method} {path}: {type(error).__name__}",
                ) from None
            except UpstreamTimeoutError:
                delivered = True
                if attempt < attempts:
                    await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
                    continue
                raise ServiceCallError(service, "timeout", f"{method} {path} timed out") from None
            except UpstreamError as error:
                delivered = True
                if attempt < attempts:
                    await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
                    continue
                raise ServiceCallError(
                    service, "unavailable", f"{method} {path}: {type(error).__name__}"
                ) from None
            delivered = True
            if reply.status >= 500 and attempt < attempts:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
                continue
            if 200 <= reply.status < 300:
                trace.get_current_span().set_attribute("http.response.status_code", reply.status)
                return _json(reply.body) if reply.body else None
            problem = _json(reply.body) if reply.body else {}
            if not isinstance(problem, dict):
                problem = {}
            kind = "unavailable" if reply.status in (502, 503) else "rejected"
            if reply.status == 504:
                kind = "timeout"
            raise ServiceCallError(
                service,
                kind,
                str(problem.get("detail") or f"{method} {path} answered {reply.status}"),
                status=reply.status,
                problem=problem,
            )
        raise AssertionError("unreachable")  # the loop always returns or raises

    async def close(self) -> None:
        for callee in self._callees.values():
            callee.pool.close()
        self._callees.clear()


def _json(body: bytes) -> Any:
    """A body as JSON; what is not JSON reads as an empty problem."""
    try:
        return json_module.loads(body)
    except ValueError:
        return {}
