"""Benchmark: seconds from `cloudretail up --detach` to all-ready, and the stack's idle memory.

Run: .venv/bin/python bench/stack.py [--runs 3]
Each run starts the stack on embedded defaults in a temporary data dir (the first run
creates the databases, later ones reuse them), sums the resident memory of every process
(supervisor, services, event bus, gateway, broker) after 10 idle seconds, and stops it.
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


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
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
    starts, memories = [], []
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
            pids = [state["supervisor"], *(p["pid"] for p in state["processes"].values())]
            if state.get("broker"):
                pids.append(state["broker"])
            memory = sum(rss_kib(pid) for pid in pids) / 1024
            cli("down", "--data-dir", str(data_dir))
            starts.append(elapsed)
            memories.append(memory)
            kind = "first (creates databases)" if run == 0 else "again (data kept)"
            print(f"run {run + 1}: {elapsed:5.1f} s to all-ready, {memory:6.0f} MiB idle  {kind}")
    print(
        f"median: {statistics.median(starts):.1f} s to all-ready, "
        f"{statistics.median(memories):.0f} MiB resident when idle ({len(pids)} processes)"
    )


if __name__ == "__main__":
    main()
