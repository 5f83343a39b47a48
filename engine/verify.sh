#!/usr/bin/env bash
# engine/verify.sh - smoke-test moat's local service images against the engine.
#
# For each of postgres, mysql, redis: start the service on a private user-defined network, poll
# it from a second container on that network (the poll loop runs inside that client container,
# so no per-probe `docker exec` cost) and report the time from `docker run` until an
# authenticated query answers; then check that a wrong (or missing) password is refused.
# Also checks the contracts' edges: missing password -> clear error and exit 1, custom user,
# init scripts. Finally all three are started together and timed.
# Every container (with its anonymous volumes), network and temp dir it creates is removed on
# exit; images stay.
#   bash engine/verify.sh        (needs the engine and images: bash engine/ensure.sh)
set -Eeuo pipefail

PG=moat-test/postgres:latest MY=moat-test/mysql:latest RD=moat-test/redis:latest
id=moat-verify-$$
net=$id
tmp=$(mktemp -d /tmp/moat-verify.XXXXXX)
containers=()
failures=0

cleanup() {
    local c
    for c in "${containers[@]}"; do docker rm -f -v "$c" >/dev/null 2>&1 || true; done
    docker network rm "$net" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
dx() { timeout 30 docker exec "$@"; }  # docker exec that cannot hang the run
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
ok() { echo "  ok   $*"; }
bad() { echo "  FAIL $*"; failures=$((failures + 1)); }

run() { # run NAME ARGS... : docker run -d on the network, remembered for cleanup
    local name=$1; shift
    containers+=("$name")
    docker run -d --name "$name" --network "$net" "$@" >/dev/null
}

# wait_in CLIENT TIMEOUT CMD : run CMD in the client until it succeeds (every 50 ms)
wait_in() {
    local client=$1 timeout=$2 cmd=$3
    timeout $((timeout + 10)) docker exec "$client" bash -c "end=\$((SECONDS + $timeout)); until $cmd >/dev/null 2>&1; do
        [ \$SECONDS -lt \$end ] || exit 1; sleep 0.05; done"
}

# pid1 NAME : "user command" of the container's PID 1 (the images have no ps)
pid1() { dx "$1" sh -c 'echo "$(stat -c %U /proc/1) $(cat /proc/1/comm)"'; }

# expect_exit NAME : wait for a container to exit; prints its exit code
expect_exit() { timeout 30 docker wait "$1" 2>/dev/null || echo timeout; }

docker network create "$net" >/dev/null
echo "verify: network $net"

# Client containers first, so their start-up is not part of the measured times.
run "$id-pgc" --entrypoint sleep "$PG" infinity
run "$id-myc" --entrypoint sleep "$MY" infinity
run "$id-rdc" --entrypoint sleep "$RD" infinity

# ------------------------------------------------------------------ postgres
echo "postgres ($PG)"
pg=$id-pg
t0=$(now)
run "$pg" -e POSTGRES_PASSWORD=secret -e POSTGRES_DB=app "$PG"
if wait_in "$id-pgc" 30 "psql 'postgresql://postgres:secret@$pg:5432/app?connect_timeout=2' -Atc 'select 1'"; then
    ok "answered 'select 1' (authenticated, db app) $(secs "$t0") s after docker run"
else
    bad "no answer within 30 s"; docker logs "$pg" 2>&1 | tail -20
fi
out=$(dx "$id-pgc" psql "postgresql://postgres:secret@$pg:5432/app" -c 'select 1' 2>&1) &&
    ok "psql postgresql://postgres:secret@$pg:5432/app -c 'select 1' -> $(echo "$out" | tr -s ' \n' ' ')" ||
    bad "psql select 1: $out"
out=$(dx "$id-pgc" psql "postgresql://postgres:wrong@$pg:5432/app" -c 'select 1' 2>&1) &&
    bad "wrong password accepted" || {
    [[ $out == *"password authentication failed"* ]] && ok "wrong password rejected: ${out##*FATAL:  }" || bad "wrong password: unexpected: $out"; }
out=$(dx "$id-pgc" pg_isready -h "$pg" -p 5432 2>&1) && ok "pg_isready: $out" || bad "pg_isready: $out"
[ "$(pid1 "$pg")" = "postgres postgres" ] && ok "server runs as user postgres" || bad "server not running as postgres"

pg2=$id-pg-nopw
run "$pg2" "$PG"
rc=$(expect_exit "$pg2")
log=$(docker logs "$pg2" 2>&1 | tail -n 3)
[ "$rc" = 1 ] && [[ $log == *"POSTGRES_PASSWORD"* ]] && ok "without POSTGRES_PASSWORD: exit 1, log: ${log:0:110}..." || bad "no password: rc=$rc log=$log"

mkdir -p "$tmp/pginit" && chmod 755 "$tmp/pginit"
printf 'create table seeded (id int); insert into seeded values (42);\n' >"$tmp/pginit/01-seed.sql"
printf 'echo "init script ran as $(id -un) for $POSTGRES_DB" >&2\n' >"$tmp/pginit/02-hello.sh"
chmod 644 "$tmp/pginit"/*
pg3=$id-pg-init
run "$pg3" -e POSTGRES_PASSWORD='p@ss w0rd' -e POSTGRES_USER=alice -v "$tmp/pginit:/docker-entrypoint-initdb.d:ro" "$PG"
if wait_in "$id-pgc" 30 "PGPASSWORD='p@ss w0rd' psql -h $pg3 -U alice -d alice -Atc 'select id from seeded'"; then
    v=$(dx -e PGPASSWORD='p@ss w0rd' "$id-pgc" psql -h "$pg3" -U alice -d alice -Atc 'select id from seeded')
    [ "$v" = 42 ] && ok "POSTGRES_USER=alice (db alice), init .sql + .sh ran: seeded=$v" || bad "init script result $v"
else
    bad "custom user/init scripts: no answer"; docker logs "$pg3" 2>&1 | tail -20
fi

# ------------------------------------------------------------------ mysql (MariaDB)
echo "mysql ($MY)"
my=$id-my
t0=$(now)
run "$my" -e MYSQL_ROOT_PASSWORD=secret -e MYSQL_DATABASE=app "$MY"
if wait_in "$id-myc" 30 "mysql --connect-timeout=2 -h $my -uroot -psecret -e 'select 1' app"; then
    ok "answered 'select 1' (root@%, db app) $(secs "$t0") s after docker run"
else
    bad "no answer within 30 s"; docker logs "$my" 2>&1 | tail -20
fi
out=$(dx "$id-myc" mysql -h "$my" -uroot -psecret -e 'select 1' app 2>&1) &&
    ok "mysql -h $my -uroot -psecret -e 'select 1' app -> $(echo "$out" | tr '\n' ' ')" || bad "mysql select 1: $out"
out=$(dx "$id-myc" mysql -h "$my" -uroot -pwrong -e 'select 1' app 2>&1) &&
    bad "wrong password accepted" || {
    [[ $out == *"Access denied"* ]] && ok "wrong password rejected: $out" || bad "wrong password: unexpected: $out"; }
out=$(dx "$id-myc" mysqladmin --connect-timeout=5 -h "$my" -uroot -psecret ping 2>&1) && ok "mysqladmin ping: $out" || bad "mysqladmin ping: $out"
[ "$(pid1 "$my")" = "mysql mariadbd" ] && ok "server runs as user mysql" || bad "server not running as mysql"

my2=$id-my-nopw
run "$my2" "$MY"
rc=$(expect_exit "$my2")
log=$(docker logs "$my2" 2>&1 | tail -n 3)
[ "$rc" = 1 ] && [[ $log == *"MYSQL_ROOT_PASSWORD"* ]] && ok "without a password option: exit 1, log: ${log:0:110}..." || bad "no password: rc=$rc log=$log"

mkdir -p "$tmp/myinit" && chmod 755 "$tmp/myinit"
printf 'create table seeded (id int);\ninsert into seeded values (42);\n' >"$tmp/myinit/01-seed.sql"
printf 'echo "init script ran for $MYSQL_DATABASE" >&2\n' >"$tmp/myinit/02-hello.sh"
chmod 644 "$tmp/myinit"/*
my3=$id-my-init
run "$my3" -e MYSQL_ROOT_PASSWORD="it's \\ secret" -e MYSQL_DATABASE=shop -e MYSQL_USER=bob -e MYSQL_PASSWORD=bobpw \
    -v "$tmp/myinit:/docker-entrypoint-initdb.d:ro" "$MY"
if wait_in "$id-myc" 30 "mysql --connect-timeout=2 -h $my3 -ubob -pbobpw -e 'select id from seeded' shop"; then
    v=$(dx "$id-myc" mysql -h "$my3" -ubob -pbobpw -N -e 'select id from seeded' shop)
    [ "$v" = 42 ] && ok "MYSQL_USER=bob on MYSQL_DATABASE=shop, init .sql + .sh ran: seeded=$v" || bad "init result $v"
    dx "$id-myc" mysql -h "$my3" -uroot -p"it's \\ secret" -N -e 'select 1' >/dev/null 2>&1 &&
        ok "root password with quote and backslash works" || bad "root password with special characters"
else
    bad "custom user/init scripts: no answer"; docker logs "$my3" 2>&1 | tail -20
fi

# ------------------------------------------------------------------ redis
echo "redis ($RD)"
rd=$id-rd
t0=$(now)
run "$rd" "$RD" redis-server --requirepass secret
if wait_in "$id-rdc" 30 "redis-cli -h $rd -a secret --no-auth-warning ping | grep -qx PONG"; then
    ok "answered PING (authenticated) $(secs "$t0") s after docker run"
else
    bad "no answer within 30 s"; docker logs "$rd" 2>&1 | tail -20
fi
out=$(dx "$id-rdc" redis-cli -h "$rd" -a secret --no-auth-warning ping 2>&1)
[ "$out" = PONG ] && ok "redis-cli -h $rd -a secret ping -> $out" || bad "ping with password: $out"
out=$(dx "$id-rdc" redis-cli -h "$rd" ping 2>&1 || true)
[[ $out == *NOAUTH* ]] && ok "without password: $out" || bad "without password: $out"
out=$(dx "$id-rdc" redis-cli -h "$rd" -a wrong --no-auth-warning ping 2>&1 || true)
[[ $out == *WRONGPASS* ]] && ok "wrong password: $out" || bad "wrong password: $out"
[ "$(pid1 "$rd")" = "redis redis-server" ] && ok "server runs as user redis" || bad "server not running as redis"
rd2=$id-rd-default
run "$rd2" "$RD"
if wait_in "$id-rdc" 15 "redis-cli -h $rd2 ping | grep -qx PONG"; then
    ok "default CMD (no password) answers PING from another container (protected mode off)"
else
    bad "default CMD: $(dx "$id-rdc" redis-cli -h "$rd2" ping 2>&1)"
fi

# ------------------------------------------------------------------ all three at once
echo "all three started together"
t0=$(now)
run "$id-all-pg" -e POSTGRES_PASSWORD=secret -e POSTGRES_DB=app "$PG"
run "$id-all-my" -e MYSQL_ROOT_PASSWORD=secret -e MYSQL_DATABASE=app "$MY"
run "$id-all-rd" "$RD" redis-server --requirepass secret
t_started=$(secs "$t0")
wait_in "$id-pgc" 30 "psql 'postgresql://postgres:secret@$id-all-pg:5432/app?connect_timeout=2' -Atc 'select 1'" & p1=$!
wait_in "$id-myc" 30 "mysql --connect-timeout=2 -h $id-all-my -uroot -psecret -e 'select 1' app" & p2=$!
wait_in "$id-rdc" 30 "redis-cli -h $id-all-rd -a secret --no-auth-warning ping | grep -qx PONG" & p3=$!
if wait $p1 && wait $p2 && wait $p3; then
    ok "all three answered $(secs "$t0") s after the first docker run (the three docker runs took ${t_started} s)"
else
    bad "not all answered"
fi

echo
if [ $failures -eq 0 ]; then echo "verify: all checks passed"; else echo "verify: $failures check(s) FAILED"; exit 1; fi
