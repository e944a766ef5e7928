"""The console's ASGI app: its page and files, and the small JSON API the page reads.

    GET /_console                          the page (static/index.html)
    GET /_console/static/...               its script, stylesheet and the vendored Mermaid
    GET /_console/api/deployables          processes, health, restarts; upstream instances
    GET /_console/api/logs/{name}?lines=   the tail of a process's log
    GET /_console/api/edge                 circuit breakers and rate limit counters
    GET /_console/api/events?correlationId=&limit=   stored events, newest first
    GET /_console/api/events/stream        live events (server-sent events)
    GET /_console/api/traces?limit=        recent traces; /_console/api/traces/{id}: one
    GET /_console/api/architecture         the spec's Mermaid diagrams

Every response carries the gateway's security headers and a Content-Security-Policy that
allows this origin only and no inline script; the page's behaviour is in static/console.js.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudretail.runtime.console import edge
from cloudretail.runtime.console.architecture import read_diagrams
from cloudretail.runtime.console.events import EventsClient, EventsUnavailableError, admin_tokens
from cloudretail.runtime.console.stackview import StackView, UnknownProcessError
from cloudretail.runtime.gateway.config import ConsoleSettings
from cloudretail.runtime.gateway.headers import SECURITY_HEADERS
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

if TYPE_CHECKING:
    from cloudretail.runtime.gateway.app import Gateway

PREFIX = "/_console"
STATIC = Path(__file__).resolve().parent / "static"
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    **{name.decode(): value.decode() for name, value in SECURITY_HEADERS},
    "content-security-policy": POLICY,
}
_MAX_LINES = 1000
_MAX_EVENTS = 500


def _int(request: Request, name: str, default: int, most: int) -> int:
    try:
        value = int(request.query_params.get(name, default))
    except ValueError:
        return default
    return max(1, min(value, most))


class Console:
    """The ASGI app the gateway hands every /_console request to."""

    def __init__(self, settings: ConsoleSettings, gateway: Gateway) -> None:
        self.settings = settings
        self.gateway = gateway
        self.stack = StackView(Path(settings.data_dir))
        tokens = admin_tokens(
            settings.signing_key_file, gateway.config.jwt_issuer, gateway.config.jwt_audience
        )
        self.events = EventsClient(settings.events_url, tokens)
        # Set when the gateway is told to stop: open event streams end then, since the
        # server waits for every response in progress before it exits.
        self.closing = asyncio.Event()
        api = f"{PREFIX}/api"
        self.app = Starlette(
            routes=[
                Route(PREFIX, self.page),
                Route(f"{PREFIX}/", self.page),
                Route(f"{api}/deployables", self.deployables),
                Route(f"{api}/logs/{{name}}", self.logs),
                Route(f"{api}/edge", self.edge),
                Route(f"{api}/events", self.recent_events),
                Route(f"{api}/events/stream", self.event_stream),
                Route(f"{api}/traces", self.traces),
                Route(f"{api}/traces/{{trace_id}}", self.trace),
                Route(f"{api}/architecture", self.architecture),
                Mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="static"),
            ]
        )

    def close(self) -> None:
        """End the open event streams (the gateway is stopping)."""
        self.closing.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def secured(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.decode().lower() not in _HEADERS
                ]
                headers += [(name.encode(), value.encode()) for name, value in _HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, secured)

    # -- the page -------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return Response(
            (STATIC / "index.html").read_bytes(),
            media_type="text/html; charset=utf-8",
            headers={"cache-control": "no-store"},
        )

    # -- the API --------------------------------------------------------------------------

    async def deployables(self, request: Request) -> Response:
        """Each process with, when the gateway routes to it, its upstream's instances."""
        state = self.stack.state()
        routed = {_plain(upstream["name"]): upstream for upstream in edge.upstreams(self.gateway)}
        processes = await self.stack.processes()
        for process in processes:
            process["upstream"] = routed.get(_plain(process["deployable"]))
        return _json({"stack": state.get("status", "unknown"), "processes": processes})

    async def logs(self, request: Request) -> Response:
        name = request.path_params["name"]
        lines = _int(request, "lines", 50, _MAX_LINES)
        try:
            return _json({"name": name, "lines": self.stack.log_tail(name, lines)})
        except UnknownProcessError:
            return _json({"detail": f"no process {name} in the stack"}, 404)

    async def edge(self, request: Request) -> Response:
        return _json(
            {"upstreams": edge.upstreams(self.gateway), "rate_limit": edge.rate_limit(self.gateway)}
        )

    async def recent_events(self, request: Request) -> Response:
        correlation_id = request.query_params.get("correlationId", "").strip() or None
        limit = _int(request, "limit", 100, _MAX_EVENTS)
        try:
            return _json(await self.events.recent(correlation_id, limit))
        except EventsUnavailableError as error:
            return _json({"detail": str(error)}, 503)

    async def event_stream(self, request: Request) -> Response:
        async def relay() -> AsyncIterator[bytes]:
            try:
                async for messages in _until(self.closing, _unnamed(self.events.stream())):
                    yield messages
            except EventsUnavailableError as error:
                # Said in the stream, for the page to show; EventSource then retries.
                yield f"event: unavailable\ndata: {json.dumps(str(error))}\n\n".encode()

        return StreamingResponse(
            relay(), media_type="text/event-stream", headers={"cache-control": "no-store"}
        )

    async def traces(self, request: Request) -> Response:
        from cloudretail.runtime import localtraces  # protobuf types: only `up` has them

        limit = _int(request, "limit", 20, 200)
        store = localtraces.SpanFile(Path(self.settings.data_dir) / localtraces.TRACES_DIR)
        summaries = localtraces.recent(store.read(), limit)
        return _json(
            {
                "traces": [
                    {
                        "trace_id": summary.trace_id,
                        "start_ms": summary.start // 1_000_000,
                        "root": f"{summary.root.service}: {summary.root.name}",
                        "services": list(summary.services),
                        "spans": summary.spans,
                        "errors": summary.errors,
                        "duration_ms": round(summary.duration_ms, 1),
                    }
                    for summary in summaries
                ]
            }
        )

    async def trace(self, request: Request) -> Response:
        from cloudretail.runtime import localtraces

        store = localtraces.SpanFile(Path(self.settings.data_dir) / localtraces.TRACES_DIR)
        try:
            spans = localtraces.find_trace(store.read(), request.path_params["trace_id"])
        except localtraces.TraceError as error:
            return _json({"detail": str(error)}, 404)
        return _json({"trace_id": spans[0].trace_id, "spans": _tree(spans)})

    async def architecture(self, request: Request) -> Response:
        return _json({"diagrams": read_diagrams(self.settings.architecture)})


async def _until(stop: asyncio.Event, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`stream`'s items until `stop` is set (then it is closed, whatever it was waiting for)."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            item = asyncio.ensure_future(anext(stream))
            await asyncio.wait((item, stopping), return_when=asyncio.FIRST_COMPLETED)
            if not item.done():
                item.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await item
                return
            try:
                yield item.result()
            except StopAsyncIteration:
                return
    finally:
        stopping.cancel()
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


async def _unnamed(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The server-sent events of `stream` without their `event:` names, whole messages at a
    time: the event bus names each by its event type, which a browser's EventSource would
    then deliver only to a listener for that very type."""
    pending = b""
    async for chunk in stream:
        pending += chunk
        *messages, pending = pending.split(b"\n\n")
        if messages:
            yield b"".join(
                b"\n".join(line for line in message.split(b"\n") if not line.startswith(b"event:"))
                + b"\n\n"
                for message in messages
            )


def _plain(name: str) -> str:
    """A deployable's name as both the supervisor and the route table spell it (the route
    table's `event_bus` is the supervisor's `eventbus`)."""
    return name.replace("_", "").replace("-", "").lower()


def _json(payload: Any, status: int = 200) -> Response:
    return JSONResponse(payload, status, headers={"cache-control": "no-store"})


def _tree(spans: list[Any]) -> list[dict[str, Any]]:
    """The spans in tree order (children under their parent, by start), each with its depth
    and its start offset from the trace's first span."""
    ids = {span.span_id for span in spans}
    children: dict[str | None, list[Any]] = {}
    for span in spans:
        children.setdefault(span.parent_id if span.parent_id in ids else None, []).append(span)
    start = min(span.start for span in spans)
    ordered: list[dict[str, Any]] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, ()), key=lambda s: s.start):
            ordered.append(
                {
                    "depth": depth,
                    "service": span.service,
                    "name": span.name,
                    "offset_ms": round((span.start - start) / 1e6, 1),
                    "duration_ms": round(span.duration_ms, 1),
                    "error": span.error,
                }
            )
            walk(span.span_id, depth + 1)

    walk(None, 0)
    return ordered
