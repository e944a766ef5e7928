from __future__ import annotations

import asyncio
from pathlib import Path

from cloudretail.cli import app
from cloudretail.runtime.events.broker import EmbeddedBroker, free_port
from typer.testing import CliRunner

runner = CliRunner()


def test_topics_apply_creates_then_changes_nothing(in_root: Path) -> None:
    broker = EmbeddedBroker(port=free_port())
    asyncio.run(broker.start())
    try:
        first = runner.invoke(app, ["topics", "apply", "--bootstrap", broker.bootstrap_servers])
        second = runner.invoke(app, ["topics", "apply", "--bootstrap", broker.bootstrap_servers])
    finally:
        asyncio.run(broker.stop())
    assert first.exit_code == 0, first.output
    assert "created order-events" in first.stdout
    assert "created order-events.dlq" in first.stdout
    assert second.exit_code == 0, second.output
    assert "created" not in second.stdout


def test_topics_apply_names_an_unreachable_broker(in_root: Path) -> None:
    result = runner.invoke(app, ["topics", "apply", "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 3  # the environment, not the input
    assert "cannot apply topics at 127.0.0.1:1" in result.stderr
