"""The local trace receiver `cloudretail up` runs: the SDK's own OTLP/HTTP exporter sends it
spans, it keeps them in the data dir, and `cloudretail traces` lists and draws them."""

from __future__ import annotations

import gzip
import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest
from cloudretail.runtime.localtraces import (
    OLDER_FILE,
    SPANS_FILE,
    TRACES_DIR,
    SpanFile,
    SpanRecord,
    TraceError,
    TraceReceiver,
    show_traces,
)
from cloudretail.runtime.tracing import get_tracer, tracer_provider
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanKind,
    Status,
    StatusCode,
    set_span_in_context,
)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[TraceReceiver]:
    receiver = TraceReceiver(SpanFile(tmp_path / TRACES_DIR))
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


def _post(receiver: TraceReceiver, body: bytes, **headers: str) -> int:
    connection = http.client.HTTPConnection(receiver.host, receiver.port, timeout=5)
    try:
        connection.request("POST", headers.pop("path", "/v1/traces"), body, headers)
        return connection.getresponse().status
    finally:
        connection.close()


def test_spans_exported_over_otlp_are_kept_listed_and_drawn(
    receiver: TraceReceiver, tmp_path: Path
) -> None:
    endpoint = f"http://{receiver.host}:{receiver.port}/v1/traces"
    providers = {
        service: tracer_provider(service, SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        for service in ("gateway", "order")
    }
    gateway, order = (get_tracer(providers[name]) for name in ("gateway", "order"))
    with (
        gateway.start_as_current_span("POST /api/orders", kind=SpanKind.SERVER) as root,
        gateway.start_as_current_span("POST order", kind=SpanKind.CLIENT) as call,
    ):
        # The order service continues the call's context, as it would from its header.
        carried = set_span_in_context(NonRecordingSpan(call.get_span_context()), Context())
        with (
            order.start_as_current_span("POST /api/orders", carried, kind=SpanKind.SERVER),
            order.start_as_current_span("INSERT orders", kind=SpanKind.CLIENT) as statement,
        ):
            statement.set_status(Status(StatusCode.ERROR, "constraint"))
    for provider in providers.values():
        provider.shutdown()
    trace_id = f"{root.get_span_context().trace_id:032x}"

    kept = SpanFile(tmp_path / TRACES_DIR).read()
    assert {(span.service, span.name) for span in kept} == {
        ("gateway", "POST /api/orders"),
        ("gateway", "POST order"),
        ("order", "POST /api/orders"),
        ("order", "INSERT orders"),
    }
    assert {span.trace_id for span in kept} == {trace_id}

    listing = show_traces(tmp_path).splitlines()
    assert listing[0].split()[:3] == ["trace", "id", "started"]
    [row] = listing[1:]
    assert row.startswith(trace_id)
    assert "gateway: POST /api/orders" in row and "gateway,order" in row
    assert "4 (1 failed)" in row

    tree = show_traces(tmp_path, trace_id[:8]).splitlines()
    assert tree[0].startswith(f"trace {trace_id}: 4 spans in gateway, order")
    names = [line.split(" ms  ", 2)[-1] for line in tree[1:]]
    assert names == [
        "gateway: POST /api/orders",
        "  gateway: POST order",
        "    order: POST /api/orders",
        "      order: INSERT orders  FAILED",
    ]


def test_the_receiver_refuses_what_is_not_an_otlp_protobuf_export(
    receiver: TraceReceiver, tmp_path: Path
) -> None:
    protobuf = "application/x-protobuf"
    assert _post(receiver, b"\xff\xff\xff", **{"Content-Type": protobuf}) == 400
    assert _post(receiver, b"{}", **{"Content-Type": "application/json"}) == 415
    assert _post(receiver, b"", path="/v1/metrics", **{"Content-Type": protobuf}) == 404
    assert _post(receiver, b"", **{"Content-Type": protobuf}) == 200  # an empty export
    gzipped = gzip.compress(b"")
    assert _post(receiver, gzipped, **{"Content-Type": protobuf, "Content-Encoding": "gzip"}) == 200
    bad_gzip = {"Content-Type": protobuf, "Content-Encoding": "gzip"}
    assert _post(receiver, b"not gzip", **bad_gzip) == 400
    with pytest.raises(TraceError, match="no spans kept"):
        show_traces(tmp_path)


def test_the_span_file_rotates_once_and_reads_both(tmp_path: Path) -> None:
    store = SpanFile(tmp_path, max_bytes=2_000)
    spans = [
        SpanRecord(f"{n:032x}", f"{n:016x}", None, "GET /x", "server", "svc", n, n + 1, False, {})
        for n in range(1, 60)
    ]
    for span in spans:
        store.append([span])
    assert (tmp_path / OLDER_FILE).exists()
    assert (tmp_path / SPANS_FILE).stat().st_size <= 2_000
    read = store.read()
    assert read and read[-1] == spans[-1]  # the newest kept, the oldest dropped
    assert len(read) < len(spans)
    with (tmp_path / SPANS_FILE).open("a") as out:
        out.write('{"trace_id": "cut sho')  # a crash mid-line
    assert store.read() == read


def test_a_trace_is_named_by_an_unambiguous_prefix(tmp_path: Path) -> None:
    store = SpanFile(tmp_path / TRACES_DIR)
    store.append(
        [
            SpanRecord("ab" + "0" * 30, "1" * 16, None, "a", "server", "s", 1, 2, False, {}),
            SpanRecord("ac" + "0" * 30, "2" * 16, None, "b", "server", "s", 1, 2, False, {}),
        ]
    )
    assert "s: b" in show_traces(tmp_path, "AC")
    with pytest.raises(TraceError, match="names 2 traces"):
        show_traces(tmp_path, "a")
    with pytest.raises(TraceError, match="no trace"):
        show_traces(tmp_path, "ff")
