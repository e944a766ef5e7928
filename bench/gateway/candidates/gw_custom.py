"""Candidate proxy core: pure ASGI + cloudretail.runtime.httpclient (httptools, keep-alive pool)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from cloudretail.runtime.httpclient import ConnectionPool

HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"host"}
UPSTREAM = urlsplit(os.environ["UPSTREAM"])
pool: ConnectionPool | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global pool
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            pool = ConnectionPool(UPSTREAM.hostname or "127.0.0.1", UPSTREAM.port or 80)
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    assert pool is not None
    lines = [scope["method"].encode(), b" ", scope["raw_path"], b" HTTP/1.1\r\nhost: x\r\n"]
    for name, value in scope["headers"]:
        if name not in HOP:
            lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    connection = await pool.acquire()
    connection.start(b"".join(lines), head_only=False, timeout=10)
    await connection.response_head()
    out = [(k, v) for k, v in connection.headers if k not in HOP]
    await send({"type": "http.response.start", "status": connection.status, "headers": out})
    if connection.complete:
        await send({"type": "http.response.body", "body": connection.take_ready_body()})
    else:
        async for chunk in connection.body():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    connection.finish()
