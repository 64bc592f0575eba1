#!/usr/bin/env bash
# Kills the leader of the compose cluster in the middle of a job and measures what happens:
#   1. finds the leader (GET /readyz on each node), makes sure the group `all` exists, and starts
#      a job on every simulated device, 10% at a time (with devsim's default 1 s latency the job
#      takes about 10 s);
#   2. `docker kill`s the leader's container (SIGKILL) a few seconds into the job;
#   3. prints how long until a new leader was elected, until a write through a surviving node
#      was acknowledged, and until the job recorded device results again;
#   4. waits for the job to finish and checks every device has exactly one final outcome;
#   5. `docker start`s the killed node and prints how long until it followed the new leader and
#      acknowledged a write of its own (a write on a follower waits until that follower has
#      applied it, so this shows it caught up).
#
#   cd deploy/compose && docker-compose up -d && ./failover-demo.sh
#
# Needs bash, curl and docker. Ports and names are the compose file's defaults.
set -euo pipefail

PORTS=("${NODE1_REST_PORT:-8081}" "${NODE2_REST_PORT:-8082}" "${NODE3_REST_PORT:-8083}")
CONTAINER_PREFIX="${CONTAINER_PREFIX:-muster-node}"
V="api-version=2022-07-31"
JOB="failover-$(date +%s)"
KILL_AFTER="${KILL_AFTER:-3}"   # seconds into the job
# The nodes serve TLS with certificates from the cluster CA that the `certs` service made.
CA="${CA:-ca.pem}"
[ -f "$CA" ] || docker cp "${CONTAINER_PREFIX}1:/certs/ca.pem" "$CA"
curl() { command curl --cacert "$CA" "$@"; }

now_ms() { date +%s%3N; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.2f s", ms / 1000 }'; }
port_of() { echo "${PORTS[$(($1 - 1))]}"; }
readyz() { curl -s -m 1 "https://127.0.0.1:$1/readyz" || true; }
field() { sed -n "s/.*\"$1\":\([0-9a-z]*\).*/\1/p"; }
put() { # put PORT PATH BODY -> HTTP status
    curl -s -m 5 -o /dev/null -w '%{http_code}' -X PUT "https://127.0.0.1:$1$2?$V" \
        -H 'content-type: application/json' -d "$3" || echo 000
}
# The job's device outcomes, counted on the leader (reads are served by the leader only).
device_counts() { # PORT -> "completed failed other"
    local body
    body="$(curl -s -m 5 "https://127.0.0.1:$1/api/jobs/$JOB/devices?$V&maxpagesize=1000" || true)"
    local c f a
    c="$(grep -o '"status":"completed"' <<<"$body" | wc -l)"
    f="$(grep -o '"status":"failed"' <<<"$body" | wc -l)"
    a="$(grep -o '"status":"[a-z]*"' <<<"$body" | wc -l)"
    echo "$c $f $((a - c - f))"
}
job_status() { curl -s -m 5 "https://127.0.0.1:$1/api/jobs/$JOB?$V" | sed -n 's/.*"status":"\([a-z]*\)".*/\1/p'; }

# --- 1. the cluster and the job ---------------------------------------------------------------
LEADER=""
for i in 1 2 3; do
    r="$(readyz "$(port_of $i)")"
    [ -n "$r" ] || { echo "node$i does not answer on 127.0.0.1:$(port_of $i): is the cluster up?" >&2; exit 1; }
    LEADER="$(field leader <<<"$r")"
done
[ -n "$LEADER" ] || { echo "no leader known yet; retry in a few seconds" >&2; exit 1; }
LPORT="$(port_of "$LEADER")"
echo "leader: node$LEADER"

[ "$(put "$LPORT" /api/deviceGroups/all '{"displayName":"All devices","filter":"SELECT * FROM devices"}')" = 200 ] ||
    { echo "could not create the device group" >&2; exit 1; }
code="$(put "$LPORT" "/api/jobs/$JOB" '{"displayName":"Failover demo","group":"all",
  "batch":{"type":"percentage","value":10},
  "data":[{"type":"CommandJobData","target":"dtmi:muster:simulated;1","path":"reboot","value":{}}]}')"
[ "$code" = 200 ] || { echo "could not create job $JOB (HTTP $code)" >&2; exit 1; }
echo "job $JOB created; killing the leader in ${KILL_AFTER}s"
sleep "$KILL_AFTER"
read -r before_ok before_failed _ <<<"$(device_counts "$LPORT")"
echo "before the kill: $before_ok devices completed, $before_failed failed"

# --- 2. kill the leader -----------------------------------------------------------------------
T0="$(now_ms)"
docker kill "$CONTAINER_PREFIX$LEADER" >/dev/null
echo "docker kill $CONTAINER_PREFIX$LEADER"

SURVIVORS=()
for i in 1 2 3; do [ "$i" = "$LEADER" ] || SURVIVORS+=("$i"); done

# --- 3. election, first write, first result -----------------------------------------------------
NEW=""
while [ -z "$NEW" ]; do
    [ $(($(now_ms) - T0)) -lt 30000 ] || { echo "no new leader within 30 s" >&2; exit 1; }
    for i in "${SURVIVORS[@]}"; do
        r="$(readyz "$(port_of "$i")")"
        if [ "$(field isLeader <<<"$r")" = true ]; then NEW="$i"; break; fi
    done
    [ -n "$NEW" ] || sleep 0.02
done
T_ELECT="$(now_ms)"
NPORT="$(port_of "$NEW")"
echo "new leader: node$NEW after $(secs $((T_ELECT - T0)))"

# The write goes to the survivor that is NOT the leader: it is forwarded.
OTHER="${SURVIVORS[0]}"; [ "$OTHER" != "$NEW" ] || OTHER="${SURVIVORS[1]}"
until [ "$(put "$(port_of "$OTHER")" /api/deviceGroups/failover-probe '{"displayName":"written during failover","filter":"SELECT * FROM devices"}')" = 200 ]; do
    [ $(($(now_ms) - T0)) -lt 30000 ] || { echo "no write acknowledged within 30 s" >&2; exit 1; }
    sleep 0.02
done
T_WRITE="$(now_ms)"
echo "write through node$OTHER acknowledged after $(secs $((T_WRITE - T0)))"

while :; do
    read -r ok failed _ <<<"$(device_counts "$NPORT")"
    [ "$((ok + failed))" -gt "$((before_ok + before_failed))" ] && break
    [ "$(job_status "$NPORT")" = running ] || break
    [ $(($(now_ms) - T0)) -lt 60000 ] || { echo "the job made no progress within 60 s" >&2; exit 1; }
    sleep 0.05
done
T_RESULT="$(now_ms)"
echo "job recording device results again after $(secs $((T_RESULT - T0))) (includes the devices' own latency)"

# --- 4. the job finishes --------------------------------------------------------------------------
while [ "$(job_status "$NPORT")" = running ]; do sleep 0.5; done
read -r ok failed other <<<"$(device_counts "$NPORT")"
echo "job $JOB: $(job_status "$NPORT"); devices: $ok completed, $failed failed, $other other"

# --- 5. the killed node rejoins --------------------------------------------------------------------
docker start "$CONTAINER_PREFIX$LEADER" >/dev/null
T_START="$(now_ms)"
echo "docker start $CONTAINER_PREFIX$LEADER"
until r="$(readyz "$LPORT")" && [ "$(field leader <<<"$r")" = "$NEW" ] && [ "$(field isLeader <<<"$r")" = false ]; do
    [ $(($(now_ms) - T_START)) -lt 60000 ] || { echo "node$LEADER did not rejoin within 60 s" >&2; exit 1; }
    sleep 0.05
done
T_JOIN="$(now_ms)"
echo "node$LEADER follows node$NEW after $(secs $((T_JOIN - T_START)))"
until [ "$(put "$LPORT" /api/deviceGroups/failover-probe '{"displayName":"written through the rejoined node","filter":"SELECT * FROM devices"}')" = 200 ]; do
    [ $(($(now_ms) - T_START)) -lt 60000 ] || { echo "node$LEADER acknowledged no write within 60 s" >&2; exit 1; }
    sleep 0.05
done
echo "write through node$LEADER (caught up) acknowledged after $(secs $(($(now_ms) - T_START)))"

echo
echo "summary: leader node$LEADER killed; node$NEW elected in $(secs $((T_ELECT - T0))); first write $(secs $((T_WRITE - T0))); results again $(secs $((T_RESULT - T0))); job $ok/$((ok + failed + other)) completed; node$LEADER rejoined in $(secs $((T_JOIN - T_START)))"
