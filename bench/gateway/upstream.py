"""Benchmark upstream: one uvicorn worker serving 1 KB of JSON, plus what the gateway asks.

Serves the same 1 KB body on the routes the benchmark uses, `/health/ready` for the
gateway's probes, and the JWKS (from $BENCH_JWKS) so the gateway can verify the token.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response

app = FastAPI()
# Exactly 1 KB (1024 bytes) of JSON.
BODY = json.dumps({"data": "x" * (1024 - 12)}).encode()
JWKS = Path(os.environ.get("BENCH_JWKS", "/dev/null")).read_bytes() or b"{}"


@app.get("/api/orders")
@app.get("/api/products")
async def items() -> Response:
    return Response(BODY, media_type="application/json")


@app.get("/health/ready")
async def ready() -> dict[str, str]:
    return {"status": "healthy"}


@app.get("/api/users/.well-known/jwks.json")
async def jwks() -> Response:
    return Response(JWKS, media_type="application/json")
