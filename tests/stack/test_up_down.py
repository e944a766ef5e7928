"""`cloudretail up --detach`, `status` and `down`: nothing is left behind."""

from __future__ import annotations

import pytest
from cloudretail.generator import load_platform
from cloudretail.generator.stack import EMBEDDED_BROKER_PORT, MAIL_SINK_PORT
from cloudretail.runtime.events.broker import port_holder

from tests.stack.conftest import ROOT, Stack, cli, new_product, order_body, stop

PLATFORM = load_platform(ROOT / "spec" / "cloudretail.yaml")
# Every deployable's port, the embedded broker's and the local SMTP sink's.
PORTS = (*(d.port for d in PLATFORM.deployables), EMBEDDED_BROKER_PORT, MAIL_SINK_PORT)


def walk(stack: Stack) -> None:
    product_id = new_product(stack, stack.admin(), stock=3)
    _, customer = stack.customer()
    with stack.client() as client:
        placed = client.post("/api/orders", json=order_body(product_id, 1), headers=customer)
    assert placed.status_code == 201, placed.text
    assert placed.json()["status"] == "confirmed"


def status_then_down(stack: Stack) -> None:
    status = cli("status", "--data-dir", str(stack.data_dir))
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("ready") >= len(PLATFORM.deployables), status.stdout
    pids = [info["pid"] for info in stack.state()["processes"].values()]
    supervisor = stack.state()["supervisor"]
    down = stop(stack)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "ports are free" in down.stdout
    import os

    for pid in [*pids, supervisor]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert [port for port in PORTS if port_holder("127.0.0.1", port)] == []
    again = cli("status", "--data-dir", str(stack.data_dir))
    assert again.returncode == 1 and "no stack is running" in again.stdout


def test_embedded_defaults(sqlite_stack: Stack) -> None:
    walk(sqlite_stack)
    status_then_down(sqlite_stack)
