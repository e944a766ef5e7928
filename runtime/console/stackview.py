"""What the supervisor of `cloudretail up` knows, read from its data dir: the processes it
runs (`state.json`: pid, address, kind, restarts, log file), their readiness asked live,
and the tail of each one's log."""

from __future__ import annotations

import asyncio
import json
import os
from collections import deque
from pathlib import Path
from typing import Any

from cloudretail.runtime.httpclient import UpstreamError, exchange, pool_for
from cloudretail.runtime.pids import alive

STATE_FILE = "state.json"  # written by cloudretail.runtime.stack
SUPERVISOR_LOG = "supervisor"  # its own log, beside the processes' (logs/supervisor.log)
_TAIL_BLOCK = 64 * 1024


class UnknownProcessError(LookupError):
    """No process of that name in the supervisor's state."""


async def readiness(url: str, timeout: float = 2.0) -> int | None:
    """The status `<url>/health/ready` answers; None when nothing answers."""
    pool, _ = pool_for(url, connect_timeout=timeout)
    try:
        reply = await exchange(pool, "GET", "/health/ready", (), b"", timeout)
    except (UpstreamError, TimeoutError):
        return None
    finally:
        pool.close()
    return reply.status


def tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a text file (read from its end: logs grow for hours)."""
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            end = log.tell()
            start = max(0, end - _TAIL_BLOCK * max(1, lines // 200 + 1))
            log.seek(start)
            data = log.read()
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace").splitlines()
    if start > 0 and text:
        text = text[1:]  # the first line was cut by the seek
    return list(deque(text, maxlen=lines))


class StackView:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def state(self) -> dict[str, Any]:
        """The supervisor's state file; an empty one while it has not written any."""
        try:
            state = json.loads((self.data_dir / STATE_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return {"status": "unknown", "processes": {}}
        return state if isinstance(state, dict) else {"status": "unknown", "processes": {}}

    async def processes(self) -> list[dict[str, Any]]:
        """Each process: name, kind, url, pid, restarts and its health right now (ready, not
        ready: answers but 503, not answering, down: no such process)."""
        found = self.state().get("processes", {})
        names = sorted(found)
        probes = await asyncio.gather(
            *(readiness(str(found[name].get("url", ""))) for name in names)
        )
        listed = []
        for name, status in zip(names, probes, strict=True):
            info = found[name]
            if not alive(info.get("pid")):
                health = "down"
            elif status is None:
                health = "not answering"
            else:
                health = "ready" if status == 200 else "not ready"
            listed.append(
                {
                    "name": name,
                    # What it is an instance of (`up --scale`: order-2 of order).
                    "deployable": info.get("deployable", name),
                    "kind": info.get("kind", "service"),
                    "url": info.get("url"),
                    "pid": info.get("pid"),
                    "restarts": info.get("restarts", 0),
                    "health": health,
                }
            )
        return listed

    def log_tail(self, name: str, lines: int) -> list[str]:
        """The last lines of a process's log (or the supervisor's own)."""
        if name == SUPERVISOR_LOG:
            return tail(self.data_dir / "logs" / "supervisor.log", lines)
        info = self.state().get("processes", {}).get(name)
        if not isinstance(info, dict) or not info.get("log"):
            raise UnknownProcessError(name)
        return tail(Path(str(info["log"])), lines)
