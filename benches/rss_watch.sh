#!/usr/bin/env bash
# Prints the newest `muster serve` process's RSS and peak RSS (MiB) once a second, with the
# seconds since start, until interrupted: run it beside a bench to see which phase peaks.
# Kill stale `muster serve` processes first, or it follows the wrong one.
#   benches/rss_watch.sh [pattern] > rss.log &
pattern=${1:-release/muster serve}
start=$(date +%s)
while sleep 1; do
  pid=$(pgrep -n -f "$pattern") || continue
  awk -v t=$(( $(date +%s) - start )) -v pid="$pid" '
    /^VmRSS/ {rss=$2} /^VmHWM/ {hwm=$2}
    END {if (rss) printf "%4ds pid %s rss %5d MiB peak %5d MiB\n", t, pid, rss/1024, hwm/1024}
  ' "/proc/$pid/status" 2>/dev/null
done
