"""Candidate proxy core: pure ASGI + one shared aiohttp.ClientSession (keep-alive pool)."""

from __future__ import annotations

import os
from typing import Any

import aiohttp

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host"}
UPSTREAM = os.environ["UPSTREAM"]
session: aiohttp.ClientSession | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global session
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            )
            await send({"type": "lifespan.startup.complete"})
        assert session is not None
        await session.close()
        await send({"type": "lifespan.shutdown.complete"})
        return
    assert session is not None
    headers = {k.decode(): v.decode() for k, v in scope["headers"] if k.decode() not in HOP}
    async with session.request(scope["method"], UPSTREAM + scope["path"], headers=headers) as r:
        out = [(k.lower(), v) for k, v in r.raw_headers if k.lower().decode() not in HOP]
        await send({"type": "http.response.start", "status": r.status, "headers": out})
        async for chunk in r.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
