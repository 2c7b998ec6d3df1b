#!/usr/bin/env bash
# Reproduces docs/benchmarks.md: every figure, a fresh server per run,
# three runs each. Loopback only. Prints the summary lines and appends the
# JSON lines to ${OUT:-bench-results.jsonl}.
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o bin/tether ./cmd/tether
OUT=${OUT:-bench-results.jsonl}
RUNS=${RUNS:-3}
PORT=18600

with_server() { # with_server "server args" bench-args…
  local sargs=$1; shift
  ./bin/tether serve --addr 127.0.0.1:$PORT --rate-limit -1 --log-level warn $sargs &
  local pid=$!
  for _ in $(seq 50); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
  ./bin/tether bench "$@" --url ws://127.0.0.1:$PORT/ws --pid $pid 2>/dev/null | tee -a /dev/stderr | grep '^{' >> "$OUT" || true
  kill $pid; wait $pid 2>/dev/null || true
  sleep 0.5
}

with_two_servers() { # with_two_servers bench-args…: two independent nodes, connections spread over both
  ./bin/tether serve --addr 127.0.0.1:$PORT --rate-limit -1 --log-level warn & local p1=$!
  ./bin/tether serve --addr 127.0.0.1:$((PORT+1)) --rate-limit -1 --log-level warn & local p2=$!
  for port in $PORT $((PORT+1)); do
    for _ in $(seq 50); do curl -sf http://127.0.0.1:$port/healthz >/dev/null && break; sleep 0.1; done
  done
  ./bin/tether bench "$@" --url ws://127.0.0.1:$PORT/ws,ws://127.0.0.1:$((PORT+1))/ws --pid $p1,$p2 2>/dev/null | tee -a /dev/stderr | grep '^{' >> "$OUT" || true
  kill $p1 $p2; wait $p1 $p2 2>/dev/null || true
  sleep 0.5
}

for i in $(seq $RUNS); do
  with_server "" idle --conns 10000 --settle 3s
  with_server "" idle --conns 19000 --settle 3s
  with_server "" fanout --conns 10000 --messages 100 --size 100
  ./bin/tether bench floor --conns 10000 --messages 20 --size 100 2>/dev/null | tee -a /dev/stderr | grep '^{' >> "$OUT"
  with_server "" fanout --conns 1000 --rate 200 --duration 10s
  with_server "--write-delay 0" fanout --conns 1000 --rate 200 --duration 10s
  with_server "" fanout --conns 10000 --rate 20 --duration 10s
  with_server "" fanout --conns 10000 --rate 40 --duration 10s
  with_server "" fanout --conns 1000 --rate 200 --duration 10s --frozen 1
  with_server "" rtt --conns 100 --duration 5s
  with_server "" direct --conns 1000 --rate 2000 --duration 5s
done
for rate in 60 80 100; do
  with_server "" fanout --conns 10000 --rate $rate --duration 10s
done
with_two_servers idle --conns 36000 --settle 3s
./bin/tether bench storm --conns 19000 2>/dev/null | tee -a /dev/stderr | grep '^{' >> "$OUT"
if command -v redis-server >/dev/null; then
  redis-server --port 16379 --save "" --appendonly no --daemonize no >/dev/null & rpid=$!
  sleep 0.5
  ./bin/tether bench storm --conns 19000 --server-args "--redis redis://127.0.0.1:16379/0" 2>/dev/null | tee -a /dev/stderr | grep '^{' >> "$OUT"
  kill $rpid; wait $rpid 2>/dev/null || true
fi
