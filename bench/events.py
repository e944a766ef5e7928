"""Benchmark: events through outbox -> relay -> embedded tansu broker -> consumer.

Run: .venv/bin/python bench/events.py [--events 2000] [--writers 4] [--rate 200]
         [--database-url-template postgresql://postgres@127.0.0.1/bench_events_{database}]

Two phases on one broker, publisher and consumer each with their own database (SQLite files,
or PostgreSQL databases from the template, emptied first):
  burst  -- `--writers` tasks publish `--events` events as fast as they can, one transaction
            per event; prints events/s end to end and latency under saturation;
  paced  -- one event every 1/`--rate` s; latency of an event that finds the pipeline idle;
  backlog -- `--events` events committed while the relay is stopped, then the relay started:
            events/s of the pipeline alone (relay -> broker -> consumer applied once), which
            the burst cannot show on a small machine because its writers share the CPU.
Latency is from the publisher's commit to the start of the consumer's handler for that event.
The burst's latency is mostly queueing: it grows with the backlog, so read its events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel
from sqlalchemy import Column, Integer, MetaData, String, Table, Uuid, insert

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cloudretail.runtime.db import Database  # noqa: E402
from cloudretail.runtime.events.broker import EmbeddedBroker  # noqa: E402
from cloudretail.runtime.events.consumer import EventConsumer, EventContext  # noqa: E402
from cloudretail.runtime.events.kafka import KafkaProducer, KafkaSource  # noqa: E402
from cloudretail.runtime.events.outbox import OutboxRelay, publish  # noqa: E402
from cloudretail.runtime.events.registry import EventRegistry, EventType  # noqa: E402
from cloudretail.runtime.events.tables import create_event_tables, outbox  # noqa: E402
from cloudretail.runtime.events.topics import TopicSpec  # noqa: E402
from cloudretail.runtime.migrate import create_database_if_missing  # noqa: E402

TOPIC = "bench.orders"


class OrderPlaced(BaseModel):
    order_id: uuid.UUID
    customer: str
    total: Decimal


REGISTRY = EventRegistry([EventType("order.placed", TOPIC, "order_id", "1", OrderPlaced)])

domain = MetaData()
applied = Table(
    "applied",
    domain,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", Uuid, nullable=False),
    Column("order_id", String(64), nullable=False),
)


class Clock:
    def __init__(self) -> None:
        self.committed: dict[uuid.UUID, float] = {}
        self.handled: dict[uuid.UUID, float] = {}
        self.done = asyncio.Event()
        self.expected = 0

    async def handler(self, ctx: EventContext) -> None:
        self.handled.setdefault(ctx.event.id, time.perf_counter())
        await ctx.session.execute(
            insert(applied).values(event_id=ctx.event.id, order_id=str(ctx.event.data["order_id"]))
        )
        if len(self.handled) >= self.expected:
            self.done.set()


async def publish_one(database: Database, clock: Clock) -> None:
    async with database.session() as session:
        event = await publish(
            session,
            REGISTRY,
            "order.placed",
            {"order_id": uuid.uuid4(), "customer": "bench", "total": Decimal("9.99")},
            service="bench-orders",
        )
    clock.committed[event.id] = time.perf_counter()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(name: str, clock: Clock, ids: list[uuid.UUID], started: float) -> None:
    latencies = [(clock.handled[i] - clock.committed[i]) * 1000 for i in ids]
    finished = max(clock.handled[i] for i in ids)
    elapsed = finished - started
    print(
        f"{name:6} {len(ids):5d} events in {elapsed:6.2f} s = {len(ids) / elapsed:7.0f} events/s"
        f" | latency ms p50 {statistics.median(latencies):7.1f}"
        f"  p90 {percentile(latencies, 0.90):7.1f}"
        f"  p99 {percentile(latencies, 0.99):7.1f}  max {max(latencies):7.1f}"
    )


async def run(
    events: int,
    writers: int,
    rate: float,
    paced_events: int,
    fetch_wait_ms: int,
    template: str | None,
) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-events-"))
    async with EmbeddedBroker(port=0, topics=[TopicSpec(TOPIC, 3)]) as broker:
        urls = [
            template.format(database=name) if template else f"sqlite:///{workdir}/{name}.db"
            for name in ("orders", "billing")
        ]
        for url in urls:
            await asyncio.to_thread(create_database_if_missing, url)
        publisher_db, consumer_db = (Database(url) for url in urls)
        for database in (publisher_db, consumer_db):
            async with database.engine.begin() as connection:
                await connection.run_sync(outbox.metadata.drop_all)
                await connection.run_sync(domain.drop_all)
                await create_event_tables(connection)
                await connection.run_sync(domain.create_all)

        clock = Clock()
        producer = KafkaProducer(broker.bootstrap_servers, idempotent=False)
        relay = OutboxRelay(publisher_db, producer, batch_size=200)
        source = KafkaSource(
            broker.bootstrap_servers, "bench-billing", [TOPIC], fetch_max_wait_ms=fetch_wait_ms
        )
        consumer = EventConsumer(
            consumer_db,
            REGISTRY,
            source,
            producer,
            service="bench-billing",
            handlers={"order.placed": clock.handler},
        )
        await relay.start()
        await consumer.start()
        try:
            # Warm-up: the consumer's group join and the first metadata lookups.
            clock.expected = 1
            await publish_one(publisher_db, clock)
            await asyncio.wait_for(clock.done.wait(), 60)

            where = template or f"SQLite files in {workdir}"
            print(f"tansu at {broker.bootstrap_servers}; databases: {where}")
            clock.expected = 1 + events
            clock.done.clear()
            before = set(clock.committed)
            started = time.perf_counter()
            per_writer = [events // writers + (i < events % writers) for i in range(writers)]

            async def writer(count: int) -> None:
                for _ in range(count):
                    await publish_one(publisher_db, clock)

            await asyncio.gather(*(writer(count) for count in per_writer))
            published = time.perf_counter() - started
            await asyncio.wait_for(clock.done.wait(), 300)
            burst_ids = [i for i in clock.committed if i not in before]
            print(f"burst: {writers} writers committed {events} events in {published:.2f} s")
            report("burst", clock, burst_ids, started)

            clock.expected += paced_events
            clock.done.clear()
            before = set(clock.committed)
            started = time.perf_counter()
            # Each event is published at its own moment (start + k / rate), whatever the
            # ones before it cost, so the pipeline sees the asked-for rate.
            loop = asyncio.get_running_loop()
            pending = []
            for k in range(paced_events):
                await asyncio.sleep(max(0.0, started + k / rate - time.perf_counter()))
                pending.append(loop.create_task(publish_one(publisher_db, clock)))
            await asyncio.gather(*pending)
            await asyncio.wait_for(clock.done.wait(), 300)
            paced_ids = [i for i in clock.committed if i not in before]
            report("paced", clock, paced_ids, started)

            await relay.stop()
            clock.expected += events
            clock.done.clear()
            before = set(clock.committed)
            await asyncio.gather(*(writer(count) for count in per_writer))
            started = time.perf_counter()
            await relay.start()
            await asyncio.wait_for(clock.done.wait(), 300)
            elapsed = max(clock.handled[i] for i in clock.committed if i not in before) - started
            print(
                f"backlog {events:4d} events in {elapsed:6.2f} s = {events / elapsed:7.0f} events/s"
            )
            print(
                f"relay sent {relay.sent_total}; consumer {consumer.stats}; "
                f"duplicates applied: {len(clock.handled) - len(set(clock.handled))}"
            )
        finally:
            await consumer.stop()
            await relay.stop()
            await producer.stop()
            await publisher_db.dispose()
            await consumer_db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="events in the burst phase")
    parser.add_argument("--writers", type=int, default=4, help="concurrent publishing tasks")
    parser.add_argument("--rate", type=float, default=200.0, help="events/s in the paced phase")
    parser.add_argument("--paced-events", type=int, default=400)
    parser.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=20,
        help="consumer fetch_max_wait_ms: tansu holds multi-partition fetches this long",
    )
    parser.add_argument("--database-url-template", help="e.g. postgresql://host/bench_{database}")
    args = parser.parse_args()
    asyncio.run(
        run(
            args.events,
            args.writers,
            args.rate,
            args.paced_events,
            args.fetch_wait_ms,
            args.database_url_template,
        )
    )


if __name__ == "__main__":
    main()
