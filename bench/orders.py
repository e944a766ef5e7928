"""Benchmark: confirmed orders per second through the gateway, end-to-end latency, and the
CPU-seconds one order costs summed over every process of the stack.

Run: .venv/bin/python bench/orders.py [--orders 200] [--concurrency 8]
         [--database-url-template postgresql://postgres@127.0.0.1/bench_{database}]
         [--redis-url redis://127.0.0.1:6379/5] [--profile DIR] [--record bench/capacity.json]
Starts the stack in a temporary data dir (on SQLite files and in-process stores unless
given `up`'s PostgreSQL/Redis options; `--reset`, so every run starts empty), makes one
product with plenty of stock and a few customers, places the orders at a fixed
concurrency with the gateway's rate limit raised out of the way, prints throughput,
latency and CPU per order per process, checks the shop's invariants (speed that costs
correctness does not count), then stops the stack. `--profile DIR` records every Python
process with py-spy during the orders, as collapsed stacks (DIR/<process>.txt; open them in
speedscope or flamegraph.pl). `--record FILE` writes the figures `cloudretail capacity`
reads (bench/capacity.json): orders/s, CPU ms per order per deployable, and, read back from
the broker, the events each order appended to each topic and their mean size (key + value).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from cloudretail.generator import load_platform

from handlers.invariants import check, stack_urls

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = "http://127.0.0.1:8080"
TICKS = os.sysconf("SC_CLK_TCK")
SPY = Path(sys.executable).with_name("py-spy")
PLATFORM = load_platform(ROOT / "spec" / "cloudretail.yaml")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICKS


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GATEWAY_RATE_LIMIT_REQUESTS": "1000000"}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=ROOT, capture_output=True, text=True, env=env
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--database-url-template", help="as for `cloudretail up`")
    parser.add_argument("--redis-url", help="as for `cloudretail up`")
    parser.add_argument("--profile", type=Path, help="folder for py-spy profiles")
    parser.add_argument(
        "--record", type=Path, help="write the figures `cloudretail capacity` reads (JSON)"
    )
    args = parser.parse_args()
    if args.profile and not SPY.exists():
        sys.exit(f"--profile needs py-spy beside {sys.executable}: pip install py-spy")
    options = ["--reset"]
    if args.database_url_template:
        options += ["--database-url-template", args.database_url_template]
    if args.redis_url:
        options += ["--redis-url", args.redis_url]
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder) / "stack"
        started = cli("up", "--detach", "--data-dir", str(data_dir), *options)
        if started.returncode != 0:
            sys.exit(started.stdout + started.stderr)
        try:
            figures = run(data_dir, args.orders, args.concurrency, args.profile)
            if args.record:
                record = {
                    "command": " ".join(["bench/orders.py", *sys.argv[1:]]),
                    "cores": os.cpu_count(),
                    **figures,
                }
                args.record.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
                print(f"  recorded    {args.record}")
        finally:
            cli("down", "--data-dir", str(data_dir))


def start_profiles(folder: Path, names: dict[int, str]) -> list[subprocess.Popen[bytes]]:
    """One `py-spy record` per Python process, stopped (SIGINT) once the orders are placed."""
    folder.mkdir(parents=True, exist_ok=True)
    spy = SPY
    recorders = []
    for pid, name in names.items():
        if name == "broker":
            continue
        for fmt, suffix in (("raw", "txt"),):
            recorders.append(
                subprocess.Popen(
                    [
                        str(spy),
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        "200",
                        "--nonblocking",
                        "--format",
                        fmt,
                        "--output",
                        str(folder / f"{name}.{suffix}"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    time.sleep(1.0)  # let them attach
    return recorders


def stop_profiles(recorders: list[subprocess.Popen[bytes]]) -> None:
    for recorder in recorders:
        recorder.send_signal(signal.SIGINT)
    for recorder in recorders:
        recorder.wait(timeout=60)


async def topic_offsets(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """The end offset of every partition of `topics`."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        parts = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        ends = await consumer.end_offsets(parts)
        return {(part.topic, part.partition): offset for part, offset in ends.items()}
    finally:
        await consumer.stop()


async def appended(
    bootstrap: str, before: dict[tuple[str, int], int], after: dict[tuple[str, int], int]
) -> dict[str, tuple[int, int]]:
    """Per topic: the records appended between two offset snapshots and their key + value
    bytes, read back from the broker."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    found: dict[str, tuple[int, int]] = {topic: (0, 0) for topic, _ in after}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        wanted = {
            TopicPartition(topic, partition): (before.get((topic, partition), 0), end)
            for (topic, partition), end in after.items()
            if end > before.get((topic, partition), 0)
        }
        if not wanted:
            return found
        consumer.assign(list(wanted))
        for part, (start, _) in wanted.items():
            consumer.seek(part, start)
        left = {part: end - start for part, (start, end) in wanted.items()}
        while any(count > 0 for count in left.values()):
            batches = await consumer.getmany(timeout_ms=5000)
            if not batches:
                break
            for part, records in batches.items():
                for message in records[: max(left[part], 0)]:
                    count, size = found[part.topic]
                    size += max(message.serialized_key_size, 0)
                    size += max(message.serialized_value_size, 0)
                    found[part.topic] = (count + 1, size)
                left[part] -= len(records)
        return found
    finally:
        await consumer.stop()


def run(data_dir: Path, orders: int, concurrency: int, profile: Path | None) -> dict[str, Any]:
    secrets = json.loads((data_dir / "secrets.json").read_text())
    state = json.loads((data_dir / "state.json").read_text())
    pids = [p["pid"] for p in state["processes"].values()] + [state["broker"]]
    client = httpx.Client(base_url=GATEWAY, timeout=60.0)
    admin_login = {
        "email": secrets.get("admin_email", "admin@cloudretail.example"),
        "password": secrets["admin_password"],
    }
    admin = {
        "Authorization": "Bearer "
        + client.post("/api/users/login", json=admin_login).json()["access_token"]
    }
    product = client.post(
        "/api/products",
        json={"name": "Bench item", "price": "5.00", "sku": f"B-{uuid.uuid4().hex[:8]}"},
        headers=admin,
    ).json()["id"]
    client.put(f"/api/inventory/{product}", json={"quantity": orders * 2}, headers=admin)
    customers = []
    for index in range(max(1, orders // 50 + 1) * 2):
        email = f"bench-{index}-{uuid.uuid4().hex[:6]}@cloudretail.example"
        body = {
            "email": email,
            "password": "bench password 1",
            "first_name": "B",
            "last_name": "B",
            "gdpr_consent": True,
        }
        client.post("/api/users/register", json=body)
        token = client.post("/api/users/login", json={"email": email, "password": body["password"]})
        customers.append({"Authorization": "Bearer " + token.json()["access_token"]})
    order = {
        "items": [{"product_id": product, "quantity": 1}],
        "shipping_address": {
            "line1": "1 Main St",
            "city": "X",
            "postal_code": "1",
            "country": "US",
        },
        "payment_method": {"type": "card", "token": "tok_visa"},
    }

    def place(index: int) -> tuple[int, float]:
        began = time.perf_counter()
        response = client.post("/api/orders", json=order, headers=customers[index % len(customers)])
        return response.status_code, time.perf_counter() - began

    names = {p["pid"]: name for name, p in state["processes"].items()} | {state["broker"]: "broker"}
    urls, bootstrap = stack_urls(data_dir)
    topics = [topic.name for topic in PLATFORM.topics]
    time.sleep(3)  # the set-up's events (the product, the customers) reach the broker first
    offsets_before = asyncio.run(topic_offsets(bootstrap, topics))
    recorders = start_profiles(profile, names) if profile else []
    each_before = {pid: cpu_seconds([pid]) for pid in pids}
    cpu_before = cpu_seconds(pids)
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(place, range(orders)))
    elapsed = time.perf_counter() - began
    cpu = cpu_seconds(pids) - cpu_before
    shares = {names[pid]: cpu_seconds([pid]) - each_before[pid] for pid in pids}
    stop_profiles(recorders)
    latencies = sorted(seconds for status, seconds in results if status == 201)
    confirmed = len(latencies)
    print(
        f"{orders} orders at concurrency {concurrency}: {confirmed} confirmed, "
        f"{orders - confirmed} not ({sorted({s for s, _ in results if s != 201})})"
    )
    print(f"  throughput  {confirmed / elapsed:6.1f} confirmed orders/s")
    print(
        f"  latency     p50 {statistics.median(latencies) * 1000:6.0f} ms   "
        f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:6.0f} ms"
    )
    print(
        f"  CPU         {cpu / max(confirmed, 1) * 1000:6.1f} ms CPU per order "
        f"(all {len(pids)} processes: services, event bus, gateway, broker)"
    )
    ranked = sorted(shares.items(), key=lambda item: -item[1])
    print(
        "  CPU by process (ms per order): "
        + ", ".join(f"{name} {seconds / max(confirmed, 1) * 1000:.0f}" for name, seconds in ranked)
    )
    time.sleep(3)  # events in flight reach their consumers
    offsets_after = asyncio.run(topic_offsets(bootstrap, topics))
    per_topic = asyncio.run(appended(bootstrap, offsets_before, offsets_after))
    print(
        "  events per order: "
        + ", ".join(f"{t} {n / max(confirmed, 1):.2f}" for t, (n, _) in sorted(per_topic.items()))
    )
    report = asyncio.run(check(urls, initial_stock={product: orders * 2}, bootstrap=bootstrap))
    print(f"  invariants  {report}")
    if not report.ok:
        sys.exit(1)
    deployables = {service.name: service.deployable.name for service in PLATFORM.services} | {
        "gateway": PLATFORM.gateway.deployable.name,
        "eventbus": PLATFORM.event_bus.deployable.name,
    }
    return {
        "orders": orders,
        "concurrency": concurrency,
        "confirmed": confirmed,
        "orders_per_second": round(confirmed / elapsed, 1),
        "cpu_ms_per_order": {
            deployables.get(name, name): round(seconds / max(confirmed, 1) * 1000, 1)
            for name, seconds in sorted(shares.items())
        },
        "events_per_order": {
            topic: round(count / max(confirmed, 1), 2)
            for topic, (count, _) in sorted(per_topic.items())
        },
        "event_bytes": {
            topic: round(size / count)
            for topic, (count, size) in sorted(per_topic.items())
            if count
        },
    }


if __name__ == "__main__":
    main()
