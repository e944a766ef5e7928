"""`cloudretail capacity`: the capacity model with the benchmark's throughput, as text and
JSON; a target beyond a deployable's HPA maximum flagged; bad option values refused."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from cloudretail.cli import app
from cloudretail.generator import load_platform
from cloudretail.generator.capacity_report import estimated_bytes, read_figures, sample_envelope
from cloudretail.runtime.events.envelope import Event, EventMetadata
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "spec" / "cloudretail.yaml"
runner = CliRunner()

FIGURES: dict[str, Any] = {
    "command": "bench/orders.py --orders 400 --concurrency 16",
    "cores": 2,
    "orders_per_second": 25.6,
    "cpu_ms_per_order": {
        "order-service": 18.0,
        "inventory-service": 16.0,
        "payment-service": 11.0,
        "event-bus": 4.0,
        "api-gateway": 1.0,
        "broker": 5.0,
    },
    "events_per_order": {"order-events": 2.0, "inventory-events": 2.0, "payment-events": 1.0},
    "event_bytes": {"order-events": 600, "inventory-events": 500, "payment-events": 550},
}


@pytest.fixture
def figures(tmp_path: Path) -> Path:
    path = tmp_path / "capacity.json"
    path.write_text(json.dumps(FIGURES))
    return path


def _json(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["capacity", "--spec", str(SPEC), *args, "--json"])
    assert result.exit_code == 0, result.output
    record: dict[str, Any] = json.loads(result.stdout)
    return record


def _deployable(record: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(d for d in record["deployables"] if d["name"] == name)
    return found


def test_json_reports_connections_partitions_storage_and_replicas(figures: Path) -> None:
    record = _json("--figures", str(figures), "--orders-per-second", "40")
    assert record["ok"] is True
    assert record["target_orders_per_second"] == 40
    assert record["target_from"] == "given"
    order = _deployable(record, "order-service")
    # The spec: order scales 3-15, 15 connections a replica, behind 2 PgBouncers of 1000.
    assert (order["min_replicas"], order["max_replicas"]) == (3, 15)
    assert order["connections_at_max"] == 15 * 15
    assert order["database_accepts"] == 2 * 1000
    assert order["pooled"] is True
    assert {use["topic"]: use["idle"] for use in order["consumes"]}["payment-events"] == 0
    # 40 orders/s x 18 ms = 0.72 cores; a replica carries 100m x 70 % = 70m: 11 replicas.
    assert order["replicas_needed"] == math.ceil(40 * 0.018 / 0.07)
    assert order["reaches_target"] is True
    # The gateway's 1 ms: fewer than its minimum, so its minimum.
    assert _deployable(record, "api-gateway")["replicas_needed"] == 3
    # Not measured: no verdict rather than a guess.
    assert _deployable(record, "notification-service")["replicas_needed"] is None
    topics = {topic["name"]: topic for topic in record["topics"]}
    orders_topic = topics["order-events"]
    assert orders_topic["events_per_second"] == 80
    assert orders_topic["rate_from"] == "measured"
    assert orders_topic["retained_bytes"] == 80 * 30 * 86400 * 600
    assert orders_topic["disk_bytes"] == 80 * 30 * 86400 * 600 * orders_topic["replication"]
    assert topics["user-events"]["events_per_second"] is None  # orders do not feed it
    assert topics["user-events"]["size_from"] == "estimated"
    assert record["short"] == []


def test_a_target_beyond_the_hpa_maximum_is_flagged(figures: Path) -> None:
    record = _json("--figures", str(figures), "--orders-per-second", "100")
    inventory = _deployable(record, "inventory-service")
    assert inventory["replicas_needed"] == math.ceil(100 * 0.016 / 0.07)  # 23 > 10
    assert inventory["reaches_target"] is False
    assert set(record["short"]) == {"order-service", "inventory-service", "payment-service"}

    result = runner.invoke(
        app,
        ["capacity", "--spec", str(SPEC), "--figures", str(figures), "--orders-per-second", "100"],
    )
    assert result.exit_code == 0, result.output
    row = next(
        line
        for line in result.stdout.splitlines()
        if line.startswith("  inventory-service") and "ms" in line
    )
    assert row.split()[-2:] == ["CANNOT", "REACH"]
    assert (
        "inventory-service needs 23 replicas for 100 orders/s but scales to 10: raise "
        "`services.inventory.scaling.max`" in result.stdout
    )


def test_text_tables_and_the_measured_ceiling(figures: Path) -> None:
    result = runner.invoke(app, ["capacity", "--spec", str(SPEC), "--figures", str(figures)])
    assert result.exit_code == 0, result.output
    text = result.stdout
    lines = text.splitlines()
    assert "capacity of cloudretail at each deployable's HPA maximum" in lines[0]
    order = next(line for line in lines if line.startswith("  order-service "))
    assert "15 x 15 = 225 of 2000 via pooler" in order
    assert "payment-events 15/15" in order
    # Without a target: the most the first deployable to run out carries (inventory, 10 x
    # 70m / 16 ms = 43.75 orders/s), and nothing is short at it.
    assert "storage per topic at 43.8 orders/s (the ceiling below)" in text
    assert "CANNOT REACH" not in text
    assert f"CPU per order from {figures} (25.6 orders/s on 2 cores)" in text


def test_overrides_replace_the_measured_figures(figures: Path) -> None:
    record = _json(
        "--figures",
        str(figures),
        "--orders-per-second",
        "10",
        "--cpu-ms-per-order",
        "order=70,notification=7",
        "--events-per-second",
        "user-events=3",
        "--event-size",
        "1000",
    )
    order = _deployable(record, "order-service")
    assert (order["cpu_ms_per_order"], order["cpu_from"]) == (70, "given")
    assert order["replicas_needed"] == 10  # 10 x 70 ms = 0.7 cores / 70m
    assert _deployable(record, "notification-service")["replicas_needed"] == 2
    user_events = next(t for t in record["topics"] if t["name"] == "user-events")
    assert (user_events["events_per_second"], user_events["rate_from"]) == (3, "given")
    assert user_events["retained_bytes"] == 3 * 7 * 86400 * 1000
    assert {t["size_from"] for t in record["topics"]} == {"given"}


def test_without_figures_it_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no bench/capacity.json here
    result = runner.invoke(app, ["capacity", "--spec", str(SPEC)])
    assert result.exit_code == 0, result.output
    assert "no benchmark figures (give --cpu-ms-per-order)" in result.stdout
    record = _json()
    assert record["target_orders_per_second"] is None
    assert all(d["replicas_needed"] is None for d in record["deployables"])


def test_the_estimated_size_is_the_runtimes_envelope() -> None:
    """The estimate's envelope and the runtime's serialised Event have the same bytes' count,
    so a field added to the envelope cannot go unnoticed here."""
    platform = load_platform(SPEC)
    for event in platform.events:
        sample = sample_envelope(event)
        real = Event(
            id=sample["id"],
            type=event.name,
            timestamp=sample["timestamp"],
            version=sample["version"],
            data=sample["data"],
            metadata=EventMetadata(
                correlation_id=sample["metadata"]["correlationId"],
                service=event.producer,
                traceparent=sample["metadata"]["traceparent"],
            ),
        )
        assert real.metadata.traceparent is not None  # a valid one: it is carried
        key = str(sample["data"][event.key]).encode()
        assert estimated_bytes(event) == len(key) + len(real.to_bytes()), event.name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--orders-per-second", "0"], "--orders-per-second: 0 must be more than 0"),
        (["--orders-per-second", "-3"], "--orders-per-second: -3 must be more than 0"),
        (["--event-size", "0"], "--event-size: 0 must be at least 1 byte"),
        (["--cpu-ms-per-order", "order"], "--cpu-ms-per-order: 'order' is not NAME=NUMBER"),
        (
            ["--cpu-ms-per-order", "ordr=5"],
            "--cpu-ms-per-order: 'ordr=5': no 'ordr' in the spec (did you mean 'order'?)",
        ),
        (["--cpu-ms-per-order", "order=fast"], "'order=fast': 'fast' is not a number"),
        (["--cpu-ms-per-order", "order=-1"], "'order=-1': the number must be 0 or more"),
        (
            ["--cpu-ms-per-order", "order=1,order-service=2"],
            "--cpu-ms-per-order names 'order-service' twice",
        ),
        (
            ["--events-per-second", "order-event=5"],
            "no 'order-event' in the spec (did you mean 'order-events'?)",
        ),
    ],
)
def test_bad_option_values_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["capacity", "--spec", str(SPEC), *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert "Traceback" not in result.output


def test_bad_figures_file_exit_2_and_json_errors(tmp_path: Path) -> None:
    broken = tmp_path / "capacity.json"
    broken.write_text('{"cpu_ms_per_order": {"order-service": "fast"}}')
    result = runner.invoke(app, ["capacity", "--spec", str(SPEC), "--figures", str(broken)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {broken}: `cpu_ms_per_order` must map names to numbers >= 0"
    )
    broken.write_text("{not json")
    result = runner.invoke(
        app, ["capacity", "--spec", str(SPEC), "--figures", str(broken), "--json"]
    )
    assert result.exit_code == 2
    errors = json.loads(result.stdout)
    assert errors["ok"] is False
    assert errors["errors"][0]["message"].startswith(f"{broken}: not JSON")
    missing = runner.invoke(
        app, ["capacity", "--spec", str(SPEC), "--figures", str(tmp_path / "none.json")]
    )
    assert missing.exit_code == 3  # the machine's: a file that cannot be read
    assert len(missing.stderr.splitlines()) == 1


def test_the_recorded_figures_are_readable() -> None:
    """bench/capacity.json, which `bench/orders.py --record` writes, is what the command reads."""
    recorded = ROOT / "bench" / "capacity.json"
    if not recorded.exists():
        pytest.skip("bench/capacity.json not recorded (bench/orders.py --record)")
    figures = read_figures(recorded)
    assert figures.orders_per_second and figures.orders_per_second > 0
    platform = load_platform(SPEC)
    names = {d.deployable.name for d in platform.services} | {platform.gateway.deployable.name}
    assert names & set(figures.cpu_ms_per_order)
    assert set(figures.events_per_order) <= {topic.name for topic in platform.topics}
