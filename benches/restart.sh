#!/usr/bin/env bash
# Restart time of a kept data directory (issue 14): copies DATA afresh for each run (sled writes
# its page-table snapshot when it opens, so only the first start after a long run pays for the
# history: each run must start from the same bytes), starts the node, and times it to serving
# reads (`muster job list` answers). Prints the store's restore line and the time of each run.
#
#   KEEP=/tmp/kept N=100000 JOBS=20 benches/cold_rss.sh      # makes a data directory to keep
#   DATA=/tmp/kept BIN=target/release/muster RUNS=3 benches/restart.sh
#
# The broker need not run: a node serves reads without it.
set -euo pipefail

BIN=${BIN:-target/release/muster}
DATA=${DATA:?DATA=a data directory kept by cold_rss.sh}
RUNS=${RUNS:-3}
GRPC_PORT=${GRPC_PORT:-19392}
HTTP_PORT=${HTTP_PORT:-19382}
WORK=$(mktemp -d /tmp/restart.XXXXXX)
NODE=
cleanup() {
  [ -n "$NODE" ] && kill "$NODE" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "binary=$BIN data=$DATA ($(du -sm "$DATA" | cut -f1) MB)"
for r in $(seq 1 "$RUNS"); do
  rm -rf "$WORK/data" && cp -a "$DATA" "$WORK/data"
  sync
  t0=$(( $(date +%s%N) / 1000000 ))
  "$BIN" serve --data-dir "$WORK/data" --grpc-addr 127.0.0.1:$GRPC_PORT --http-addr 127.0.0.1:$HTTP_PORT \
    --mqtt-url mqtt://127.0.0.1:1 --log warn,muster_store=info >"$WORK/node.log" 2>&1 &
  NODE=$!
  until "$BIN" job list --endpoint http://127.0.0.1:$GRPC_PORT --token "@$WORK/data/admin.credential" >/dev/null 2>&1; do
    kill -0 "$NODE" 2>/dev/null || { cat "$WORK/node.log"; exit 1; }
    sleep 0.05
  done
  ms=$(( $(date +%s%N) / 1000000 - t0 ))
  rss=$(awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$NODE/status")
  grep "opened the sled database" "$WORK/node.log" | tail -1 | sed 's/.*INFO //' || true
  grep "state machine restored" "$WORK/node.log" | tail -1 | sed 's/.*INFO //' || true
  echo "run=$r restart_to_serving_ms=$ms rss_mib=$rss"
  kill -TERM "$NODE"; wait "$NODE" 2>/dev/null || true
  NODE=
done
