"""One order on the local stack is one trace: its id is in the JSON logs of the gateway, of
the services the saga calls, and of every process that consumes an event of that order
(which ones, the spec says), and `cloudretail traces` lists it with their spans."""

from __future__ import annotations

import json
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from cloudretail.generator import load_platform

from tests.servers import eventually
from tests.stack.conftest import ROOT, Stack, cli, new_product, order_body

CALLED = ("gateway", "order", "inventory", "payment")


def _log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for text in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(text)
        except ValueError:
            continue  # a process's non-JSON output (a traceback, say)
        if isinstance(record, dict):
            lines.append(record)
    return lines


def _consumers(stack: Stack, event_types: set[str]) -> dict[str, set[str]]:
    """Process -> the event types of the order it consumes, as the spec and the plan say:
    each service's `events.consumes`, and the event bus, which consumes every topic."""
    platform = load_platform(ROOT / "spec" / "cloudretail.yaml")
    running = json.loads((stack.data_dir / "stack.json").read_text())["plan"]["processes"]
    names = {process["name"] for process in running}
    wanted: dict[str, set[str]] = {}
    for event in platform.events:
        if event.name in event_types:
            for consumer in event.consumers:
                if consumer in names:
                    wanted.setdefault(consumer, set()).add(event.name)
    for process in running:
        if process["kind"] == "event-bus":
            wanted[process["name"]] = set(event_types)
    return wanted


def test_an_order_is_one_trace_in_the_logs_and_the_trace_view(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    admin = stack.admin()
    product_id = new_product(stack, admin, stock=3)
    _, customer = stack.customer()
    client_trace = uuid.uuid4().hex
    correlation = f"trace-test-{client_trace[:8]}"
    with stack.client() as client:
        placed = client.post(
            "/api/orders",
            json=order_body(product_id, 1),
            headers={
                **customer,
                "X-Correlation-ID": correlation,
                # The caller's trace: the gateway links it and starts the platform's own.
                "traceparent": f"00-{client_trace}-{uuid.uuid4().hex[:16]}-01",
            },
        )
    assert placed.status_code == 201, placed.text

    def order_events() -> list[dict[str, Any]]:
        with stack.client() as client:
            found = client.get("/api/events", params={"correlationId": correlation}, headers=admin)
        assert found.status_code == 200, found.text
        items: list[dict[str, Any]] = found.json()["items"]
        kinds = {event["type"] for event in items}
        return items if {"order.created", "order.confirmed"} <= kinds else []

    events = eventually(order_events, timeout=30, pause=0.5)
    assert events, "the order's events did not reach the event bus"
    # The envelopes kept the trace context of the spans that wrote them: one trace, the
    # platform's, not the client's.
    traces = {event["metadata"]["traceparent"].split("-")[1] for event in events}
    assert len(traces) == 1 and client_trace not in traces, events
    (trace_id,) = traces
    event_types = {event["type"] for event in events}

    consumers = _consumers(stack, event_types)
    assert {"inventory", "payment", "order"} <= set(consumers), consumers
    logs = {name: Path(info["log"]) for name, info in stack.state()["processes"].items()}

    def traced_lines(process: str) -> list[dict[str, Any]]:
        return [line for line in _log_lines(logs[process]) if line.get("trace_id") == trace_id]

    for process in CALLED:
        assert eventually(partial(traced_lines, process), timeout=30, pause=0.5), (
            f"no log line of {process} carries the order's trace id"
        )
    for process, kinds in consumers.items():

        def handled(process: str = process, kinds: set[str] = kinds) -> set[str]:
            seen = {
                str(line.get("event_type"))
                for line in traced_lines(process)
                if line["message"] in ("event applied", "event recorded")
            }
            return seen if kinds <= seen else set()

        assert eventually(handled, timeout=30, pause=0.5), (
            f"{process} logged no line with the order's trace id for each of {sorted(kinds)}: "
            f"{[line['message'] for line in traced_lines(process)]}"
        )

    # `cloudretail traces` lists the trace, and shows its spans from every process above.
    def listed() -> str:
        result = cli("traces", "--data-dir", str(stack.data_dir), "--limit", "50")
        assert result.returncode == 0, result.stderr
        return result.stdout if trace_id in result.stdout else ""

    assert eventually(listed, timeout=30, pause=0.5), (
        "`cloudretail traces` does not list the order's trace"
    )

    def tree() -> str:
        shown = cli("traces", trace_id[:12], "--data-dir", str(stack.data_dir))
        assert shown.returncode == 0, shown.stderr
        spans = shown.stdout.splitlines()[1:]
        services = {line.split(": ", 1)[0].split()[-1] for line in spans}
        return shown.stdout if set(CALLED) | set(consumers) <= services else ""

    shown = eventually(tree, timeout=30, pause=0.5)
    assert shown, cli("traces", trace_id, "--data-dir", str(stack.data_dir)).stdout
    assert shown.startswith(f"trace {trace_id}:")
    assert "gateway: POST /api/orders" in shown
    assert "order: process payment.completed" in shown or "process inventory.reserved" in shown
