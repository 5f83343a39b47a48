#!/usr/bin/env bash
# engine/stop.sh - stop the dockerd that engine/ensure.sh started, and only that one:
# the process whose PID is in /run/moat-dockerd.pid, if it still is a dockerd.
# dockerd stops its containers and its own containerd on SIGTERM; we wait for it to exit.
#   bash engine/stop.sh [--timeout SECONDS]
set -euo pipefail
PIDFILE=${MOAT_DOCKERD_PIDFILE:-/run/moat-dockerd.pid}
TIMEOUT=60
if [ "${1:-}" = --timeout ]; then TIMEOUT=${2:?--timeout needs a number}; fi

if [ ! -e "$PIDFILE" ]; then
    echo "engine: no $PIDFILE; nothing of ours to stop"
    exit 0
fi
pid=$(cat "$PIDFILE")
if ! [[ $pid =~ ^[0-9]+$ ]] || [ ! -d "/proc/$pid" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != dockerd ]; then
    echo "engine: pid '$pid' from $PIDFILE is not a running dockerd; removing the stale pid file"
    rm -f "$PIDFILE"
    exit 0
fi
t0=$(date +%s.%N)
echo "engine: stopping dockerd pid $pid (SIGTERM)"
kill -TERM "$pid"
for _ in $(seq $((TIMEOUT * 5))); do
    { [ -d "/proc/$pid" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; } || break
    sleep 0.2
done
if [ -d "/proc/$pid" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; then
    echo "engine: ERROR: dockerd pid $pid still running after ${TIMEOUT}s; not killing it harder (kill -KILL $pid yourself if you must)" >&2
    exit 1
fi
rm -f "$PIDFILE"
echo "engine: dockerd pid $pid stopped [$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }')]"
