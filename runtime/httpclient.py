"""A minimal HTTP/1.1 client for calls inside the platform: keep-alive pools and streamed
bodies, used by the gateway's proxy and by service-to-service calls (`exchange`).

Measured on the target machine, a general-purpose client dominates a proxy's cost: httpx
spends more per request than the upstream service itself, aiohttp about half of that (see
runtime/gateway/README.md). Calls between a platform's parts need only a fraction of their
features (plain HTTP inside the platform's network, no redirects, no cookies, no
decoding), so this speaks HTTP/1.1 over asyncio directly and parses responses with
httptools, the same C parser uvicorn uses for the server side.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

# Past this many unread response bytes the socket stops being read, so a fast upstream
# cannot fill the gateway's memory while a slow client drains the response.
_READ_HIGH_WATER = 256 * 1024
_READ_LOW_WATER = 64 * 1024


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange."""


class UpstreamConnectError(UpstreamError):
    """No connection could be opened: the request was never sent, so a retry is safe."""


class UpstreamNoResponseError(UpstreamError):
    """The connection failed before a response head arrived."""


class UpstreamTimeoutError(UpstreamError):
    """No response head within the upstream's timeout."""


class UpstreamBodyError(UpstreamError):
    """The connection failed after the response head, while the body was being read."""


class Connection(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time (no pipelining)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._head_only = False
        self._head: asyncio.Future[None] | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self.complete = False
        self._keep_alive = False
        self._error: UpstreamError | None = None

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check.
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(UpstreamNoResponseError(f"invalid HTTP response: {error}"))

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if not self.complete and exc is None and self._close_delimited():
            # A response with neither length nor chunks ends where the connection does
            # (HTTP/1.0 style, as Python's http.server answers).
            self.complete = True
            self._wake_reader()
        if not self.complete:
            self._fail(UpstreamNoResponseError(f"connection closed by upstream: {exc!r}"))
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim response (100 Continue): its head is not the answer; wait on.
            self.headers = []
            return
        self.status = status
        # llhttp forgets the connection's fate once the message completes; ask it now.
        self._keep_alive = self._parser.should_keep_alive()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._head_only:
            # httptools cannot be told a response answers HEAD, so it would wait for a
            # body that never comes; end here and do not reuse the connection.
            self.complete = True
            self._close()
        head = self._head
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _READ_HIGH_WATER and not self._read_paused and self._transport:
            self._read_paused = True
            self._transport.pause_reading()
        self._wake_reader()

    def on_message_complete(self) -> None:
        if 100 <= self._parser.get_status_code() < 200:
            return
        self.complete = True
        self._wake_reader()

    # -- used by the proxy --------------------------------------------------------------

    def start(self, head: bytes, *, head_only: bool, timeout: float | None) -> None:
        """Send a request head (and any small body joined to it).

        With a timeout the wait for the response head is armed now; a caller that streams
        a request body passes None and calls `arm` once the body is sent, so a slow upload
        is not mistaken for a slow upstream.
        """
        self._head_only = head_only
        self._head = self._loop.create_future()
        if timeout is not None:
            self.arm(timeout)
        self.write(head)

    def arm(self, timeout: float) -> None:
        self._timer = self._loop.call_later(timeout, self._time_out)

    def write(self, data: bytes) -> None:
        if self._transport is None or self.closed:
            raise UpstreamNoResponseError("connection closed before the request was sent")
        self._transport.write(data)

    async def drain(self) -> None:
        if self._write_paused and not self.closed:
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter
            self._drain_waiter = None

    async def response_head(self) -> None:
        """Wait for the status line and headers; raises UpstreamError subclasses."""
        assert self._head is not None
        if not self._head.done():
            await self._head
        self._head.result()

    def take_ready_body(self) -> bytes:
        """Body bytes already buffered (all of it when `complete`)."""
        if not self._chunks:
            return b""
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._read_paused and self._transport is not None and not self.closed:
            self._read_paused = False
            self._transport.resume_reading()
        return data

    async def body(self) -> AsyncIterator[bytes]:
        """The remaining body, as it arrives."""
        while True:
            data = self.take_ready_body()
            if data:
                yield data
                # More may have arrived (and reading paused) while the caller sent this.
                continue
            if self.complete:
                return
            if self._error is not None:
                raise UpstreamBodyError(str(self._error))
            self._body_waiter = self._loop.create_future()
            try:
                await self._body_waiter
            finally:
                self._body_waiter = None

    def finish(self) -> None:
        """Hand the connection back to the pool, or close it if it cannot carry another."""
        if self.complete and not self.closed and self._keep_alive:
            self._reset()
            self._pool.release(self)
        else:
            self._close()

    def abort(self) -> None:
        self._close()

    # -- internals ----------------------------------------------------------------------

    def _reset(self) -> None:
        self._head = None
        self.status = 0
        self.headers = []
        self.complete = False
        self._error = None

    def _time_out(self) -> None:
        self._timer = None
        self._fail(UpstreamTimeoutError("no response from upstream in time"))
        self._close()

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        head = self._head
        if head is not None and not head.done():
            head.set_exception(self._error)
            # Whoever awaited the head may have been cancelled (a timeout, a client gone);
            # mark the exception seen so asyncio does not log it as lost.
            head.exception()
        self._wake_reader()

    def _close_delimited(self) -> bool:
        if self.status == 0 or self._head_only or self.status in (204, 304):
            return False
        framing = {b"content-length", b"transfer-encoding"}
        return not any(name in framing for name, _ in self.headers)

    def _wake_reader(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self._pool.forget(self)
            if self._transport is not None:
                self._transport.close()


class ConnectionPool:
    """Idle keep-alive connections to one upstream instance (host, port)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = 3.0,
        max_idle: int = 256,
        idle_ttl: float = 4.0,
        loop: asyncio.AbstractEventLoop | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        # Below uvicorn's default keep-alive timeout (5 s): reusing a connection the
        # upstream is about to close would fail a request that never reached it.
        self.idle_ttl = idle_ttl
        self.loop = loop or asyncio.get_running_loop()
        # LIFO: the most recently used connection is the least likely to be closed by the
        # upstream, and the rest age out.
        self._idle: list[tuple[Connection, float]] = []

    async def acquire(self) -> Connection:
        now = self.loop.time()
        while self._idle:
            connection, since = self._idle.pop()
            if connection.closed:
                continue
            if now - since > self.idle_ttl:
                connection.abort()
                continue
            return connection
        try:
            _, protocol = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: Connection(self),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls else None,
                ),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as error:
            raise UpstreamConnectError(
                f"cannot connect to {self.host}:{self.port}: {error!r}"
            ) from error
        return protocol

    def release(self, connection: Connection) -> None:
        if len(self._idle) < self.max_idle:
            self._idle.append((connection, self.loop.time()))
        else:
            connection.abort()

    def forget(self, connection: Connection) -> None:
        # Idle connections closed by the upstream are dropped now, not found stale later.
        for index, (idle, _) in enumerate(self._idle):
            if idle is connection:
                del self._idle[index]
                return

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection, _ in idle:
            connection.abort()


@functools.cache
def system_trust() -> ssl.SSLContext:
    """The system's trust store, loaded once per process (loading it costs tens of
    milliseconds of CPU; an outside token issuer is fetched every few seconds)."""
    return ssl.create_default_context()


def pool_for(url: str, *, connect_timeout: float) -> tuple[ConnectionPool, str]:
    """A pool to the host of an http(s) URL (TLS, with the system's trust store, for https),
    and the URL's path with its query, to put before or use as a request target.
    ValueError for any other URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = system_trust() if parts.scheme == "https" else None
    port = parts.port or (443 if tls else 80)
    pool = ConnectionPool(parts.hostname, port, connect_timeout=connect_timeout, tls=tls)
    return pool, parts.path + (f"?{parts.query}" if parts.query else "")


@dataclass(frozen=True)
class Reply:
    """A whole response: status, headers (names lower-cased) and body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


async def exchange(
    pool: ConnectionPool,
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    timeout: float,
) -> Reply:
    """Send one request with a small body and read the whole answer within `timeout`.

    Raises UpstreamConnectError (nothing was sent), UpstreamTimeoutError, or another
    UpstreamError (the request may have reached the upstream). Header values must not
    contain CR or LF (ValueError): they would end the head early.
    """
    lines = [f"{method} {target} HTTP/1.1", f"host: {pool.host}:{pool.port}"]
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}")
    lines.append(f"content-length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    connection = await pool.acquire()
    try:
        async with asyncio.timeout(timeout):
            connection.start(head + body, head_only=method == "HEAD", timeout=None)
            await connection.response_head()
            chunks = [chunk async for chunk in connection.body()]
    except TimeoutError:
        connection.abort()
        raise UpstreamTimeoutError(f"no answer from {pool.host}:{pool.port} in time") from None
    except BaseException:
        connection.abort()
        raise
    reply = Reply(connection.status, connection.headers, b"".join(chunks))
    connection.finish()
    return reply
