#!/usr/bin/env bash
# How the proxy's HTTP client was chosen: three bare proxy cores (no auth, no limits) on
# the same server path (pure ASGI on uvicorn with httptools + uvloop), in front of the
# benchmark upstream. Prints req/s, p99 and the proxy process's CPU time per request
# (user+sys from /proc, which other load on the machine disturbs less than throughput).
#   bash bench/gateway/candidates.sh        (aiohttp must be installed for its candidate)
set -euo pipefail
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
HERE=$ROOT/bench/gateway
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT INT TERM
port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export PYTHONPATH=$ROOT
SERVE=(--host 127.0.0.1 --loop uvloop --http httptools --no-access-log --log-level warning)
UP=$(port)
"$PY" -m uvicorn upstream:app --app-dir "$HERE" --port "$UP" "${SERVE[@]}" & PIDS+=($!)
UP_PID=$!
declare -A PORT PID
for name in httpx aiohttp custom; do
  if [ "$name" = aiohttp ] && ! "$PY" -c 'import aiohttp' 2>/dev/null; then
    echo "aiohttp not installed: its candidate is skipped" >&2; continue
  fi
  PORT[$name]=$(port)
  # stderr dropped: under this load httpx's candidate logs connect errors by the screenful.
  UPSTREAM=http://127.0.0.1:$UP "$PY" -m uvicorn "gw_$name:app" --app-dir "$HERE/candidates" \
    --port "${PORT[$name]}" "${SERVE[@]}" 2>/dev/null &
  PIDS+=($!); PID[$name]=$!
done
PORT[direct]=$UP; PID[direct]=$UP_PID
for name in "${!PORT[@]}"; do
  for _ in $(seq 150); do
    curl -s -o /dev/null "http://127.0.0.1:${PORT[$name]}/api/products" && break
    sleep 0.2
  done
done
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
  for name in "${!PID[@]}"; do
    c0=$(cpu "${PID[$name]}")
    out=$(wrk -t2 -c64 -d"${DURATION}s" --latency "http://127.0.0.1:${PORT[$name]}/api/products")
    c1=$(cpu "${PID[$name]}")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    printf 'round %s %-8s %9s req/s  p99 %-9s  %4d us CPU/request\n' "$round" "$name" \
      "$(awk '/^Requests\/sec/ {print $2}' <<<"$out")" "$(awk '$1 == "99%" {print $2}' <<<"$out")" \
      "$(( (c1 - c0) * 1000000 / hz / n ))"
  done
done
