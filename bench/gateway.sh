#!/usr/bin/env bash
# Benchmark: the CloudRetail gateway against nginx and an Express gateway, all in front of
# the same upstream, plus the upstream directly. Not a test; prints a table.
#
#   bash bench/gateway.sh                # 5 interleaved rounds of 10 s per target
#   ROUNDS=3 DURATION=5 bash bench/gateway.sh
#
# Every target gets the same wrk load (-t2 -c64, a bearer token on every request) on
# GET /api/orders, a route that needs authentication, so the gateway verifies the token
# (RS256, cached per token) and rate limits each request. The spec's limit (100 per
# minute) would turn almost every request into a 429, so GATEWAY_RATE_LIMIT_REQUESTS (and
# Express's limit) is raised to 10^9 here: the limiter still runs on every request.
# "gateway+redis" keeps the limit in Redis (REDIS_URL) instead of in process; it is
# skipped when no Redis answers at 127.0.0.1:6379.
# Everything binds to 127.0.0.1 and is stopped on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
HERE=$ROOT/bench/gateway
WORK=$(mktemp -d -t cloudretail-gateway-bench.XXXXXX)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "installing $2 ..." >&2
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq >&2; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >&2
}
need wrk wrk
need nginx nginx
need node nodejs
need npm npm

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {  # until anything answers HTTP (a 401 counts: the server is up)
  for _ in $(seq 150); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" != 000 ] && return 0
    sleep 0.2
  done
  echo "no answer from $1" >&2
  exit 1
}

UP=$(free_port); GW=$(free_port); GWR=$(free_port); NGX=$(free_port); EXP=$(free_port)
export PYTHONPATH=$ROOT

echo "setting up in $WORK" >&2
TOKEN=$("$PY" "$HERE/mint.py" "$WORK/jwks.json")
(cd "$WORK" && cp "$HERE/package.json" "$HERE/express-gateway.js" . \
  && npm install --silent --no-audit --no-fund >/dev/null 2>&1)

BENCH_JWKS=$WORK/jwks.json "$PY" -m uvicorn upstream:app --app-dir "$HERE" \
  --host 127.0.0.1 --port "$UP" --workers 1 --loop uvloop --http httptools \
  --no-access-log --log-level warning &
PIDS+=($!)
declare -A PID_OF
PID_OF[direct]=$!
wait_http "http://127.0.0.1:$UP/health/ready"

gateway_env=(
  JWKS_URL="http://127.0.0.1:$UP/api/users/.well-known/jwks.json"
  GATEWAY_RATE_LIMIT_REQUESTS=1000000000
  LOG_LEVEL=INFO
)
for name in USER PRODUCT ORDER INVENTORY PAYMENT EVENT_BUS; do
  gateway_env+=("${name}_URLS=http://127.0.0.1:$UP")
done
# Access logs stay on (one JSON line per request), written to a file as in production.
env "${gateway_env[@]}" "$PY" -m cloudretail.runtime.gateway --routes "$ROOT/generated/gateway/routes.yaml" \
  --port "$GW" >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
PID_OF[gateway]=$!
TARGETS=(direct gateway nginx express)
if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  env "${gateway_env[@]}" REDIS_URL=redis://127.0.0.1:6379/14 "$PY" -m cloudretail.runtime.gateway \
    --routes "$ROOT/generated/gateway/routes.yaml" --port "$GWR" >"$WORK/gateway-redis.log" 2>&1 &
  PIDS+=($!)
  PID_OF[gateway+redis]=$!
  TARGETS+=(gateway+redis)
else
  echo "no Redis at 127.0.0.1:6379: gateway+redis skipped" >&2
fi

cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
daemon off;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx-body;
  proxy_temp_path $WORK/nginx-proxy;
  upstream app { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:$NGX;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
EOF
nginx -c "$WORK/nginx.conf" -p "$WORK" &
PIDS+=($!)
PID_OF[nginx]=$!
(cd "$WORK" && UPSTREAM="http://127.0.0.1:$UP" PORT=$EXP RATE_LIMIT=1000000000 exec \
  node express-gateway.js >"$WORK/express.log" 2>&1) &
PIDS+=($!)
PID_OF[express]=$!

url_of() {
  case $1 in
    direct) echo "http://127.0.0.1:$UP/api/orders" ;;
    gateway) echo "http://127.0.0.1:$GW/api/orders" ;;
    gateway+redis) echo "http://127.0.0.1:$GWR/api/orders" ;;
    nginx) echo "http://127.0.0.1:$NGX/api/orders" ;;
    express) echo "http://127.0.0.1:$EXP/api/orders" ;;
  esac
}
for target in "${TARGETS[@]}"; do
  wait_http "$(url_of "$target")"
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$(url_of "$target")")
  [ "$status" = 200 ] || { echo "$target answers $status, not 200" >&2; exit 1; }
done

# CPU time (user+sys, from /proc) of the proxy's processes (nginx: master and workers) per
# request: other load on a shared machine moves throughput far more than it moves this.
HZ=$(getconf CLK_TCK)
cpu_ticks() {
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

RESULTS=$WORK/results.tsv
for round in $(seq "$ROUNDS"); do
  for target in "${TARGETS[@]}"; do
    before=$(cpu_ticks "${PID_OF[$target]}")
    out=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
      -H "Authorization: Bearer $TOKEN" "$(url_of "$target")")
    after=$(cpu_ticks "${PID_OF[$target]}")
    count=$(awk '/requests in/ {print $1}' <<<"$out")
    cpu_us=$(( (after - before) * 1000000 / HZ / (count > 0 ? count : 1) ))
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    bad=$(awk '/Non-2xx/ {print $NF} /Socket errors/ {print "errors"}' <<<"$out" | tr '\n' ' ')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
      "$round" "$target" "$rps" "$p50" "$p99" "$cpu_us" "${bad:-}" >>"$RESULTS"
    printf 'round %s %-14s %10s req/s  p50 %-9s p99 %-9s %5s us CPU/req %s\n' \
      "$round" "$target" "$rps" "$p50" "$p99" "$cpu_us" "${bad:-}" >&2
  done
done

"$PY" - "$RESULTS" "${TARGETS[@]}" <<'EOF'
import statistics
import sys

def ms(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    raise ValueError(text)

rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
targets = sys.argv[2:]
medians = {}
for target in targets:
    mine = [row for row in rows if row[1] == target]
    medians[target] = (
        statistics.median(float(row[2]) for row in mine),
        statistics.median(ms(row[3]) for row in mine),
        statistics.median(ms(row[4]) for row in mine),
        statistics.median(int(row[5]) for row in mine),
        sum(1 for row in mine if row[6].strip()),
    )
direct = medians["direct"][0]
print(f"\nmedians of {len(rows) // len(targets)} interleaved rounds")
print(
    f"{'target':<14} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs direct':>9} "
    f"{'CPU us/req':>10}  rounds with errors"
)
for target, (rps, p50, p99, cpu, bad) in medians.items():
    print(
        f"{target:<14} {rps:>9.0f} {p50:>8.2f} {p99:>8.2f} {rps / direct:>8.2f}x "
        f"{cpu:>10}  {bad}"
    )
print("(CPU us/req: the proxy's own processes; for direct, the upstream's)")
if "express" in medians:
    gateway, express = medians["gateway"], medians["express"]
    print(f"\ngateway / express throughput: {gateway[0] / express[0]:.2f}x; "
          f"p99 {gateway[2]:.1f} ms vs {express[2]:.1f} ms")
EOF
