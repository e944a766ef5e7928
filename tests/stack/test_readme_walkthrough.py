"""The README's walk-through, run exactly as written against `up --demo`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.stack.conftest import ROOT, cli


def _walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Walk-through", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "the README lost its walk-through"
    return match.group(1)


def test_the_readme_walkthrough_places_a_confirmed_order(tmp_path: Path) -> None:
    data_dir = tmp_path / "stack"
    started = cli("up", "--detach", "--demo", "--data-dir", str(data_dir))
    assert started.returncode == 0, started.stdout + started.stderr
    assert "demo@cloudretail.example / demo-shopper-2026" in started.stdout
    try:
        run = subprocess.run(
            ["bash", "-e", "-c", _walkthrough()],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stopped = cli("down", "--data-dir", str(data_dir))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 5, run.stdout  # catalog, stock, order, orders, stock
    assert '"status":"confirmed"' in lines[2]
    before = int(re.search(r'"quantity":(\d+)', lines[1]).group(1))  # type: ignore[union-attr]
    after = int(re.search(r'"quantity":(\d+)', lines[4]).group(1))  # type: ignore[union-attr]
    assert before - after == 2
    assert stopped.returncode == 0
