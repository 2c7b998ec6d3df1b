#!/usr/bin/env bash
# Side by side: two builds of tether, interleaved run by run, each run a
# fresh server; the load generator is always the second build's. Loopback
# only; every scenario bounded. Usage:
#   scripts/bench-ab.sh BEFORE_BIN AFTER_BIN [RUNS]
# JSON lines (with "build": "before"|"after"|"floor") go to ${OUT:-bench-ab.jsonl}.
set -u
BEFORE=$1 AFTER=$2 RUNS=${3:-3}
OUT=${OUT:-bench-ab.jsonl}
PORT=${PORT:-18700}
run() { # run label bin bench-args…
  local label=$1 bin=$2; shift 2
  $bin serve --addr 127.0.0.1:$PORT --rate-limit -1 --log-level warn & local pid=$!
  for _ in $(seq 50); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
  "$AFTER" bench "$@" --url ws://127.0.0.1:$PORT/ws --pid $pid 2>/dev/null | grep '^{' | sed "s/^{/{\"build\":\"$label\",/" | tee -a "$OUT"
  kill $pid; wait $pid 2>/dev/null
  sleep 0.5
}
for _ in $(seq "$RUNS"); do
  for b in before after; do
    bin=$BEFORE; [ $b = after ] && bin=$AFTER
    run $b "$bin" idle --conns 10000 --settle 3s
    run $b "$bin" fanout --conns 10000 --messages 100 --size 100
    run $b "$bin" fanout --conns 1000 --rate 200 --duration 10s
    run $b "$bin" rtt --conns 100 --duration 5s
  done
  "$AFTER" bench floor --conns 10000 --messages 20 --size 100 2>/dev/null | grep '^{' | sed 's/^{/{"build":"floor",/' | tee -a "$OUT"
done
