"""Traces of the local stack: a small OTLP/HTTP receiver that keeps spans in the data dir,
and the views `cloudretail traces` prints.

`cloudretail up` starts the receiver on a loopback port (unless OTEL_EXPORTER_OTLP_ENDPOINT
already sends the spans elsewhere) and points every process's exporter at it. Each span
becomes one JSON line in `<data dir>/traces/spans.jsonl`; past `MAX_FILE_BYTES` that file
becomes `spans.1.jsonl`, replacing the one before, so the recent spans are kept and the
disk use stays bounded. The receiver is the standard library's HTTP server in a thread of
the supervisor, and the services export in batches from threads of their own: none of it
is on a request's path.
"""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

TRACES_DIR = "traces"
SPANS_FILE = "spans.jsonl"
OLDER_FILE = "spans.1.jsonl"
MAX_FILE_BYTES = 20 * 1024 * 1024
# An exporter's batch is 512 spans at most by default: far below this.
_MAX_BODY = 16 * 1024 * 1024
_PROTOBUF = "application/x-protobuf"
_KINDS = {
    Span.SPAN_KIND_SERVER: "server",
    Span.SPAN_KIND_CLIENT: "client",
    Span.SPAN_KIND_PRODUCER: "producer",
    Span.SPAN_KIND_CONSUMER: "consumer",
}


class TraceError(Exception):
    """No such trace, or an id that names several."""


@dataclass(frozen=True)
class SpanRecord:
    """One span as kept: ids in hex, times in nanoseconds since the epoch."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    service: str
    start: int
    end: int
    error: bool
    attributes: dict[str, Any]

    @property
    def duration_ms(self) -> float:
        return max(0, self.end - self.start) / 1e6

    @classmethod
    def from_json(cls, line: str) -> SpanRecord:
        return cls(**json.loads(line))


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(value, which)
    return str(value).strip() if which else None


def decode_spans(body: bytes) -> list[SpanRecord]:
    """The spans of one OTLP/protobuf export request; DecodeError when it is not one."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        service = str(resource.get("service.name") or "unknown")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    SpanRecord(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=_KINDS.get(span.kind, "internal"),
                        service=service,
                        start=span.start_time_unix_nano,
                        end=span.end_time_unix_nano,
                        error=span.status.code == Status.STATUS_CODE_ERROR,
                        attributes={kv.key: _value(kv.value) for kv in span.attributes},
                    )
                )
    return spans


class SpanFile:
    """The kept spans: JSON lines, the newest file rotated to one older file when full."""

    def __init__(self, directory: Path, max_bytes: int = MAX_FILE_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    @property
    def current(self) -> Path:
        return self.directory / SPANS_FILE

    def append(self, spans: Sequence[SpanRecord]) -> None:
        if not spans:
            return
        text = "".join(json.dumps(asdict(span), separators=(",", ":")) + "\n" for span in spans)
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            with self.current.open("a", encoding="utf-8") as out:
                out.write(text)
                size = out.tell()
            if size > self.max_bytes:
                self.current.replace(self.directory / OLDER_FILE)

    def read(self) -> list[SpanRecord]:
        spans = []
        for path in (self.directory / OLDER_FILE, self.current):
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                continue
            for line in lines:
                try:
                    spans.append(SpanRecord.from_json(line))
                except (ValueError, TypeError):
                    continue  # a line cut short by a crash mid-write
        return spans


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/v1/traces":
            self._answer(404, b"", "text/plain")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._answer(411, b"", "text/plain")
            return
        if length > _MAX_BODY:
            self._answer(413, b"", "text/plain")
            return
        body = self.rfile.read(length)
        if self.headers.get("Content-Type", "").split(";", 1)[0].strip() != _PROTOBUF:
            self._answer(415, b"only OTLP/protobuf is accepted", "text/plain")
            return
        try:
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            spans = decode_spans(body)
        except (DecodeError, OSError, EOFError, zlib.error):
            self._answer(400, b"not an OTLP trace export", "text/plain")
            return
        self.server.store.append(spans)
        self._answer(200, ExportTraceServiceResponse().SerializeToString(), _PROTOBUF)

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the supervisor's terminal is for the services' logs."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: SpanFile) -> None:
        super().__init__(address, _Handler)
        self.store = store


class TraceReceiver:
    """An OTLP/HTTP endpoint (`POST /v1/traces`, protobuf) keeping what it gets in `store`."""

    def __init__(self, store: SpanFile, host: str = "127.0.0.1", port: int = 0) -> None:
        self.store = store
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Listen (port 0: any free one) and serve in a thread; the endpoint's base URL, as
        OTEL_EXPORTER_OTLP_ENDPOINT takes it. OSError when the port cannot be had."""
        self._server = _Server((self.host, self.port), self.store)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="trace-receiver", daemon=True
        )
        self._thread.start()
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


# -- views ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceSummary:
    trace_id: str
    root: SpanRecord
    services: tuple[str, ...]
    spans: int
    errors: int
    start: int
    duration_ms: float


def by_trace(spans: Iterable[SpanRecord]) -> dict[str, list[SpanRecord]]:
    traces: dict[str, list[SpanRecord]] = {}
    for span in spans:
        traces.setdefault(span.trace_id, []).append(span)
    return traces


def _roots(spans: Sequence[SpanRecord]) -> list[SpanRecord]:
    """Spans whose parent is not in the trace (not received, or in the caller's process),
    oldest first."""
    ids = {span.span_id for span in spans}
    return sorted((s for s in spans if s.parent_id not in ids), key=lambda s: s.start)


def summarize(trace_id: str, spans: Sequence[SpanRecord]) -> TraceSummary:
    start = min(span.start for span in spans)
    end = max(span.end for span in spans)
    return TraceSummary(
        trace_id=trace_id,
        root=_roots(spans)[0],
        services=tuple(sorted({span.service for span in spans})),
        spans=len(spans),
        errors=sum(span.error for span in spans),
        start=start,
        duration_ms=max(0, end - start) / 1e6,
    )


def recent(spans: Iterable[SpanRecord], limit: int) -> list[TraceSummary]:
    """The `limit` traces that started last, newest first."""
    summaries = [summarize(tid, members) for tid, members in by_trace(spans).items()]
    summaries.sort(key=lambda summary: summary.start, reverse=True)
    return summaries[:limit]


def find_trace(spans: Iterable[SpanRecord], prefix: str) -> list[SpanRecord]:
    """The spans of the one trace whose id starts with `prefix`; TraceError otherwise."""
    wanted = prefix.strip().lower()
    matches = {tid: members for tid, members in by_trace(spans).items() if tid.startswith(wanted)}
    if not wanted or not matches:
        raise TraceError(f"no trace {prefix!r} among the kept spans")
    if len(matches) > 1:
        raise TraceError(f"{prefix!r} names {len(matches)} traces; give more of the id")
    [members] = matches.values()
    return members


def _clock(nanoseconds: int) -> str:
    return datetime.fromtimestamp(nanoseconds / 1e9).strftime("%H:%M:%S.%f")[:-3]


def trace_table(summaries: Sequence[TraceSummary]) -> str:
    rows = [("trace id", "started", "root", "services", "spans", "duration")]
    for summary in summaries:
        errors = f" ({summary.errors} failed)" if summary.errors else ""
        rows.append(
            (
                summary.trace_id,
                _clock(summary.start),
                f"{summary.root.service}: {summary.root.name}",
                ",".join(summary.services),
                f"{summary.spans}{errors}",
                f"{summary.duration_ms:.1f} ms",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def trace_tree(spans: Sequence[SpanRecord]) -> str:
    """One line per span, children under their parent in start order: the offset from the
    trace's start, the duration, the service and the span's name."""
    children: dict[str | None, list[SpanRecord]] = {}
    ids = {span.span_id for span in spans}
    for span in spans:
        children.setdefault(span.parent_id if span.parent_id in ids else None, []).append(span)
    start = min(span.start for span in spans)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, ()), key=lambda s: s.start):
            failed = "  FAILED" if span.error else ""
            lines.append(
                f"{(span.start - start) / 1e6:9.1f} ms {span.duration_ms:9.1f} ms  "
                f"{'  ' * depth}{span.service}: {span.name}{failed}"
            )
            walk(span.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def show_traces(data_dir: Path, trace_id: str | None = None, limit: int = 20) -> str:
    """What `cloudretail traces` prints: the recent traces, or one trace as a tree."""
    store = SpanFile(data_dir / TRACES_DIR)
    spans = store.read()
    if not spans:
        raise TraceError(
            f"no spans kept in {store.directory} (`cloudretail up` keeps them there, unless "
            "OTEL_EXPORTER_OTLP_ENDPOINT sent them elsewhere)"
        )
    if trace_id is None:
        return trace_table(recent(spans, limit))
    members = find_trace(spans, trace_id)
    summary = summarize(members[0].trace_id, members)
    head = (
        f"trace {summary.trace_id}: {summary.spans} spans in "
        f"{', '.join(summary.services)}, {summary.duration_ms:.1f} ms"
    )
    return head + "\n" + trace_tree(members)
