"""`cloudretail capacity`: the capacity model (generator/capacity.py) as a report, with the
throughput the benchmarks measured, for a target load in orders per second.

Per deployable: its replicas, the database connections it holds at its HPA maximum against
what the database (or its PgBouncer) accepts, the partitions its consumer group uses and the
members left idle; and, from the CPU one order costs it, the replicas a target load needs
against its `scaling.max`. Per topic: the storage its retention holds at that load.

Where the numbers come from:
- Throughput: `bench/orders.py --record bench/capacity.json` (bench/RESULTS.md) measures the
  CPU milliseconds one confirmed order costs each process of the stack. The autoscaler adds a
  replica when a deployable's CPU passes `scaling.cpu` percent of its request, so a replica
  carries `request x target` cores and a load of N orders/s needs
  `ceil(N x ms / 1000 / (request x target))` replicas (never fewer than `scaling.min`).
  Without `--orders-per-second`, the target is the platform's ceiling: the orders/s the
  deployable that saturates first carries at its maximum.
- Events per order: the spec names the saga's calls but not the events each handler
  publishes (`inventory.reserve` publishing `inventory.reserved` is in handlers/), so the
  spec cannot tell them; the benchmark counts what each order appended to each topic, read
  back from the broker. `--events-per-second TOPIC=R` gives a topic's rate instead (a topic
  orders do not feed, such as sign-ups, has none otherwise).
- Event size: the mean key + value bytes the benchmark read back per topic; for a topic it
  did not see, a sample envelope (id, type, timestamp, version, metadata with correlation id
  and traceparent) of each of the topic's events, with a sample value per payload field
  (`items`-like `json` fields as `{}`, so it is a lower bound), averaged over its events.
  `--event-size BYTES` sets one size for every topic.
- Storage: events/s x retention x size, per copy, and times the topic's replication for the
  brokers' disks together; record batches' headers and compression are left out (a few
  percent each way), the dead-letter topics too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudretail.generator.capacity import (
    CapacityModel,
    Consumption,
    DatabaseCapacity,
    DeployableCapacity,
    capacity_model,
)
from cloudretail.generator.errors import CloudRetailError, SpecIssue
from cloudretail.generator.kinds import KINDS
from cloudretail.generator.loader import Document
from cloudretail.generator.model import Event, Platform, Topic
from cloudretail.generator.validation import suggest

# Where `bench/orders.py --record` writes the figures this report reads, from the checkout.
DEFAULT_FIGURES = Path("bench/capacity.json")

# A sample value per payload field's Python type (the kind's `python`): its JSON size is what
# the envelope carries. Strings the spec does not bound get a short name's length.
_SAMPLES: Mapping[str, Any] = {
    "uuid.UUID": "00000000-0000-4000-8000-000000000000",
    "str": "x" * 16,
    "int": 100,
    "Decimal": "1234.56",
    "bool": True,
    "datetime": "2026-01-01T00:00:00.000Z",
    "Any": {},
}
# The envelope's own fields (runtime/events/envelope.py); tests compare the estimate with the
# runtime's serialised Event, so the two cannot drift apart.
_SAMPLE_ID = "00000000-0000-4000-8000-000000000000"
_SAMPLE_TIME = "2026-01-01T00:00:00.000Z"
_SAMPLE_TRACEPARENT = "00-" + "0" * 31 + "1-" + "0" * 15 + "1-01"


class CapacityInputError(CloudRetailError):
    """A bad option value or figures file of `cloudretail capacity`: one line, exit 2."""


@dataclass(frozen=True)
class Figures:
    """What the orders benchmark measured (bench/capacity.json)."""

    source: str
    command: str
    cores: int | None
    orders_per_second: float | None
    cpu_ms_per_order: Mapping[str, float]  # per deployable (and the broker)
    events_per_order: Mapping[str, float]  # per topic
    event_bytes: Mapping[str, float]  # per topic: mean key + value bytes


NO_FIGURES = Figures("", "", None, None, {}, {}, {})


def _numbers(data: Any, key: str, source: str) -> dict[str, float]:
    value = data.get(key, {})
    if not isinstance(value, dict) or not all(
        isinstance(number, int | float) and not isinstance(number, bool) and number >= 0
        for number in value.values()
    ):
        raise CapacityInputError(f"{source}: `{key}` must map names to numbers >= 0")
    return {str(name): float(number) for name, number in value.items()}


def read_figures(path: Path) -> Figures:
    """The benchmark's figures; a file that is not what `bench/orders.py --record` writes is a
    CapacityInputError naming it (an unreadable one raises OSError: the machine's)."""
    source = str(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CapacityInputError(f"{source}: not JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(data, dict):
        raise CapacityInputError(f"{source}: not the JSON object bench/orders.py --record writes")
    rate = data.get("orders_per_second")
    if rate is not None and (not isinstance(rate, int | float) or isinstance(rate, bool)):
        raise CapacityInputError(f"{source}: `orders_per_second` must be a number")
    cores = data.get("cores")
    return Figures(
        source=source,
        command=str(data.get("command", "")),
        cores=cores if isinstance(cores, int) and not isinstance(cores, bool) else None,
        orders_per_second=None if rate is None else float(rate),
        cpu_ms_per_order=_numbers(data, "cpu_ms_per_order", source),
        events_per_order=_numbers(data, "events_per_order", source),
        event_bytes=_numbers(data, "event_bytes", source),
    )


def parse_assignments(
    option: str, entries: Iterable[str], names: Mapping[str, str]
) -> dict[str, float]:
    """`NAME=NUMBER` entries (each may hold several, comma-separated) of `option`, as a map
    from the canonical name (`names` maps each accepted spelling to it) to the number."""
    found: dict[str, float] = {}
    for entry in entries:
        for part in entry.split(","):
            text = part.strip()
            if not text:
                continue
            name, equals, number = (piece.strip() for piece in text.partition("="))
            if not equals or not name or not number:
                raise CapacityInputError(f"{option}: {text!r} is not NAME=NUMBER")
            if name not in names:
                raise CapacityInputError(
                    f"{option}: {text!r}: no {name!r} in the spec{suggest(name, names)}"
                )
            try:
                value = float(number)
            except ValueError:
                raise CapacityInputError(
                    f"{option}: {text!r}: {number!r} is not a number"
                ) from None
            if not math.isfinite(value) or value < 0:
                raise CapacityInputError(f"{option}: {text!r}: the number must be 0 or more")
            if names[name] in found:
                raise CapacityInputError(f"{option} names {names[name]!r} twice")
            found[names[name]] = value
    return found


def deployable_names(platform: Platform) -> dict[str, str]:
    """Each way an option may name a deployable (its name, its service's, its spec block's)
    -> its name."""
    names = {platform.gateway.deployable.name: platform.gateway.deployable.name}
    names["gateway"] = platform.gateway.deployable.name
    names[platform.event_bus.deployable.name] = platform.event_bus.deployable.name
    names["event_bus"] = platform.event_bus.deployable.name
    for service in platform.services:
        names[service.name] = service.deployable.name
        names[service.deployable.name] = service.deployable.name
    return names


def sample_envelope(event: Event) -> dict[str, Any]:
    """An envelope of `event` as the runtime writes it, with a sample value per field."""
    data = {field.name: _SAMPLES.get(KINDS[field.type].python, "x" * 16) for field in event.payload}
    return {
        "id": _SAMPLE_ID,
        "type": event.name,
        "timestamp": _SAMPLE_TIME,
        "version": event.version,
        "data": data,
        "metadata": {
            "correlationId": _SAMPLE_ID,
            "causationId": None,
            "service": event.producer,
            "userId": None,
            "traceparent": _SAMPLE_TRACEPARENT,
        },
    }


def estimated_bytes(event: Event) -> int:
    """Key + value bytes of a sample message of `event` (compact JSON, as pydantic writes)."""
    envelope = sample_envelope(event)
    value = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
    key = str(envelope["data"].get(event.key, "")).encode()
    return len(key) + len(value)


@dataclass(frozen=True)
class DeployableRow:
    capacity: DeployableCapacity
    database_accepts: int | None  # client connections its database (or pooler) accepts
    pooled: bool
    cpu_ms_per_order: float | None
    cpu_from: str  # "measured", "given" or "none"
    replica_cores: float  # cores a replica carries before the autoscaler adds one
    needed: int | None  # replicas the target load needs

    @property
    def orders_at_max(self) -> float | None:
        """Orders/s it carries at its HPA maximum (None: not measured, or costs nothing)."""
        if not self.cpu_ms_per_order or self.replica_cores <= 0:
            return None
        return self.capacity.max_replicas * self.replica_cores * 1000 / self.cpu_ms_per_order

    @property
    def reaches(self) -> bool | None:
        return None if self.needed is None else self.needed <= self.capacity.max_replicas


@dataclass(frozen=True)
class TopicRow:
    topic: Topic
    consumers: tuple[tuple[str, Consumption], ...]  # (deployable, its group on this topic)
    events_per_second: float | None
    rate_from: str  # "measured", "given" or "none"
    event_bytes: float
    size_from: str  # "measured", "given" or "estimated"

    @property
    def retained_bytes(self) -> float | None:
        """One copy of what the retention keeps at this rate."""
        if self.events_per_second is None:
            return None
        return self.events_per_second * self.topic.retention_ms / 1000 * self.event_bytes

    @property
    def disk_bytes(self) -> float | None:
        retained = self.retained_bytes
        return None if retained is None else retained * self.topic.replication


@dataclass(frozen=True)
class CapacityReport:
    platform: str
    figures: Figures
    target: float | None  # orders/s
    target_from: str  # "given", "ceiling" (of the measured deployables) or "none"
    deployables: tuple[DeployableRow, ...]
    databases: tuple[DatabaseCapacity, ...]
    topics: tuple[TopicRow, ...]
    warnings: tuple[SpecIssue, ...]

    @property
    def short(self) -> tuple[DeployableRow, ...]:
        """Deployables that cannot carry the target at their HPA maximum."""
        return tuple(row for row in self.deployables if row.reaches is False)

    def record(self) -> dict[str, Any]:
        """`capacity --json`."""
        return {
            "ok": True,
            "platform": self.platform,
            "target_orders_per_second": self.target,
            "target_from": self.target_from,
            "figures": {
                "file": self.figures.source or None,
                "command": self.figures.command or None,
                "cores": self.figures.cores,
                "orders_per_second": self.figures.orders_per_second,
            },
            "deployables": [_deployable_record(row) for row in self.deployables],
            "databases": [_database_record(database) for database in self.databases],
            "topics": [_topic_record(row) for row in self.topics],
            "short": [row.capacity.name for row in self.short],
            "warnings": [
                {
                    "file": issue.location.path,
                    "line": issue.location.line,
                    "column": issue.location.column,
                    "path": issue.where,
                    "message": issue.message,
                }
                for issue in self.warnings
            ],
        }

    def lines(self) -> list[str]:
        """The text report: a table each for deployables, databases, topics, throughput."""
        out = [f"capacity of {self.platform} at each deployable's HPA maximum", ""]
        rows: list[tuple[str, ...]] = [
            ("deployable", "replicas", "db connections at max", "partitions used (idle)")
        ]
        for row in self.deployables:
            item = row.capacity
            if item.database:
                limit = "" if row.database_accepts is None else f" of {row.database_accepts}"
                via = " via pooler" if row.pooled else ""
                connections = (
                    f"{item.max_replicas} x {item.connections_per_replica} = "
                    f"{item.max_connections}{limit}{via}"
                )
            else:
                connections = "-"
            partitions = ", ".join(
                f"{use.topic} {use.active}/{use.partitions}"
                + (f" ({use.idle} idle)" if use.idle else "")
                for use in item.consumes
            )
            rows.append(
                (
                    item.name,
                    f"{item.min_replicas}-{item.max_replicas}",
                    connections,
                    partitions or "-",
                )
            )
        out += _table(rows)
        out.append("")
        rows = [("database", "clients at max", "accepts", "server connections", "postgres usable")]
        for database in self.databases:
            pooler = database.settings.pooler
            accepts = (
                f"{database.client_limit} ({pooler.instances} PgBouncer x "
                f"{pooler.max_client_connections})"
                if pooler
                else f"{database.client_limit} (max_connections "
                f"{database.settings.max_connections})"
            )
            rows.append(
                (
                    database.name,
                    str(database.client_connections),
                    accepts,
                    str(database.server_connections),
                    str(database.usable),
                )
            )
        out += _table(rows)
        out.append("")
        rate = "no target" if self.target is None else f"{_number(self.target)} orders/s"
        if self.target is None:
            out.append(
                "storage per topic: no rate without a target (give --orders-per-second and "
                "benchmark figures, or --events-per-second)"
            )
        elif self.target_from == "ceiling":
            out.append(f"storage per topic at {rate} (the ceiling below)")
        else:
            out.append(f"storage per topic at {rate}")
        rows = [("topic", "partitions", "retention", "events/s", "event size", "retained", "disk")]
        for stored in self.topics:
            size_note = {"measured": "", "given": " (given)", "estimated": " (est.)"}[
                stored.size_from
            ]
            rate_note = " (given)" if stored.rate_from == "given" else ""
            rows.append(
                (
                    stored.topic.name,
                    str(stored.topic.partitions),
                    stored.topic.retention,
                    "-"
                    if stored.events_per_second is None
                    else f"{_number(stored.events_per_second)}{rate_note}",
                    f"{stored.event_bytes:.0f} B{size_note}",
                    _bytes(stored.retained_bytes),
                    f"{_bytes(stored.disk_bytes)} (x{stored.topic.replication})"
                    if stored.disk_bytes is not None
                    else "-",
                )
            )
        out += _table(rows)
        out.append("")
        figures = self.figures
        if figures.source:
            measured = (
                f"{_number(figures.orders_per_second)} orders/s on {figures.cores or '?'} cores"
                if figures.orders_per_second is not None
                else "CPU per order"
            )
            out.append(f"replicas for {rate}: CPU per order from {figures.source} ({measured})")
        else:
            out.append(f"replicas for {rate}: no benchmark figures (give --cpu-ms-per-order)")
        out.append(
            "  (a replica carries its CPU request x its autoscaling target before one is added)"
        )
        rows = [("deployable", "CPU/order", "per replica", "orders/s at max", "needed", "max", "")]
        for row in self.deployables:
            item = row.capacity
            rows.append(
                (
                    item.name,
                    "-"
                    if row.cpu_ms_per_order is None
                    else f"{_number(row.cpu_ms_per_order)} ms"
                    + (" (given)" if row.cpu_from == "given" else ""),
                    f"{row.replica_cores * 1000:.0f}m",
                    "-" if row.orders_at_max is None else _number(row.orders_at_max),
                    "-" if row.needed is None else str(row.needed),
                    str(item.max_replicas),
                    {None: "", True: "ok", False: "CANNOT REACH"}[row.reaches],
                )
            )
        out += _table(rows)
        if self.short:
            out.append("")
            for row in self.short:
                out.append(
                    f"{row.capacity.name} needs {row.needed} replicas for {rate} but scales to "
                    f"{row.capacity.max_replicas}: raise "
                    f"`{_dotted(row.capacity.scaling_path('max'))}` or its CPU request, or "
                    "cut its CPU per order"
                )
        return out


def _dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in path)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        (
            "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def _number(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _deployable_record(row: DeployableRow) -> dict[str, Any]:
    item = row.capacity
    return {
        "name": item.name,
        "spec": _dotted(item.path),
        "min_replicas": item.min_replicas,
        "max_replicas": item.max_replicas,
        "database": item.database,
        "connections_per_replica": item.connections_per_replica,
        "connections_at_max": item.max_connections,
        "database_accepts": row.database_accepts,
        "pooled": row.pooled,
        "consumes": [
            {
                "topic": use.topic,
                "partitions": use.partitions,
                "members": use.members,
                "active": use.active,
                "idle": use.idle,
            }
            for use in item.consumes
        ],
        "cpu_ms_per_order": row.cpu_ms_per_order,
        "cpu_from": row.cpu_from,
        "replica_cores": row.replica_cores,
        "orders_per_second_at_max": row.orders_at_max,
        "replicas_needed": row.needed,
        "reaches_target": row.reaches,
    }


def _database_record(database: DatabaseCapacity) -> dict[str, Any]:
    pooler = database.settings.pooler
    return {
        "name": database.name,
        "clients": [client.name for client in database.clients],
        "client_connections_at_max": database.client_connections,
        "accepts": database.client_limit,
        "max_connections": database.settings.max_connections,
        "usable": database.usable,
        "server_connections": database.server_connections,
        "pooler": None
        if pooler is None
        else {
            "instances": pooler.instances,
            "pool_size": pooler.pool_size,
            "max_client_connections": pooler.max_client_connections,
        },
    }


def _topic_record(row: TopicRow) -> dict[str, Any]:
    return {
        "name": row.topic.name,
        "partitions": row.topic.partitions,
        "replication": row.topic.replication,
        "retention": row.topic.retention,
        "retention_ms": row.topic.retention_ms,
        "consumers": [
            {"deployable": name, "members": use.members, "active": use.active, "idle": use.idle}
            for name, use in row.consumers
        ],
        "events_per_second": row.events_per_second,
        "rate_from": row.rate_from,
        "event_bytes": row.event_bytes,
        "size_from": row.size_from,
        "retained_bytes": row.retained_bytes,
        "disk_bytes": row.disk_bytes,
    }


def _needed(row_cores: float, minimum: int, ms: float | None, target: float | None) -> int | None:
    if ms is None or target is None or row_cores <= 0:
        return None
    cores = target * ms / 1000
    # A hair under a whole replica is that replica (float noise must not add one).
    return max(minimum, math.ceil(cores / row_cores - 1e-9))


def capacity_report(
    document: Document,
    platform: Platform,
    figures: Figures = NO_FIGURES,
    *,
    orders_per_second: float | None = None,
    cpu_ms_per_order: Mapping[str, float] | None = None,
    events_per_second: Mapping[str, float] | None = None,
    event_size: int | None = None,
) -> CapacityReport:
    """The report for `platform` at `orders_per_second` (default: the measured ceiling).
    `cpu_ms_per_order` (by deployable name) and `events_per_second` (by topic) override the
    figures; `event_size` sets every topic's message size."""
    model: CapacityModel = capacity_model(platform)
    given_cpu = dict(cpu_ms_per_order or {})
    given_rates = dict(events_per_second or {})
    costs: dict[str, tuple[float | None, str]] = {}
    for item in model.deployables:
        if item.name in given_cpu:
            costs[item.name] = (given_cpu[item.name], "given")
        elif item.name in figures.cpu_ms_per_order:
            costs[item.name] = (figures.cpu_ms_per_order[item.name], "measured")
        else:
            costs[item.name] = (None, "none")

    def cores(item: DeployableCapacity) -> float:
        return item.cpu_request * item.cpu_target / 100

    target, target_from = orders_per_second, "given"
    if target is None:
        ceilings = [
            item.max_replicas * cores(item) * 1000 / ms
            for item in model.deployables
            if (ms := costs[item.name][0]) and cores(item) > 0
        ]
        target, target_from = (min(ceilings), "ceiling") if ceilings else (None, "none")

    databases = {database.name: database for database in model.databases}
    rows = []
    for item in model.deployables:
        database = databases.get(item.database) if item.database else None
        ms, source = costs[item.name]
        rows.append(
            DeployableRow(
                capacity=item,
                database_accepts=None if database is None else database.client_limit,
                pooled=database is not None and database.settings.pooler is not None,
                cpu_ms_per_order=ms,
                cpu_from=source,
                replica_cores=cores(item),
                needed=_needed(cores(item), item.min_replicas, ms, target),
            )
        )

    events = {event.name: event for event in platform.events}
    topics = []
    for topic in platform.topics:
        if topic.name in given_rates:
            rate: float | None = given_rates[topic.name]
            rate_from = "given"
        elif topic.name in figures.events_per_order and target is not None:
            rate = figures.events_per_order[topic.name] * target
            rate_from = "measured"
        else:
            rate, rate_from = None, "none"
        if event_size is not None:
            size, size_from = float(event_size), "given"
        elif figures.event_bytes.get(topic.name):
            size, size_from = figures.event_bytes[topic.name], "measured"
        else:
            samples = [estimated_bytes(events[name]) for name in topic.events]
            size, size_from = (sum(samples) / len(samples) if samples else 0.0), "estimated"
        topics.append(
            TopicRow(
                topic=topic,
                consumers=tuple(
                    (item.name, use)
                    for item in model.deployables
                    for use in item.consumes
                    if use.topic == topic.name
                ),
                events_per_second=rate,
                rate_from=rate_from,
                event_bytes=size,
                size_from=size_from,
            )
        )
    return CapacityReport(
        platform=platform.name,
        figures=figures,
        target=target,
        target_from=target_from if target is not None else "none",
        deployables=tuple(rows),
        databases=model.databases,
        topics=tuple(topics),
        warnings=tuple(finding.located(document) for finding in model.findings),
    )
