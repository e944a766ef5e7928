"""Calls to other services: one pooled client per callee, with timeouts, bounded retries of
idempotent requests, the caller's correlation id and the platform's service token.

Failures come back as `ServiceCallError` with a `kind` a saga can act on: the callee said
no (`rejected`, with its status and problem body), it took too long (`timeout`), it failed
after the request may have reached it (`unavailable`), or no attempt ever reached it
(`unreachable`: refused or timed out connecting, so it cannot have acted on the call).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx

from runtime.auth import SERVICE_TOKEN_HEADER
from runtime.config import ServiceSettings
from runtime.correlation import correlation_headers

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


@dataclass
class ServiceClients:
    """Pooled clients to the services this one calls (`<SERVICE>_URL` in the settings)."""

    settings: ServiceSettings
    timeout: float = 5.0
    retries: int = 2
    backoff: float = 0.1
    _clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    def _client(self, service: str) -> httpx.AsyncClient:
        if service not in self._clients:
            self._clients[service] = httpx.AsyncClient(
                base_url=self.settings.service_url(service),
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 2.0)),
                headers={SERVICE_TOKEN_HEADER: self.settings.service_token.get_secret_value()},
            )
        return self._clients[service]

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
        client = self._client(service)
        attempts = 1 + (self.retries if method.upper() in IDEMPOTENT else 0)
        sent = {**correlation_headers(), **(headers or {})}
        delivered = False  # may some attempt have reached the callee?
        for attempt in range(1, attempts + 1):
            try:
                response = await client.request(
                    method,
                    path,
                    json=json,
                    headers=sent,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                if attempt < attempts:
                    await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
                    continue
                raise ServiceCallError(
                    service,
                    "unavailable" if delivered else "unreachable",
                    f"{method} {path}: {type(error).__name__}",
                ) from None
            except httpx.TimeoutException:
                delivered = True
                if attempt < attempts:
                    await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
                    continue
                raise ServiceCallError(service, "timeout", f"{method} {path} timed out") from None
            except httpx.TransportError as error:
                delivered = True
                if attempt < attempts:
                    await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
                    continue
                raise ServiceCallError(
                    service, "unavailable", f"{method} {path}: {type(error).__name__}"
                ) from None
            delivered = True
            if response.status_code >= 500 and attempt < attempts:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
                continue
            if response.is_success:
                return response.json() if response.content else None
            try:
                problem = response.json()
            except ValueError:
                problem = {}
            kind = "unavailable" if response.status_code in (502, 503) else "rejected"
            if response.status_code == 504:
                kind = "timeout"
            raise ServiceCallError(
                service,
                kind,
                str(problem.get("detail") or f"{method} {path} answered {response.status_code}"),
                status=response.status_code,
                problem=problem if isinstance(problem, dict) else {},
            )
        raise AssertionError("unreachable")  # the loop always returns or raises

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
