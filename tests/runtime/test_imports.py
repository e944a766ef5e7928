"""What a running service loads: the runtime, not the tool. httpx's package imports its
command-line tool (rich, click, pygments) whenever those are installed, as they are beside
the CLI; a service that imported httpx paid that in memory and start-up in every process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL_ONLY = ("httpx", "rich", "click", "pygments", "typer", "jinja2", "alembic", "generator")


@pytest.mark.parametrize(
    "module",
    [
        "generated.services.user.app",
        "generated.services.order.app",
        "generated.eventbus.app",
        "cloudretail.runtime.gateway.app",
        "cloudretail.runtime.stack",  # the supervisor of `up`, alive as long as the stack
    ],
)
def test_a_deployable_loads_nothing_of_the_tool(module: str) -> None:
    probe = (
        f"import json, sys, {module}; "
        f"print(json.dumps([m for m in {list(TOOL_ONLY)!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == []
