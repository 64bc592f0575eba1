#!/usr/bin/env bash
# RSS, data-directory size and restart time as finished method jobs pile up (issue 14, "hot and
# cold state"). One node, a Mosquitto broker, `muster devsim`; every job calls a method on every
# device and finishes. Prints one line per finished job, then the restart.
#
#   benches/cold_rss.sh                       # target/release/muster, 50,000 devices, 10 jobs
#   BIN=target/debug/muster N=10000 JOBS=5 MQTT_PORT=18834 benches/cold_rss.sh
#   KEEP=/tmp/kept N=100000 JOBS=20 benches/cold_rss.sh    # keeps the data dir before the restart
#
# Needs `mosquitto` on PATH (started here on MQTT_PORT unless MQTT_URL is given).
set -euo pipefail

BIN=${BIN:-target/release/muster}
N=${N:-50000}
JOBS=${JOBS:-10}
MQTT_PORT=${MQTT_PORT:-18834}
GRPC_PORT=${GRPC_PORT:-19390}
HTTP_PORT=${HTTP_PORT:-19380}
WORK=$(mktemp -d /tmp/cold-rss.XXXXXX)
DATA=$WORK/data
EP=http://127.0.0.1:$GRPC_PORT
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ -z "${MQTT_URL:-}" ]; then
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n' "$MQTT_PORT" >"$WORK/mq.conf"
  mosquitto -c "$WORK/mq.conf" >"$WORK/mq.log" 2>&1 &
  PIDS+=($!)
  MQTT_URL=mqtt://127.0.0.1:$MQTT_PORT
  sleep 0.5
fi

rss_mib() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
# Peak RSS so far: what a running job's hot rows cost shows here, before they spill.
hwm_mib() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
du_mib() { du -sm "$DATA" | cut -f1; }

start_node() {
  "$BIN" serve --data-dir "$DATA" --grpc-addr 127.0.0.1:$GRPC_PORT --http-addr 127.0.0.1:$HTTP_PORT \
    --mqtt-url "$MQTT_URL" --log warn,muster_store=info >>"$WORK/node.log" 2>&1 &
  NODE=$!
  PIDS+=($NODE)
}

wait_serving() {
  local t0=$1
  until "$BIN" job list --endpoint "$EP" --token "@$DATA/admin.credential" >/dev/null 2>&1; do
    sleep 0.05
  done
  echo "$(( $(date +%s%N) / 1000000 - t0 ))"
}

t0=$(( $(date +%s%N) / 1000000 ))
start_node
wait_serving "$t0" >/dev/null
export MUSTER_TOKEN=@$DATA/admin.credential
"$BIN" devsim --broker "$MQTT_URL" --devices "$N" --register "$EP" >"$WORK/devsim.log" 2>&1 &
PIDS+=($!)
until grep -q "ready" "$WORK/devsim.log" 2>/dev/null; do sleep 0.5; done
until [ "$("$BIN" query --endpoint "$EP" "SELECT COUNT() AS n FROM devices WHERE connectionState = 'Connected'" --output json 2>/dev/null | grep -o '"n": *[0-9]*' | grep -o '[0-9]*$' || echo 0)" -ge "$N" ]; do
  sleep 1
done
echo "binary=$BIN devices=$N"
echo "jobs_finished rss_mib peak_rss_mib data_mib job_secs"
echo "0 $(rss_mib "$NODE") $(hwm_mib "$NODE") $(du_mib) -"
for j in $(seq 1 "$JOBS"); do
  s=$(date +%s)
  "$BIN" job create "rss-$j" --endpoint "$EP" --method reboot --query "SELECT * FROM devices" --response-timeout 30 >/dev/null
  "$BIN" job watch "rss-$j" --endpoint "$EP" >/dev/null || true
  echo "$j $(rss_mib "$NODE") $(hwm_mib "$NODE") $(du_mib) $(( $(date +%s) - s ))"
done

# Snapshot builds over the jobs: how many, their mean and longest time, the last file's size.
{ grep "built a snapshot" "$WORK/node.log" || true; } | awk '
  { for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "total_ms") { t = kv[2]; s += t; if (t > m) m = t }
    if (kv[1] == "bytes") b = kv[2] } n++ }
  END { if (n) printf "snapshots=%d mean_build_ms=%.0f max_build_ms=%d last_snapshot_mib=%.0f\n", n, s / n, m, b / 1048576 }'

kill -TERM "$NODE"
wait "$NODE" 2>/dev/null || true
# KEEP=dir: a copy of the stopped node's data directory, to time restarts of it again later.
if [ -n "${KEEP:-}" ]; then
  rm -rf "$KEEP" && cp -a "$DATA" "$KEEP"
fi
t0=$(( $(date +%s%N) / 1000000 ))
start_node
# PERF=1: a CPU profile of the restart (perf on PATH), its top functions printed at the end.
if [ -n "${PERF:-}" ]; then
  perf record -F 199 -g -p "$NODE" -o "$WORK/perf.data" >/dev/null 2>&1 &
  PERF_PID=$!
fi
ms=$(wait_serving "$t0")
if [ -n "${PERF:-}" ]; then
  kill -TERM "$PERF_PID"; wait "$PERF_PID" 2>/dev/null || true
  perf report -i "$WORK/perf.data" --no-children --sort dso,sym -g none --stdio --percent-limit 1.5 2>/dev/null | grep -E '^ +[0-9]' | head -25
fi
grep "state machine restored" "$WORK/node.log" | tail -1 || true
echo "restart_to_serving_ms=$ms rss_after_restart_mib=$(rss_mib "$NODE") data_mib=$(du_mib)"
