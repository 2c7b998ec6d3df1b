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

for i in $(seq $RUNS); do
  with_server "" idle --conns 10000 --settle 3s
  with_server "" fanout --conns 10000 --messages 100 --size 100
  ./bin/tether bench floor --conns 10000 --messages 20 --size 100 2>/dev/null | tee -a /dev/stderr | grep '^{' >> "$OUT"
  with_server "" fanout --conns 1000 --rate 200 --duration 10s
  with_server "" fanout --conns 10000 --rate 20 --duration 10s
  with_server "" fanout --conns 1000 --rate 200 --duration 10s --frozen 1
  with_server "" rtt --conns 100 --duration 5s
  with_server "" direct --conns 1000 --rate 2000 --duration 5s
done
with_server "" fanout --conns 10000 --rate 50 --duration 10s
with_server "" fanout --conns 10000 --rate 100 --duration 10s
./bin/tether bench storm --conns 10000 2>/dev/null | tee -a /dev/stderr | grep '^{' >> "$OUT"
