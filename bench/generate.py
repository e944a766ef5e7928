"""Benchmark: wall time of `generate` on the real spec and on synthetic specs of 10/50/100
services, and of the `cloudretail validate` / `cloudretail generate` commands as processes.

Run: .venv/bin/python bench/generate.py [--repeat N]
Prints the median of N runs for each spec, the 100/10 ratio (linear growth means ~10), and
the median wall time of each command from start to exit (imports included), cold (the
generator's cache off: templates compiled and migrations planned afresh) and warm (its cache
primed by one unmeasured run, as on a developer's machine). The bench uses a cache folder of
its own, never the user's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cloudretail.generator import generate  # noqa: E402


def synthetic_spec(services: int) -> dict:
    """A spec with `services` services, each with one table, two events, four routes."""
    base = yaml.safe_load((ROOT / "spec" / "cloudretail.yaml").read_text())
    spec = {key: base[key] for key in ("version", "platform", "defaults", "gateway", "event_bus")}
    spec["gateway"] = {**spec["gateway"], "routes": []}
    spec["topics"] = {}
    spec["events"] = {}
    spec["services"] = {}
    # Tokens from an identity provider outside the platform: no service issues them here.
    spec["auth"] = {"jwks": "https://login.example.com/.well-known/jwks.json", "roles": ["admin"]}
    for index in range(services):
        name = f"svc{index}"
        topic = {"partitions": 3, "retention": "7d", "events": [f"{name}.*"]}
        spec["topics"][f"{name}-events"] = topic
        for kind in ("created", "updated"):
            spec["events"][f"{name}.{kind}"] = {
                "key": "item_id",
                "payload": {"item_id": "uuid", "name": "string", "price": "decimal"},
            }
        spec["services"][name] = {
            "port": 10000 + index,
            "database": f"db_{name}",
            "prefix": f"/api/{name}",
            "calls": [f"svc{index - 1}"] if index else [],
            "tables": {
                "items": {
                    "columns": {
                        "id": {"type": "uuid", "primary_key": True, "default": "gen_random_uuid"},
                        "name": {"type": "string", "length": 100, "nullable": False},
                        "price": {"type": "decimal", "precision": 10, "scale": 2, "check": ">= 0"},
                        "created_at": {"type": "timestamp", "default": "now"},
                    },
                    "indexes": ["name"],
                    "filters": [{"name": "name", "column": "name", "op": "eq"}],
                    "sort": ["price"],
                }
            },
            "events": {
                "publishes": [f"{name}.created", f"{name}.updated"],
                "consumes": [f"svc{index - 1}.created"] if index else [],
            },
            "routes": [
                {"method": "GET", "path": f"/api/{name}", "auth": "public", "crud": "items.list"},
                {"method": "GET", "path": f"/api/{name}/{{id}}", "auth": "public",
                 "crud": "items.get", "name": "get"},
                {"method": "POST", "path": f"/api/{name}", "auth": "admin", "crud": "items.create"},
                {"method": "DELETE", "path": f"/api/{name}/{{id}}", "auth": "admin",
                 "crud": "items.delete"},
            ],
        }
    return spec


def timed(spec: Path, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            generate(spec, Path(out) / "generated")
            runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def command_seconds(args: list[str], repeat: int, *, cold: bool) -> float:
    env = {**os.environ, "CLOUDRETAIL_NO_CACHE": "1"} if cold else dict(os.environ)
    command = [sys.executable, "-m", "cli", *args]
    if not cold:
        subprocess.run(command, cwd=ROOT, capture_output=True, env=env)  # primes the cache
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
        runs.append(time.perf_counter() - start)
        if done.returncode != 0:
            sys.exit(f"cloudretail {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    os.environ["CLOUDRETAIL_CACHE_DIR"] = tempfile.mkdtemp(prefix="cloudretail-bench-cache-")
    results: dict[str, float] = {}
    results["real spec"] = timed(ROOT / "spec" / "cloudretail.yaml", args.repeat)
    with tempfile.TemporaryDirectory() as folder:
        for count in (10, 50, 100):
            path = Path(folder) / f"synthetic-{count}.yaml"
            path.write_text(yaml.safe_dump(synthetic_spec(count), sort_keys=False))
            results[f"{count} services"] = timed(path, args.repeat)
    print(f"generate: median of {args.repeat} runs, load + validate + render + write")
    for label, seconds in results.items():
        print(f"  {label:<14}{seconds * 1000:9.1f} ms")
    ratio = results["100 services"] / results["10 services"]
    print(f"  100/10 ratio  {ratio:9.2f}  (linear growth: about 10)")
    with tempfile.TemporaryDirectory() as out:
        commands = {
            "validate": ["validate"],
            "generate": ["generate", "--out", str(Path(out) / "generated")],
        }
        print(f"commands on the real spec: median of {args.repeat} runs, wall time of the process")
        print(f"  {'':<21}{'cold':>7}{'warm':>9}")
        for label, command in commands.items():
            cold = command_seconds(command, args.repeat, cold=True)
            warm = command_seconds(command, args.repeat, cold=False)
            print(f"  cloudretail {label:<9}{cold * 1000:7.0f} ms{warm * 1000:6.0f} ms")


if __name__ == "__main__":
    main()
