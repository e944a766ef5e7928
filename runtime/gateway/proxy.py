"""Forward one request to an upstream: pick an instance, retry what is safe, relay the answer.

Retries: only idempotent methods, only when the request cannot have taken effect or was
never answered (no connection, or the connection died before a response head), only while
the request body can be sent again (none, or small enough to have been buffered), and
preferably on another instance. Timeouts are not retried: a slow upstream asked twice is
slower still. Every transport failure and timeout counts against the instance's circuit
breaker, and so do the answers `breaker.answer_is_failure` names (500, 502, and 503/504
that are not a deliberate problem+json answer); any other answer is a success.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass
from enum import Enum

from cloudretail.runtime.gateway.breaker import answer_is_failure
from cloudretail.runtime.gateway.headers import PROXIED_CSP, RESPONSE_DROP
from cloudretail.runtime.gateway.registry import Upstream, UpstreamInstance
from cloudretail.runtime.http import IDEMPOTENT
from cloudretail.runtime.httpclient import (
    Connection,
    UpstreamBodyError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamNoResponseError,
    UpstreamTimeoutError,
)
from starlette.types import Receive, Send

_CSP = b"content-security-policy"
_CONTENT_TYPE = b"content-type"


class BodyMode(Enum):
    NONE = "none"
    BUFFERED = "buffered"
    LENGTH = "length"
    CHUNKED = "chunked"


@dataclass(slots=True)
class RequestBody:
    """How the client's body reaches the upstream.

    BUFFERED bodies were read before forwarding (small, with Content-Length), so a retry
    can send them again; LENGTH and CHUNKED bodies stream through as they arrive.
    """

    mode: BodyMode
    data: bytes = b""
    length: int = 0

    def framing(self) -> bytes:
        if self.mode is BodyMode.BUFFERED:
            return b"content-length: %d\r\n" % len(self.data)
        if self.mode is BodyMode.LENGTH:
            return b"content-length: %d\r\n" % self.length
        if self.mode is BodyMode.CHUNKED:
            return b"transfer-encoding: chunked\r\n"
        return b""

    @property
    def replayable(self) -> bool:
        return self.mode in (BodyMode.NONE, BodyMode.BUFFERED)


class BodyTooLargeError(Exception):
    """The streamed request body passed the gateway's limit."""


class ClientGoneError(Exception):
    """The client disconnected before its request body was complete."""


# nginx's code for "client closed request": logged, never sent (there is nobody to send to).
CLIENT_CLOSED = 499


@dataclass(slots=True)
class Failure:
    """Why no upstream answer could be relayed; the app turns it into a problem response."""

    status: int
    title: str
    detail: str
    retry_after: int | None = None


@dataclass(slots=True)
class Outcome:
    status: int
    instance: str | None
    attempts: int
    failure: Failure | None = None


class Proxy:
    def __init__(
        self,
        *,
        timeout: float,
        retries: int,
        backoff: float,
        body_limit: int,
        reset_seconds: float,
    ) -> None:
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.body_limit = body_limit
        self.reset_seconds = reset_seconds

    async def forward(
        self,
        upstream: Upstream,
        method: str,
        request_line: bytes,
        header_block: bytes,
        body: RequestBody,
        receive: Receive,
        send: Send,
        extra_headers: list[tuple[bytes, bytes]],
    ) -> Outcome:
        """Send the request on; relay the answer, or return the Failure to report.

        `request_line` ends with CRLF; `header_block` holds the forwarded header lines
        without Host and framing, which depend on the instance and the body.
        """
        retryable = method in IDEMPOTENT
        tried: list[UpstreamInstance] = []
        last: Failure | None = None
        while True:
            instance = upstream.pick(tried)
            if instance is None:
                failure = last or Failure(
                    503,
                    "Service Unavailable",
                    f"every instance of {upstream.name} is failing; try again later",
                    retry_after=max(1, math.ceil(self.reset_seconds)),
                )
                return Outcome(failure.status, None, len(tried), failure)
            tried.append(instance)
            instance.in_flight += 1
            try:
                try:
                    connection = await self._exchange(
                        instance, method, request_line, header_block, body, receive
                    )
                except BodyTooLargeError:
                    failure = Failure(
                        413,
                        "Content Too Large",
                        f"the request body is larger than {self.body_limit} bytes",
                    )
                    return Outcome(413, instance.url, len(tried), failure)
                except ClientGoneError:
                    failure = Failure(CLIENT_CLOSED, "Client Closed Request", "client went away")
                    return Outcome(CLIENT_CLOSED, instance.url, len(tried), failure)
                except UpstreamTimeoutError:
                    instance.breaker.record_failure()
                    failure = Failure(
                        504, "Gateway Timeout", f"{upstream.name} did not answer in time"
                    )
                    return Outcome(504, instance.url, len(tried), failure)
                except (UpstreamConnectError, UpstreamNoResponseError) as error:
                    instance.breaker.record_failure()
                    last = Failure(502, "Bad Gateway", f"{upstream.name} is unreachable")
                    can_retry = retryable and (
                        body.replayable or isinstance(error, UpstreamConnectError)
                    )
                    if can_retry and len(tried) <= self.retries:
                        await asyncio.sleep(self._delay(len(tried)))
                        continue
                    return Outcome(502, instance.url, len(tried), last)
                status = connection.status
                if status >= 500 and answer_is_failure(status, _content_type(connection)):
                    instance.breaker.record_failure()
                else:
                    instance.breaker.record_success()
                await self._relay(connection, method, receive, send, extra_headers)
                return Outcome(status, instance.url, len(tried))
            finally:
                instance.in_flight -= 1

    def _delay(self, attempt: int) -> float:
        # Exponential with jitter, so clients retrying together do not stay in step.
        return float(self.backoff * 2 ** (attempt - 1) * (0.5 + random.random() / 2))

    async def _exchange(
        self,
        instance: UpstreamInstance,
        method: str,
        request_line: bytes,
        header_block: bytes,
        body: RequestBody,
        receive: Receive,
    ) -> Connection:
        """Open (or reuse) a connection, send the request, wait for the response head."""
        connection = await instance.pool.acquire()
        try:
            head = b"".join(
                (
                    request_line,
                    b"host: ",
                    instance.host_header,
                    b"\r\n",
                    header_block,
                    body.framing(),
                    b"\r\n",
                    body.data,
                )
            )
            streaming = not body.replayable
            connection.start(
                head, head_only=method == "HEAD", timeout=None if streaming else self.timeout
            )
            if streaming:
                await self._stream_body(connection, body, receive)
                connection.arm(self.timeout)
            await connection.response_head()
        except BaseException:
            connection.abort()
            raise
        return connection

    async def _stream_body(
        self, connection: Connection, body: RequestBody, receive: Receive
    ) -> None:
        chunked = body.mode is BodyMode.CHUNKED
        total = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGoneError
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            total += len(chunk)
            if total > self.body_limit:
                raise BodyTooLargeError
            if chunk:
                connection.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                await connection.drain()
        if chunked:
            connection.write(b"0\r\n\r\n")

    async def _relay(
        self,
        connection: Connection,
        method: str,
        receive: Receive,
        send: Send,
        extra_headers: list[tuple[bytes, bytes]],
    ) -> None:
        headers = [header for header in connection.headers if header[0] not in RESPONSE_DROP]
        if not any(name == _CSP for name, _ in headers):
            headers.append(PROXIED_CSP)
        headers += extra_headers
        await send({"type": "http.response.start", "status": connection.status, "headers": headers})
        if connection.complete:
            # The usual case for API responses: the whole body came with the head.
            await send({"type": "http.response.body", "body": connection.take_ready_body()})
            connection.finish()
            return
        await self._stream_response(connection, receive, send)

    async def _stream_response(self, connection: Connection, receive: Receive, send: Send) -> None:
        # uvicorn's send() silently drops data once the client is gone, so without this an
        # endless stream (server-sent events) would be read from the upstream forever.
        watch = _DisconnectWatch(connection, receive)
        try:
            async for chunk in connection.body():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            watch.finished = True
            await send({"type": "http.response.body", "body": b""})
            connection.finish()
        except UpstreamBodyError:
            # Too late for an error response. Returning without ending the body makes the
            # server drop the connection, so the client sees a truncated response as such.
            connection.abort()
        finally:
            watch.stop()


def _content_type(connection: Connection) -> bytes | None:
    for name, value in connection.headers:
        if name == _CONTENT_TYPE:
            return value
    return None


class _DisconnectWatch:
    """Aborts the upstream connection when the client disconnects mid-stream."""

    def __init__(self, connection: Connection, receive: Receive) -> None:
        self.finished = False
        self._connection = connection
        self._task = asyncio.ensure_future(_until_disconnect(receive))
        self._task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Future[None]) -> None:
        # After the last body message the server also reports the exchange as over; by then
        # the connection may be back in the pool serving someone else, so leave it alone.
        if self.finished or task.cancelled():
            return
        if task.exception() is None:
            self._connection.abort()

    def stop(self) -> None:
        self.finished = True
        self._task.cancel()


async def _until_disconnect(receive: Receive) -> None:
    # A request body the proxy never read (a GET's empty one) may still be queued first.
    while (await receive())["type"] != "http.disconnect":
        pass


__all__ = [
    "BodyMode",
    "BodyTooLargeError",
    "ClientGoneError",
    "Failure",
    "Outcome",
    "Proxy",
    "RequestBody",
    "UpstreamError",
]
