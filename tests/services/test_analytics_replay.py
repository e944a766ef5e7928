"""`cloudretail replay` rebuilds the analytics database from the topics (the seed's event
sourcing): on a real embedded broker (tansu) with the spec's topics, the scenario's events
are published; the analytics service, running with that broker, consumes them into database
A; the command replays them into a fresh database B; the two summaries are equal. Then the
command's refusals: each a message and exit code 2, never a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudretail.cli import app as cli_app
from cloudretail.generator import load_platform
from cloudretail.generator.stack import planned_topics
from cloudretail.runtime.auth import TokenIssuer
from cloudretail.runtime.events.broker import EmbeddedBroker, EmbeddedBrokerError
from cloudretail.runtime.events.kafka import KafkaProducer
from typer.testing import CliRunner

from generated.events import REGISTRY
from tests.servers import drop_database, fresh_database, run_in_own_loop, unreachable
from tests.services.analytics import (
    TOTALS,
    assert_scenario_summary,
    read_summary,
    scenario,
    without_window,
)
from tests.services.commerce import eventually
from tests.services.conftest import ROOT, service_client

runner = CliRunner()
PLATFORM = load_platform(ROOT / "spec" / "cloudretail.yaml")


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    """A broker of its own (consumer groups and topics start empty) with the spec's topics."""
    topics = [topic.spec(replication=1) for topic in planned_topics(PLATFORM)]
    broker = EmbeddedBroker(port=0, topics=topics)
    try:
        run_in_own_loop(broker.start)
    except EmbeddedBrokerError as error:
        unreachable("embedded tansu broker did not start", error)
    yield broker
    run_in_own_loop(broker.stop)


@pytest.fixture(params=["sqlite", "postgres"])
def live_and_rebuilt(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The live database and the one to rebuild (PostgreSQL ones dropped after)."""
    if request.param == "sqlite":
        yield (f"sqlite+aiosqlite:///{tmp_path}/live.db", f"sqlite:///{tmp_path}/rebuilt.db")
        return
    made = [fresh_database("cloudretail_test_replay") for _ in range(2)]
    drop_database(made[1])  # the command creates it
    try:
        yield (made[0], made[1])
    finally:
        for url in made:
            drop_database(url)


async def _publish(bootstrap: str) -> int:
    producer = KafkaProducer(bootstrap, idempotent=False)
    events = scenario()
    try:
        for item in events:
            key = REGISTRY.key_of(item.type, item.data).encode()
            await producer.send(REGISTRY.get(item.type).topic, key, item.to_bytes())
    finally:
        await producer.stop()
    return len(events)


def _replay(*arguments: str) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it, in its own process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    return subprocess.run(
        [sys.executable, "-m", "cli", "replay", *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_a_replayed_database_has_the_summary_the_live_one_has(
    broker: EmbeddedBroker,
    live_and_rebuilt: tuple[str, str],
    issuer: TokenIssuer,
    admin: dict[str, str],
):
    live, rebuilt = live_and_rebuilt
    published = await _publish(broker.bootstrap_servers)
    kafka = {"kafka_bootstrap_servers": broker.bootstrap_servers, "kafka_idempotent": False}
    async with service_client("analytics", live, issuer, **kafka) as client:

        async def consumed() -> dict[str, Any] | None:
            summary = await read_summary(client, admin)
            # The summary's reads are not one snapshot: while the consumer commits, the
            # window and the all-time figures may differ for a moment. Wait for both.
            done = summary["all_time"] == TOTALS and summary["totals"] == TOTALS
            return summary if done else None

        live_summary: dict[str, Any] = await eventually(consumed, 60, "the live consumer")
    assert_scenario_summary(live_summary)

    done = _replay(
        "analytics", "--database-url", rebuilt, "--bootstrap-servers", broker.bootstrap_servers
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert f"applied {published}, already there 0" in done.stdout, done.stdout
    assert "order-events" in done.stdout and "inventory-events" in done.stdout
    async with service_client("analytics", rebuilt, issuer) as client:
        rebuilt_summary = await read_summary(client, admin)
    assert without_window(rebuilt_summary) == without_window(live_summary)

    # Again into the same database: every event is there already; nothing changes.
    again = _replay(
        "analytics", "--database-url", rebuilt, "--bootstrap-servers", broker.bootstrap_servers
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"applied 0, already there {published}" in again.stdout, again.stdout
    async with service_client("analytics", rebuilt, issuer) as client:
        assert without_window(await read_summary(client, admin)) == without_window(live_summary)


def test_an_unreachable_broker_is_an_error_and_no_database_is_made(tmp_path: Path):
    target = tmp_path / "rebuilt.db"
    done = _replay(
        "analytics", "--database-url", f"sqlite:///{target}", "--bootstrap-servers", "127.0.0.1:1"
    )
    assert done.returncode == 3, done.stdout + done.stderr  # the environment, not the input
    assert "Traceback" not in done.stderr
    assert "error: analytics: cannot reach Kafka at 127.0.0.1:1" in done.stderr
    assert not target.exists()


@pytest.mark.parametrize(
    ("service", "url", "message"),
    [
        ("analytic", "sqlite:///x.db", "unknown service analytic (did you mean 'analytics'?)"),
        ("product", "sqlite:///x.db", "services that consume events: "),
        ("analytics", "not a url", "--database-url is not a database URL"),
        ("analytics", "mysql://root@localhost/x", "names a mysql database"),
        ("analytics", "sqlite://", "an in-memory SQLite database"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_done(
    service: str, url: str, message: str, in_root: Path
):
    result = runner.invoke(
        cli_app, ["replay", service, "--database-url", url, "--bootstrap-servers", "127.0.0.1:1"]
    )
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert not (in_root / "x.db").exists()


def test_an_unreachable_database_is_an_error(broker: EmbeddedBroker, in_root: Path):
    result = runner.invoke(
        cli_app,
        [
            "replay",
            "analytics",
            "--database-url",
            "postgresql://postgres@127.0.0.1:1/cloudretail_nowhere",
            "--bootstrap-servers",
            broker.bootstrap_servers,
        ],
    )
    assert result.exit_code == 3, result.output  # the environment, not the input
    assert isinstance(result.exception, SystemExit)
    assert "cannot reach the database at postgresql+asyncpg://postgres@127.0.0.1:1" in (
        result.stderr
    )
