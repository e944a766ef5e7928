"""The gateway as one pure ASGI app: edge checks in order, then the proxy.

Order per request: match the route (404/405), answer CORS preflights, identify the caller
(token, else address), rate limit (429), apply the route's auth rule (401/403), check the
body size (413), forward. Identifying before limiting means a valid token gets its own
quota wherever its holder connects from, while refused tokens are limited by address, so
guessing tokens costs quota too.

A routed request is the root span of a new trace (linked to the client's `traceparent`, if
it sent a valid one: the edge does not let clients choose trace ids or sampling) and the
forwarded call a client span inside it, whose context the upstream gets in place of the
client's trace headers.

No framework router or middleware stack runs per request: on this path every layer of
wrapping shows up in the latency, and the gateway's own endpoints are a few fixed paths
(health, metrics, the OpenAPI document and its Swagger UI). The dev console, which
`cloudretail up` alone turns on, is a small app of its own under /_console.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from functools import partial
from typing import TYPE_CHECKING

from cloudretail.runtime.auth import (
    Principal,
    RevocationList,
    TokenVerifier,
    http_jwks_fetcher,
    http_revocations_fetcher,
    revocations_url_for,
)
from cloudretail.runtime.correlation import (
    _ACCEPTABLE_ID,  # the services' rule for a client-supplied id, kept in one place
    correlation_id_var,
    new_correlation_id,
)
from cloudretail.runtime.docs import ASSETS, ASSETS_PATH, DOCS_PATH, asset, swagger_page
from cloudretail.runtime.errors import Problem
from cloudretail.runtime.gateway.authn import (
    CachingVerifier,
    Denial,
    authorize,
    bearer_token,
    invalid_token,
)
from cloudretail.runtime.gateway.config import GatewayConfig
from cloudretail.runtime.gateway.headers import (
    REQUEST_DROP,
    SECURITY_HEADERS,
    CorsPolicy,
    connection_tokens,
)
from cloudretail.runtime.gateway.observability import AccessLog, GatewayMetrics, RequestRecord
from cloudretail.runtime.gateway.openapi import OpenApiAggregator
from cloudretail.runtime.gateway.proxy import (
    CLIENT_CLOSED,
    BodyMode,
    BodyTooLargeError,
    ClientGoneError,
    Proxy,
    RequestBody,
)
from cloudretail.runtime.gateway.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from cloudretail.runtime.gateway.registry import Registry
from cloudretail.runtime.gateway.responses import Headers, send_body, send_json, send_problem
from cloudretail.runtime.gateway.routing import MethodMap, Route, RouteTable
from cloudretail.runtime.health import iso_timestamp
from cloudretail.runtime.metrics import Metrics
from cloudretail.runtime.tracing import (
    extract_context,
    fail,
    get_tracer,
    header_fields,
    inject_headers,
    untraced_path,
)
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Tracer, TracerProvider
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import Receive, Scope, Send

if TYPE_CHECKING:
    from cloudretail.runtime.console import Console

logger = logging.getLogger(__name__)

CONSOLE_PATH = "/_console"
# Bodies up to this size (with a Content-Length) are read before forwarding: they go out in
# one write with the head, and an idempotent request can be retried on another instance.
BUFFER_BODY_UP_TO = 64 * 1024

_MALFORMED_AUTHORIZATION = Denial(
    401,
    "Invalid token",
    "the Authorization header must be 'Bearer <token>'",
    ((b"www-authenticate", b'Bearer realm="cloudretail", error="invalid_request"'),),
)
_NO_VERIFIER = Denial(503, "Authentication unavailable", "no token verifier is configured")


class _Request:
    """What one pass over the request headers learns; the forwarded lines are built too."""

    __slots__ = (
        "authorization",
        "chunked",
        "content_length",
        "correlation_id",
        "forwarded",
        "host",
        "origin",
        "preflight",
        "trace_carrier",
        "xff",
    )

    def __init__(self, headers: list[tuple[bytes, bytes]], trace_fields: frozenset[bytes]) -> None:
        self.authorization: bytes | None = None
        self.origin: bytes | None = None
        self.preflight = False
        self.host = b""
        self.xff: bytes | None = None
        self.correlation_id: str | None = None
        self.content_length: bytes | None = None
        self.chunked = False
        # The client's trace headers: continued by the gateway's span, never passed on.
        self.trace_carrier: dict[str, str] | None = None
        lines: list[bytes] = []
        hop_tokens: frozenset[bytes] | None = None
        for name, value in headers:
            if name in REQUEST_DROP:
                if name == b"host":
                    self.host = value
                elif name == b"content-length":
                    self.content_length = value
                elif name == b"transfer-encoding":
                    self.chunked = b"chunked" in value.lower()
                elif name == b"x-forwarded-for":
                    self.xff = value
                elif name == b"x-correlation-id":
                    text = value.decode("latin-1").strip()
                    if _ACCEPTABLE_ID.fullmatch(text):
                        self.correlation_id = text
                elif name == b"connection":
                    hop_tokens = connection_tokens(value)
                continue
            if name in trace_fields:
                if self.trace_carrier is None:
                    self.trace_carrier = {}
                self.trace_carrier[name.decode("latin-1")] = value.decode("latin-1")
                continue
            if name == b"authorization":
                self.authorization = value
            elif name == b"origin":
                self.origin = value
            elif name == b"access-control-request-method":
                self.preflight = True
            lines += (name, b": ", value, b"\r\n")
        if hop_tokens:
            # Headers the client named in Connection are for this hop only (RFC 9110 7.6.1).
            lines = []
            for name, value in headers:
                if name not in REQUEST_DROP and name not in hop_tokens and name not in trace_fields:
                    lines += (name, b": ", value, b"\r\n")
        self.forwarded = lines


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        verifier: TokenVerifier | None,
        limiter: RateLimiter,
        metrics: Metrics | None = None,
        access_log: AccessLog | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.config = config
        self.access_log = access_log or AccessLog()
        self.tracer = tracer or get_tracer()
        self.trace_fields = frozenset(name.encode() for name in header_fields())
        route_file = config.routes_file
        self.table = RouteTable(Route.from_spec(spec) for spec in route_file.routes)
        self.registry = Registry(
            config.instances,
            route_file.circuit_breaker,
            interval=config.health_interval,
            timeout=config.health_timeout,
            unhealthy_after=config.unhealthy_after,
        )
        self.auth = CachingVerifier(verifier) if verifier is not None else None
        self.limiter = limiter
        self.proxy = Proxy(
            timeout=route_file.timeout_seconds,
            retries=config.retries,
            backoff=config.retry_backoff,
            body_limit=route_file.body_limit_bytes,
            reset_seconds=route_file.circuit_breaker.reset_seconds,
        )
        self.body_limit = route_file.body_limit_bytes
        self.cors = CorsPolicy.of(route_file.cors_origins)
        self.metrics = GatewayMetrics(self.registry, metrics, limiter=limiter)
        token = config.routes_file.token
        title = f"{token.issuer} API" if token else "API"  # the platform's name
        self.openapi = OpenApiAggregator(
            self.registry, self.table, ttl=config.openapi_ttl, title=title
        )
        self.started_at = time.monotonic()
        self._started = False
        # The dev console (/_console): only when `cloudretail up` configures it.
        self.console: Console | None = None
        if config.console is not None:
            from cloudretail.runtime.console import Console  # never loaded otherwise

            self.console = Console(config.console, self)
        self._own_endpoints: dict[str, Callable[[Send, Headers], Awaitable[int]]] = {
            "/health/live": self._live,
            "/health/ready": self._ready,
        }
        # Off in production unless enabled (config.py): a path not served is a plain 404.
        if config.serves_metrics:
            self._own_endpoints["/metrics"] = self._metrics
        if config.serves_docs:
            self._own_endpoints["/openapi.json"] = self._openapi
            # Swagger UI over the merged document, from local files (cloudretail.runtime.docs).
            self._docs_page = swagger_page("/openapi.json", f"{title} - Swagger UI")
            self._own_endpoints[DOCS_PATH] = self._docs
            for name in ASSETS:
                self._own_endpoints[f"{ASSETS_PATH}/{name}"] = partial(self._docs_asset, name)

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            # Not proxied: no route in the table is a WebSocket.
            await receive()
            await send({"type": "websocket.close", "code": 1008})

    async def startup(self) -> None:
        if not self._started:
            self._started = True
            await self.registry.start()

    def stopping(self) -> None:
        """A signal asked the server to stop: end what would hold it (the console's event
        streams), before it waits for the responses in progress."""
        if self.console is not None:
            self.console.close()

    async def shutdown(self) -> None:
        await self.registry.stop()
        await self.limiter.close()
        self.access_log.flush()
        self._started = False

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as error:
                    await send({"type": "lifespan.startup.failed", "message": repr(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- one request -----------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        if not self._started:
            await self.startup()
        if self.console is not None and scope["path"].startswith(CONSOLE_PATH):
            # The console's page polls: no trace, metric or access line for it, like probes.
            await self.console(scope, receive, send)
            return
        client = scope.get("client")
        request = _Request(scope["headers"], self.trace_fields)
        record = RequestRecord(scope["method"], scope["path"], client[0] if client else "")
        correlation_id = request.correlation_id or new_correlation_id()
        context = correlation_id_var.set(correlation_id)
        own = self._own_endpoints.get(record.path)
        # Probes, scrapes and the gateway's own documents start no trace.
        quiet = own is not None or untraced_path(record.path)
        span = None if quiet else self._server_span(request, record)
        traced = None if span is None else otel_context.attach(trace.set_span_in_context(span))
        try:
            if own is not None:
                record.route = record.path
                headers = [
                    (b"x-correlation-id", correlation_id.encode()),
                    *self.cors.response_headers(request.origin),
                ]
                record.status = await self._own(own, record.method, correlation_id, headers, send)
            else:
                await self._route(scope, receive, send, request, record, correlation_id)
        except Exception as error:
            logger.exception(
                "unhandled error", extra={"method": record.method, "path": record.path}
            )
            record.status = 500
            try:
                await send_problem(send, 500, correlation_id=correlation_id)
            except RuntimeError:  # the response had already started: let the server cut it
                raise error from None
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.observe(record, elapsed)
            self.access_log.write(record, elapsed)  # in the span: the line has its trace id
            correlation_id_var.reset(context)
            if span is not None and traced is not None:
                otel_context.detach(traced)
                _end_server_span(span, record)

    def _server_span(self, request: _Request, record: RequestRecord) -> Span:
        """A new trace per request. The gateway is the edge: a client's `traceparent` is
        linked, not continued, so no client chooses the platform's trace ids or switches
        its recording off (sampled flag 00); the link still joins the client's trace."""
        carrier = request.trace_carrier
        client = (
            trace.get_current_span(extract_context(carrier)).get_span_context() if carrier else None
        )
        return self.tracer.start_span(
            record.method,
            context=Context(),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": record.method, "url.path": record.path},
            links=[Link(client)] if client is not None and client.is_valid else None,
        )

    def _client_span(self, method: str, upstream: str) -> Span | None:
        """The forwarded call's span, inside the request's; None for an untraced request."""
        if not trace.get_current_span().get_span_context().is_valid:
            return None
        return self.tracer.start_span(
            f"{method} {upstream}",
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": method, "peer.service": upstream},
        )

    async def _own(
        self,
        endpoint: Callable[[Send, Headers], Awaitable[int]],
        method: str,
        cid: str,
        headers: Headers,
        send: Send,
    ) -> int:
        if method not in ("GET", "HEAD"):
            allow = [(b"allow", b"GET, HEAD"), *headers]
            await send_problem(send, 405, correlation_id=cid, headers=allow)
            return 405
        return await endpoint(send, headers)

    async def _route(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request: _Request,
        record: RequestRecord,
        cid: str,
    ) -> None:
        path = record.path
        method = record.method
        cid_header = (b"x-correlation-id", cid.encode())
        cors = self.cors.response_headers(request.origin)
        methods = self.table.match(path)
        if methods is None:
            record.status = 404
            await send_problem(
                send,
                404,
                detail=f"no route for {path}",
                correlation_id=cid,
                headers=[cid_header, *cors],
            )
            return
        route = methods.get(method)
        if route is None and method == "HEAD":
            route = methods.get("GET")
        if method == "OPTIONS" and request.preflight and request.origin is not None:
            record.route = next(iter(methods.values())).template
            record.status = await self._preflight(send, request.origin, methods, cid_header)
            return
        if route is None:
            record.status = 405
            allowed = {*methods, "HEAD"} if "GET" in methods else set(methods)
            allow = ", ".join(sorted(allowed)).encode()
            await send_problem(
                send,
                405,
                detail=f"{method} is not allowed on {path}",
                correlation_id=cid,
                headers=[(b"allow", allow), cid_header, *cors],
            )
            return
        record.route = route.template
        record.upstream = route.upstream

        principal, refused = await self._identify(request)
        if principal is not None:
            record.subject = principal.subject
            key = "sub:" + principal.subject
        else:
            key = "ip:" + record.client
        decision = await self.limiter.hit(key)
        edge_headers = [cid_header, *decision.headers(), *cors]
        if not decision.allowed:
            self.metrics.rate_limited.inc()
            record.status = 429
            await send_problem(
                send,
                429,
                detail="rate limit exceeded; see Retry-After",
                correlation_id=cid,
                headers=edge_headers,
            )
            return
        denial = authorize(route, principal, refused)
        if denial is not None:
            record.status = denial.status
            await send_problem(
                send,
                denial.status,
                title=denial.title,
                detail=denial.detail,
                correlation_id=cid,
                headers=[*denial.headers, *edge_headers],
            )
            return

        try:
            body = await self._body_plan(request, receive)
        except BodyTooLargeError:
            record.status = 413
            await send_problem(
                send,
                413,
                detail=f"the request body is larger than {self.body_limit} bytes",
                correlation_id=cid,
                headers=edge_headers,
            )
            return
        except ClientGoneError:
            record.status = CLIENT_CLOSED
            return

        query = scope.get("query_string", b"")
        target = scope.get("raw_path") or path.encode()
        request_line = b"%s %s%s%s HTTP/1.1\r\n" % (
            method.encode(),
            target,
            b"?" if query else b"",
            query,
        )
        client_ip = record.client.encode()
        request.forwarded += (
            b"x-forwarded-for: ",
            request.xff + b", " + client_ip if request.xff else client_ip,
            b"\r\nx-forwarded-proto: ",
            scope.get("scheme", "http").encode(),
            b"\r\nx-forwarded-host: ",
            request.host,
            b"\r\nx-correlation-id: ",
            cid_header[1],
            b"\r\n",
        )
        upstream = self.registry.upstreams[route.upstream]
        span = self._client_span(method, route.upstream)
        if span is not None:
            for name, value in inject_headers(trace.set_span_in_context(span)).items():
                request.forwarded += (name.encode(), b": ", value.encode("latin-1"), b"\r\n")
        with nullcontext() if span is None else trace.use_span(span, end_on_exit=True):
            outcome = await self.proxy.forward(
                upstream,
                method,
                request_line,
                b"".join(request.forwarded),
                body,
                receive,
                send,
                [*SECURITY_HEADERS, *edge_headers],
            )
            if span is not None:
                span.set_attribute("http.response.status_code", outcome.status)
                if outcome.failure is not None:
                    fail(span, outcome.failure.detail)
        record.status = outcome.status
        record.instance = outcome.instance
        record.attempts = outcome.attempts
        failure = outcome.failure
        if failure is None or failure.status == CLIENT_CLOSED:
            return
        self.metrics.upstream_failures.labels(route.upstream, str(failure.status)).inc()
        extra = edge_headers
        if failure.retry_after is not None:
            extra = [(b"retry-after", str(failure.retry_after).encode()), *edge_headers]
        await send_problem(
            send,
            failure.status,
            title=failure.title,
            detail=failure.detail,
            correlation_id=cid,
            headers=extra,
        )

    async def _identify(self, request: _Request) -> tuple[Principal | None, Denial | None]:
        if request.authorization is None:
            return None, None
        token = bearer_token(request.authorization)
        if token is None:
            return None, _MALFORMED_AUTHORIZATION
        if self.auth is None:
            return None, _NO_VERIFIER
        try:
            return await self.auth.verify(token), None
        except Problem as problem:
            return None, invalid_token(problem)

    async def _body_plan(self, request: _Request, receive: Receive) -> RequestBody:
        """How to send the body on; raises BodyTooLargeError or ClientGoneError."""
        if request.content_length is not None:
            length = int(request.content_length)  # the HTTP parser accepts digits only
            if length > self.body_limit:
                raise BodyTooLargeError
            if length > BUFFER_BODY_UP_TO:
                return RequestBody(BodyMode.LENGTH, length=length)
            chunks: list[bytes] = []
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGoneError
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            return RequestBody(BodyMode.BUFFERED, b"".join(chunks))
        if request.chunked:
            return RequestBody(BodyMode.CHUNKED)
        return RequestBody(BodyMode.NONE)

    async def _preflight(
        self,
        send: Send,
        origin: bytes,
        methods: MethodMap,
        cid_header: tuple[bytes, bytes],
    ) -> int:
        if not self.cors.allows(origin):
            await send_problem(
                send,
                403,
                title="Origin not allowed",
                detail="this origin may not call the API from a browser",
                correlation_id=cid_header[1].decode(),
                headers=[cid_header, (b"vary", b"Origin")],
            )
            return 403
        headers = [*self.cors.preflight_headers(origin, methods), cid_header]
        await send_body(send, 204, b"", b"", headers)
        return 204

    # -- the gateway's own endpoints -------------------------------------------------------

    async def _live(self, send: Send, headers: Headers) -> int:
        # Touches no upstream: a service outage must not make the orchestrator restart us.
        await send_json(
            send,
            200,
            {"status": "alive", "timestamp": iso_timestamp(), "uptime": self._uptime()},
            headers,
        )
        return 200

    async def _ready(self, send: Send, headers: Headers) -> int:
        # What a load balancer needs: can this gateway serve, and which upstreams can it
        # reach, by name. No instance addresses: they are internal (per-instance health is
        # in the metrics, gateway_upstream_instance_healthy).
        details = {name: up.healthy_count > 0 for name, up in self.registry.upstreams.items()}
        # The rate limit store being down degrades the gateway (limits per process) but
        # does not stop it serving, so it is reported and never makes readiness fail.
        degraded = await self.limiter.check()
        if self.config.ready_policy == "all":
            serving = all(details.values())
        else:
            serving = any(details.values())
        ready = self.registry.checked_once and serving
        status = 200 if ready else 503
        await send_json(
            send,
            status,
            {
                "status": "healthy" if ready else "unhealthy",
                "timestamp": iso_timestamp(),
                "uptime": self._uptime(),
                "policy": self.config.ready_policy,
                "details": details,
                "rate_limit": {"store": self.limiter.store, "degraded": degraded},
            },
            headers,
        )
        return status

    async def _metrics(self, send: Send, headers: Headers) -> int:
        await send_body(send, 200, self.metrics.render(), CONTENT_TYPE_LATEST.encode(), headers)
        return 200

    async def _openapi(self, send: Send, headers: Headers) -> int:
        await send_json(send, 200, await self.openapi.document(), headers)
        return 200

    async def _docs(self, send: Send, headers: Headers) -> int:
        policy = (b"content-security-policy", self._docs_page.policy.encode())
        await send_body(
            send,
            200,
            self._docs_page.html,
            b"text/html; charset=utf-8",
            headers,
            security=(*SECURITY_HEADERS, policy),
        )
        return 200

    async def _docs_asset(self, name: str, send: Send, headers: Headers) -> int:
        cache = (b"cache-control", b"public, max-age=86400")
        await send_body(send, 200, asset(name), ASSETS[name].encode(), [cache, *headers])
        return 200

    def _uptime(self) -> int:
        return int(time.monotonic() - self.started_at)


def _end_server_span(span: Span, record: RequestRecord) -> None:
    span.update_name(f"{record.method} {record.route}")
    span.set_attribute("http.route", record.route)
    span.set_attribute("http.response.status_code", record.status)
    if record.status >= 500:
        fail(span, f"answered {record.status}")
    span.end()


def create_gateway(
    config: GatewayConfig,
    *,
    verifier: TokenVerifier | None = None,
    redis_url: str | None = None,
    limiter: RateLimiter | None = None,
    metrics: Metrics | None = None,
    access_log: AccessLog | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Gateway:
    """The gateway's ASGI app.

    `verifier` defaults to one reading the token issuer's JWKS (JWKS_URL, else where the
    route file says); `redis_url` (default: the config's REDIS_URL) shares the rate limit
    across replicas, otherwise it is kept in process. Spans go to `tracer_provider`
    (default: the process's).
    """
    if verifier is None:
        jwks_url = config.default_jwks_url()
        if jwks_url:
            verifier = TokenVerifier(
                http_jwks_fetcher(jwks_url),
                issuer=config.jwt_issuer,
                audience=config.jwt_audience,
                revocations=RevocationList(http_revocations_fetcher(revocations_url_for(jwks_url))),
                roles=config.routes_file.token.roles if config.routes_file.token else None,
            )
    if limiter is None:
        limit = config.rate_limit
        url = redis_url or config.redis_url
        limiter = (
            RedisRateLimiter(
                url, limit.requests, limit.window_seconds, ca_file=config.redis_ca_file
            )
            if url
            else LocalRateLimiter(limit.requests, limit.window_seconds)
        )
    return Gateway(
        config,
        verifier=verifier,
        limiter=limiter,
        metrics=metrics,
        access_log=access_log,
        tracer=get_tracer(tracer_provider),
    )
