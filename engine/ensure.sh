#!/usr/bin/env bash
# engine/ensure.sh - make sure a Docker engine answers and moat's local test images exist.
#
# Called by `make engine`, `make test` and `make demo`. Idempotent: a second run with
# nothing changed only checks and takes a few seconds. Loud on failure (exit 1 with the
# reason and, where there is one, the tail of the relevant log).
#
#   bash engine/ensure.sh                 # engine + all images
#   bash engine/ensure.sh --force redis   # extra arguments go to build_images.py
#   MOAT_ENGINE_SKIP_IMAGES=1 bash engine/ensure.sh   # engine only
#
# Step 1, engine: if `docker info` answers (DOCKER_HOST or /var/run/docker.sock), use it.
# Otherwise install Debian's docker.io if dockerd is missing and start dockerd by hand
# (these machines have no systemd), detached, logging to /var/log/moat-dockerd.log, its PID
# in /run/moat-dockerd.pid. engine/stop.sh stops that dockerd and nothing else.
# Step 2, images: engine/build_images.py (base debian:bookworm-slim + engine/images/*).
set -Eeuo pipefail

ENGINE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOCK_PATH=/var/run/docker.sock
DOCKERD_LOG=${MOAT_DOCKERD_LOG:-/var/log/moat-dockerd.log}
DOCKERD_PIDFILE=${MOAT_DOCKERD_PIDFILE:-/run/moat-dockerd.pid}
START_TIMEOUT=${MOAT_DOCKERD_START_TIMEOUT:-30}
APT_LOG=/var/log/moat-engine-apt.log

trap 'rc=$?; echo "engine: FAILED (line $LINENO: $BASH_COMMAND, exit $rc)" >&2; exit $rc' ERR

die() { echo "engine: ERROR: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

# Is $1 a live process whose executable is dockerd?
is_dockerd_pid() {
    local pid=$1
    [[ $pid =~ ^[0-9]+$ ]] && [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] &&
        ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

show_log_tail() {
    if [ -s "$DOCKERD_LOG" ]; then
        echo "engine: last 40 lines of $DOCKERD_LOG:" >&2
        tail -n 40 "$DOCKERD_LOG" | sed 's/^/    /' >&2
    fi
}

# apt-get install, running `apt-get update` only when the package lists lack a candidate or
# the install fails (stale lists). Services are kept from starting during the install
# (policy-rc.d), which only matters on a machine whose policy-rc.d we had to create.
apt_install() {
    local made_policy=0 pkg need_update=0
    [ "$(id -u)" = 0 ] || die "need root to apt-get install $*"
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
    fi
    for pkg in "$@"; do
        # (no `| grep -q` here: with pipefail an early-exiting grep makes the pipeline fail)
        case "$(apt-cache policy "$pkg" 2>/dev/null)" in
            *"Candidate: ("* | "") need_update=1 ;;
        esac
    done
    if [ $need_update = 1 ]; then
        echo "engine: apt-get update (no candidate for $* in the current lists)"
        apt-get update >>"$APT_LOG" 2>&1 || { tail -n 20 "$APT_LOG" >&2; die "apt-get update failed (log: $APT_LOG)"; }
    fi
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >>"$APT_LOG" 2>&1; then
        echo "engine: apt-get install $* failed; running apt-get update and retrying"
        apt-get update >>"$APT_LOG" 2>&1 || true
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >>"$APT_LOG" 2>&1; then
            [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
            tail -n 20 "$APT_LOG" >&2
            die "apt-get install $* failed (log: $APT_LOG)"
        fi
    fi
    [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
    return 0
}

ensure_engine() {
    local t0 pid started=""
    t0=$(now)
    command -v docker >/dev/null || die "no docker client on PATH"
    if engine_answers; then
        echo "engine: answering at ${DOCKER_HOST:-unix://$SOCK_PATH} (already running) [$(since "$t0")]"
        return 0
    fi
    if [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != "unix://$SOCK_PATH" ] && [ "$DOCKER_HOST" != unix:///run/docker.sock ]; then
        die "DOCKER_HOST=$DOCKER_HOST does not answer 'docker info'; start that engine, or unset DOCKER_HOST to let this script start a local dockerd at unix://$SOCK_PATH"
    fi
    [ "$(id -u)" = 0 ] || die "no engine answers at unix://$SOCK_PATH and starting one needs root"

    if ! command -v dockerd >/dev/null; then
        local ti; ti=$(now)
        echo "engine: installing Debian's docker.io ..."
        apt_install docker.io
        command -v dockerd >/dev/null || die "docker.io installed but dockerd is not on PATH"
        echo "engine: installed docker.io ($(dockerd --version 2>/dev/null | head -n1)) [$(since "$ti")]"
    fi

    pid=$(cat "$DOCKERD_PIDFILE" 2>/dev/null || true)
    if is_dockerd_pid "$pid"; then
        echo "engine: our dockerd (pid $pid from $DOCKERD_PIDFILE) is running but not answering yet; waiting"
        started="our dockerd pid $pid, already running"
    else
        [ -n "$pid" ] && { echo "engine: removing stale $DOCKERD_PIDFILE (pid $pid is not a dockerd)"; rm -f "$DOCKERD_PIDFILE"; }
        # A dockerd we did not start: never touch it, and don't start a second one beside it.
        local other
        other=""
        for p in $(pgrep -x dockerd 2>/dev/null || true); do
            is_dockerd_pid "$p" && other+="$p "   # (zombies of a just-stopped dockerd don't count)
        done
        if [ -n "$other" ]; then
            die "a dockerd not started by this script is running (pid $other) but does not answer at unix://$SOCK_PATH; fix or stop it yourself"
        fi
        mkdir -p "$(dirname "$DOCKERD_LOG")" "$(dirname "$DOCKERD_PIDFILE")"
        echo "==== $(date -u '+%F %T UTC') engine/ensure.sh starting dockerd ====" >>"$DOCKERD_LOG"
        # setsid+nohup: detached from this shell's session, so it outlives `make`.
        # The subshell exits at once, so dockerd is re-parented to init and never left a zombie of ours.
        (
            setsid nohup dockerd \
                -H "unix://$SOCK_PATH" \
                --iptables=false --ip-masq=false \
                --storage-driver overlay2 \
                --default-ulimit nofile=20000:20000 \
                --default-ulimit nproc=32768:32768 \
                </dev/null >>"$DOCKERD_LOG" 2>&1 9>&- &
            echo $! >"$DOCKERD_PIDFILE"
        )
        pid=$(cat "$DOCKERD_PIDFILE")
        started="started dockerd pid $pid"
    fi

    local deadline
    deadline=$(awk -v a="$(now)" -v t="$START_TIMEOUT" 'BEGIN { printf "%d", a + t }')
    while :; do
        if DOCKER_HOST="unix://$SOCK_PATH" timeout 5 docker info >/dev/null 2>&1; then
            break
        fi
        if ! is_dockerd_pid "$pid"; then
            show_log_tail
            rm -f "$DOCKERD_PIDFILE"
            die "dockerd (pid $pid) exited before its API answered"
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            show_log_tail
            die "dockerd (pid $pid) did not answer at unix://$SOCK_PATH within ${START_TIMEOUT}s (left running; stop it with engine/stop.sh)"
        fi
        sleep 0.2
    done
    echo "engine: answering at unix://$SOCK_PATH ($started) [$(since "$t0")]"
}

# One ensure.sh at a time (parallel make targets, several shells): the rest wait here. The lock
# is held on fd 9 until this script and build_images.py exit (dockerd is started with 9>&-).
LOCK_FILE=${MOAT_ENGINE_LOCK:-/run/moat-engine.lock}
if { exec 9>>"$LOCK_FILE"; } 2>/dev/null; then
    if ! flock -n 9; then
        echo "engine: another engine/ensure.sh holds $LOCK_FILE; waiting for it"
        flock 9
    fi
fi

ensure_engine

if [ -n "${MOAT_ENGINE_SKIP_IMAGES:-}" ]; then
    echo "images: skipped (MOAT_ENGINE_SKIP_IMAGES is set)"
    exit 0
fi

PY=$(command -v python3 || true)
[ -n "$PY" ] || PY=/usr/bin/python3
[ -x "$PY" ] || die "python3 not found (needed for engine/build_images.py)"
exec "$PY" "$ENGINE_DIR/build_images.py" "$@"
