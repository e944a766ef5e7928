"""A minimal pipelined Redis client: one connection, many commands in flight, RESP2 replies.

The rate limiter calls Redis once per request. Measured on the target machine, redis-py's
asyncio client cost more CPU per call (~300-400 us) than the rest of the gateway's
request; this writes each command straight to the socket and matches replies to callers
in order (Redis answers a connection's commands in the order sent), so concurrent
requests share one connection and one read per batch of replies.

`rediss://` speaks TLS, the server's certificate verified against a CA file (REDIS_CA_FILE)
or the system's CAs, host name included.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from typing import Any
from urllib.parse import unquote, urlsplit


class RedisError(Exception):
    """Redis refused a command (an error reply) or could not be reached."""


class RedisConnectionError(RedisError):
    pass


Reply = int | bytes | str | list[Any] | None


def encode(*args: bytes | str | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Incomplete(Exception):
    pass


def _parse(buffer: bytes, start: int) -> tuple[Reply | RedisError, int]:
    """One reply from buffer[start:]; raises _Incomplete when more bytes are needed."""
    end = buffer.find(b"\r\n", start)
    if end < 0:
        raise _Incomplete
    kind = buffer[start : start + 1]
    line = buffer[start + 1 : end]
    position = end + 2
    if kind == b":":
        return int(line), position
    if kind == b"+":
        return line.decode(), position
    if kind == b"-":
        return RedisError(line.decode()), position
    if kind == b"$":
        length = int(line)
        if length < 0:
            return None, position
        if len(buffer) < position + length + 2:
            raise _Incomplete
        return buffer[position : position + length], position + length + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, position
        items: list[Any] = []
        for _ in range(count):
            item, position = _parse(buffer, position)
            items.append(item)
        return items, position
    raise RedisConnectionError(f"unexpected reply type {kind!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: collections.deque[tuple[asyncio.Future[Reply], float]] = collections.deque()
        self._buffer = b""
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        position = 0
        try:
            while position < len(buffer):
                reply, position = _parse(buffer, position)
                future, _ = self.pending.popleft()
                if future.done():
                    continue
                if isinstance(reply, RedisError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except _Incomplete:
            pass
        except (RedisConnectionError, ValueError, IndexError) as error:
            self._fail(RedisConnectionError(f"bad reply stream: {error}"))
            return
        self._buffer = buffer[position:]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc!r}"))

    def _fail(self, error: RedisError) -> None:
        self.lost = True
        while self.pending:
            future, _ = self.pending.popleft()
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.close()


class RedisPipe:
    """Commands over one connection; (re)connects on demand, at most once per second."""

    def __init__(self, url: str, *, timeout: float = 1.0, ca_file: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", ""):
            raise ValueError(f"only redis:// and rediss:// URLs are supported here, got {url!r}")
        if ca_file and parts.scheme != "rediss":
            raise ValueError(f"a CA file needs a rediss:// (TLS) URL, got {url!r}")
        self.tls = parts.scheme == "rediss"
        self.ca_file = ca_file
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        path = parts.path.strip("/")
        self.database = int(path) if path else 0
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._last_attempt = float("-inf")
        self._watchdog: asyncio.TimerHandle | None = None

    async def execute(self, *args: bytes | str | int) -> Reply:
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        return await self._send(protocol, encode(*args))

    def _send(self, protocol: _Protocol, command: bytes) -> asyncio.Future[Reply]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        protocol.pending.append((future, time.monotonic()))
        assert protocol.transport is not None
        protocol.transport.write(command)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout / 2, self._watch, protocol)
        return future

    def _watch(self, protocol: _Protocol) -> None:
        # One timer per connection instead of one per command: a Redis that stops
        # answering fails everything waiting once the oldest command is `timeout` old.
        self._watchdog = None
        if protocol.lost or not protocol.pending:
            return
        if time.monotonic() - protocol.pending[0][1] > self.timeout:
            protocol._fail(RedisConnectionError("Redis did not answer in time"))
            return
        self._watchdog = asyncio.get_running_loop().call_later(
            self.timeout / 2, self._watch, protocol
        )

    async def _connect(self) -> _Protocol:
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        if time.monotonic() - self._last_attempt < 1.0:
            raise RedisConnectionError("Redis unreachable; next attempt within a second")
        self._last_attempt = time.monotonic()
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(_Protocol, self.host, self.port, ssl=self._tls()),
                self.timeout,
            )
            if self.password is not None:
                credentials = [self.username, self.password] if self.username else [self.password]
                await asyncio.wait_for(
                    self._send(protocol, encode("AUTH", *credentials)), self.timeout
                )
            if self.database:
                await asyncio.wait_for(
                    self._send(protocol, encode("SELECT", self.database)), self.timeout
                )
        except (OSError, TimeoutError, RedisError) as error:
            failure = RedisConnectionError(f"cannot connect to Redis: {error!r}")
            self._connecting.set_exception(failure)
            self._connecting.exception()  # retrieved: waiters get it via shield
            self._connecting = None
            raise failure from error
        self._protocol = protocol
        self._connecting.set_result(protocol)
        self._connecting = None
        return protocol

    def _tls(self) -> ssl.SSLContext | None:
        # Made per connection, so a CA file the kubelet renewed is read again.
        return ssl.create_default_context(cafile=self.ca_file) if self.tls else None

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
