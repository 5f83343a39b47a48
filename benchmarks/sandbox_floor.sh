#!/bin/sh
# The sandbox's multi-service floor: the host's own postgres, mariadb and redis started in parallel by
# a shell script, data in memory (/dev/shm), fsync off, each waited for with its own client every 10 ms;
# then `true`; then each stopped. No namespaces, no records, no credentials: only what the job needs.
#
#   sandbox_floor.sh cold            initialise each service's data, as a first run must
#   sandbox_floor.sh warm SEED_DIR   copy data initialised once into SEED_DIR (`sandbox_floor.sh seed
#                                    SEED_DIR` makes it), as moat's warm templates do
#
# Run it as the user the services run as (never root: postgres refuses).
set -eu
mode=${1:?cold, warm SEED_DIR or seed SEED_DIR}
seed=${2:-}
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
work=$(mktemp -d /dev/shm/moat-floor.XXXXXX)
pids=""
stop() {
    # Throwaway data: killed, as moat's sandbox kills its services' namespaces. (Not waited for: the
    # servers are not this shell's children, and a zombie answers `kill -0` until init reaps it.)
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap stop EXIT

init_postgres() {
    "$PG_BIN/initdb" -D "$1/pg" -U postgres --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
}
init_mariadb() {
    mariadb-install-db --no-defaults --datadir="$1/my" --rpm --cross-bootstrap --skip-test-db \
        --auth-root-authentication-method=normal --skip-name-resolve --disable-log-bin >/dev/null 2>&1
}

if [ "$mode" = seed ]; then
    mkdir -p "$seed"
    init_postgres "$seed" &
    init_mariadb "$seed" &
    wait
    exit 0
fi

start_postgres() {
    if [ "$mode" = warm ]; then cp -a "$seed/pg" "$work/pg"; else init_postgres "$work"; fi
    "$PG_BIN/postgres" -D "$work/pg" -h '' -k "$work" -c fsync=off -c full_page_writes=off \
        -c synchronous_commit=off >"$work/pg.log" 2>&1 &
    echo $! >"$work/pg.pid"
}
start_mariadb() {
    if [ "$mode" = warm ]; then cp -a "$seed/my" "$work/my"; else init_mariadb "$work"; fi
    mariadbd --no-defaults --datadir="$work/my" --socket="$work/my.sock" --skip-networking \
        --skip-log-bin --pid-file="$work/my.pid" --innodb-buffer-pool-size=32M >"$work/my.log" 2>&1 &
    echo $! >"$work/my.srv"
}

start_postgres &
start_mariadb &
redis-server --port 0 --unixsocket "$work/redis.sock" --save '' --appendonly no >/dev/null &
pids="$!"
wait_for() {
    until "$@" >/dev/null 2>&1; do sleep 0.01; done
}
wait_for test -s "$work/pg.pid"
wait_for test -s "$work/my.srv"
pids="$pids $(cat "$work/pg.pid") $(cat "$work/my.srv")"
wait_for psql -X -h "$work" -U postgres -d postgres -tAc 'SELECT 1' &
w1=$!
wait_for mysql --socket="$work/my.sock" -u root -N -B -e 'SELECT 1' &
w2=$!
wait_for redis-cli -s "$work/redis.sock" ping &
w3=$!
wait $w1 $w2 $w3
true
