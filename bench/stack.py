"""Benchmark: seconds from `cloudretail up --detach` to all-ready, and the stack's idle memory.

Run: .venv/bin/python bench/stack.py [--runs 3]
Each run starts the stack on embedded defaults in a temporary data dir (the first run
creates the databases, later ones reuse them), sums the resident memory of every process
(supervisor, services, event bus, gateway, broker) after 10 idle seconds, and stops it.
Resident memory is summed two ways: RSS (each process's resident pages, so pages the
processes share, such as loaded libraries, count once per process: the goal's measure) and
PSS (a shared page split among its sharers: what the stack holds of the machine's RAM).
The last run's figures are printed per process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def kib(pid: int, field: str) -> int:
    """A field of /proc/PID/smaps_rollup (`Rss`, `Pss`) in KiB; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=ROOT, capture_output=True, text=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    starts, memories, proportional = [], [], []
    per_process: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder) / "stack"
        for run in range(args.runs):
            began = time.perf_counter()
            result = cli("up", "--detach", "--data-dir", str(data_dir))
            elapsed = time.perf_counter() - began
            if result.returncode != 0:
                sys.exit(f"up failed:\n{result.stdout}\n{result.stderr}")
            time.sleep(10)
            state = json.loads((data_dir / "state.json").read_text())
            pids = {"supervisor": state["supervisor"]}
            pids.update({name: p["pid"] for name, p in state["processes"].items()})
            if state.get("broker"):
                pids["broker"] = state["broker"]
            per_process = {name: (kib(pid, "Rss"), kib(pid, "Pss")) for name, pid in pids.items()}
            memory = sum(rss for rss, _ in per_process.values()) / 1024
            shared = sum(pss for _, pss in per_process.values()) / 1024
            cli("down", "--data-dir", str(data_dir))
            starts.append(elapsed)
            memories.append(memory)
            proportional.append(shared)
            kind = "first (creates databases)" if run == 0 else "again (data kept)"
            print(
                f"run {run + 1}: {elapsed:5.1f} s to all-ready, {memory:6.0f} MiB RSS, "
                f"{shared:6.0f} MiB PSS idle  {kind}"
            )
    for name, (rss, pss) in per_process.items():
        print(f"  {name:<12} RSS {rss / 1024:6.1f} MiB  PSS {pss / 1024:6.1f} MiB")
    print(
        f"median: {statistics.median(starts):.1f} s to all-ready, "
        f"{statistics.median(memories):.0f} MiB RSS, {statistics.median(proportional):.0f} MiB "
        f"PSS when idle ({len(per_process)} processes)"
    )


if __name__ == "__main__":
    main()
