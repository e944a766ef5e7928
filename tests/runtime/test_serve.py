"""cloudretail.runtime.serve in a real process: JSON logs, then a graceful stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.serve import uvicorn_config
from fastapi import FastAPI

from tests.runtime.conftest import make_settings

REPO_ROOT = Path(__file__).resolve().parents[2]

SERVICE_SCRIPT = textwrap.dedent(
    """
    import asyncio

    from fastapi import APIRouter

    from cloudretail.runtime.app import create_service_app
    from cloudretail.runtime.config import load_settings
    from cloudretail.runtime.serve import run

    router = APIRouter()


    @router.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(1.0)
        return {"finished": "yes"}


    if __name__ == "__main__":
        run(
            lambda settings: create_service_app(settings, routers=[router]),
            load_settings("servetest", 1, "servetest"),
        )
    """
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_live(base_url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"service exited early: {process.communicate()}")
        try:
            if httpx.get(f"{base_url}/health/live", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail("service did not become live within 20 s")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM semantics are POSIX")
def test_sigterm_finishes_in_flight_requests_then_closes_pools(tmp_path: Path) -> None:
    script = tmp_path / "service.py"
    script.write_text(SERVICE_SCRIPT)
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().endswith("_URL") and key.upper() not in ("PORT", "HOST")
    }
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        PORT=str(port),
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/data/servetest.db",
        SERVICE_TOKEN="serve-test-token",
        SHUTDOWN_TIMEOUT="5",
    )
    process = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(base_url, process)
        ready = httpx.get(f"{base_url}/health/ready", timeout=5)
        assert ready.status_code == 200, ready.text

        results: list[httpx.Response] = []
        in_flight = threading.Thread(
            target=lambda: results.append(httpx.get(f"{base_url}/slow", timeout=10))
        )
        in_flight.start()
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        in_flight.join(timeout=10)
        stdout, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    # uvicorn re-raises the signal once shutdown is done, so the exit status says "SIGTERM".
    assert process.returncode in (0, -signal.SIGTERM), stderr
    assert results and results[0].status_code == 200
    assert results[0].json() == {"finished": "yes"}
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    messages = [line["message"] for line in lines]
    assert "service started" in messages
    assert messages.index("service stopped") > messages.index("service started")
    assert all(line["service"] == "servetest" for line in lines)
    slow_access = [line for line in lines if line.get("path") == "/slow"]
    assert slow_access and slow_access[0]["status"] == 200
    assert (tmp_path / "data" / "servetest.db").exists()


def test_uvicorn_config_follows_settings() -> None:
    settings: ServiceSettings = make_settings(
        "sqlite+aiosqlite:///:memory:", host="0.0.0.0", port=3002, shutdown_timeout=7
    )
    config = uvicorn_config(FastAPI(), settings)
    assert (config.host, config.port) == ("0.0.0.0", 3002)
    assert config.timeout_graceful_shutdown == 7
    assert config.access_log is False
    assert config.log_config is None
