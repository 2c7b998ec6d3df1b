#!/usr/bin/env bash
# Issue #21's table, side by side: the build BEFORE through Redis, the
# build AFTER through Redis and AFTER in memory, interleaved run by run,
# each run a fresh node and a fresh redis-server; the load generator is
# always AFTER's. Loopback only; every scenario bounded. Usage:
#   scripts/bench-redis-ab.sh BEFORE_BIN AFTER_BIN [RUNS]
# BEFORE_JOIN=command: BEFORE cannot take its rooms in the URL (builds
# before issue #21), so its connections join by command.
# JSON lines (with "build": "before-redis"|"after-redis"|"after-memory")
# go to ${OUT:-bench-redis-ab.jsonl}.
set -u
BEFORE=$1 AFTER=$2 RUNS=${3:-3}
OUT=${OUT:-bench-redis-ab.jsonl}
PORT=${PORT:-18740} RPORT=${RPORT:-16440}
run() { # label bin engine bench-args…
  local label=$1 bin=$2 engine=$3; shift 3
  redis-server --port "$RPORT" --save "" --appendonly no >/dev/null & local rpid=$!
  for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  local redis=(--redis "redis://127.0.0.1:$RPORT/0")
  [ "$engine" = memory ] && redis=()
  "$bin" serve --addr "127.0.0.1:$PORT" --rate-limit -1 --log-level warn "${redis[@]}" & local pid=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
  "$AFTER" bench "$@" --url "ws://127.0.0.1:$PORT/ws" --pid "$pid" --redis "127.0.0.1:$RPORT" 2>/dev/null |
    grep '^{' | sed "s/^{/{\"build\":\"$label-$engine\",/" | tee -a "$OUT"
  kill "$pid"; wait "$pid" 2>/dev/null
  kill "$rpid"; wait "$rpid" 2>/dev/null
  sleep 0.5
}
for _ in $(seq "$RUNS"); do
  for cfg in before-redis after-redis after-memory; do
    label=${cfg%-*} engine=${cfg#*-} bin=$AFTER join=--join-at-connect
    if [ "$label" = before ]; then
      bin=$BEFORE
      [ "${BEFORE_JOIN:-url}" = command ] && join=
    fi
    run "$label" "$bin" "$engine" idle --conns 10000 --settle 3s $join
    run "$label" "$bin" "$engine" fanout --conns 10000 --messages 100 --size 100
    run "$label" "$bin" "$engine" fanout --conns 10000 --rate 40 --duration 10s --publishers 1
  done
done
