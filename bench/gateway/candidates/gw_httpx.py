"""Candidate proxy core: pure ASGI + one shared httpx.AsyncClient (keep-alive pool)."""

from __future__ import annotations

import os
from typing import Any

import httpx

HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"host"}
UPSTREAM = os.environ["UPSTREAM"]
client = httpx.AsyncClient(
    base_url=UPSTREAM, limits=httpx.Limits(max_connections=None, max_keepalive_connections=256)
)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await client.aclose()
        await send({"type": "lifespan.shutdown.complete"})
        return
    headers = [(k, v) for k, v in scope["headers"] if k not in HOP]
    request = client.build_request(scope["method"], scope["path"], headers=headers)
    response = await client.send(request, stream=True)
    out = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP]
    await send({"type": "http.response.start", "status": response.status_code, "headers": out})
    async for chunk in response.aiter_raw():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await response.aclose()
    await send({"type": "http.response.body", "body": b""})
