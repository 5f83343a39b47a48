#!/usr/bin/env bash
# moat-test/mysql entrypoint: the official mysql/mariadb images' contract, on Debian's MariaDB 10.11.
#
#   MYSQL_ROOT_PASSWORD         root password (root@localhost and root@'%' / MYSQL_ROOT_HOST)
#   MYSQL_ALLOW_EMPTY_PASSWORD  =yes: root without a password
#   MYSQL_RANDOM_ROOT_PASSWORD  =yes: random root password, printed as "GENERATED ROOT PASSWORD: ..."
#     (one of these three is required on first start)
#   MYSQL_ROOT_HOST             host part of the remote root account (default %)
#   MYSQL_DATABASE              database created on first start
#   MYSQL_USER, MYSQL_PASSWORD  user created on first start, with all rights on MYSQL_DATABASE
#   MARIADB_* names are accepted as well (MARIADB_ALLOW_EMPTY_ROOT_PASSWORD, ...), and *_FILE
#   variants read a value from a file.
#   /docker-entrypoint-initdb.d/*.sh, *.sql, *.sql.gz, *.sql.xz  run once, on first start
# Listens on 0.0.0.0:3306; runs mariadbd as the mysql user.
set -Eeuo pipefail

log() { printf '%s [entrypoint] %s\n' "$(date -u '+%F %T UTC')" "$*"; }
fail() { log "ERROR: $*" >&2; exit 1; }

# file_env NAME [DEFAULT]: sets MYSQL_NAME from MYSQL_NAME, MARIADB_NAME or their *_FILE variants.
file_env() {
    local name=$1 v val
    val=${2:-}
    for v in "MYSQL_$name" "MARIADB_$name"; do
        local f="${v}_FILE"
        if [ -n "${!v:-}" ] && [ -n "${!f:-}" ]; then fail "both $v and $f are set (but are exclusive)"; fi
        if [ -n "${!v:-}" ]; then val=${!v}; break; fi
        if [ -n "${!f:-}" ]; then val=$(<"${!f}"); break; fi
    done
    export "MYSQL_$name=$val"
    unset "MYSQL_${name}_FILE" "MARIADB_${name}_FILE"
}

is_yes() { case "${1,,}" in 1 | yes | y | true | on) return 0 ;; *) return 1 ;; esac; }

# SQL string literal contents: escape \ and '
sql_str() { local s=${1//\\/\\\\}; printf '%s' "${s//\'/\\\'}"; }
# SQL identifier contents: escape `
sql_ident() { printf '%s' "${1//\`/\`\`}"; }

if [ "${1:0:1}" = '-' ]; then set -- mariadbd "$@"; fi

if [ "$1" = mariadbd ] || [ "$1" = mysqld ]; then
    DATADIR=/var/lib/mysql
    for a in "$@"; do case "$a" in --datadir=*) DATADIR=${a#--datadir=} ;; esac; done
    SOCKET=/run/mysqld/mysqld.sock

    if [ "$(id -u)" = 0 ]; then
        mkdir -p "$DATADIR" /run/mysqld
        find "$DATADIR" \! -user mysql -exec chown mysql:mysql '{}' +
        chown mysql:mysql /run/mysqld
        exec setpriv --reuid=mysql --regid=mysql --init-groups env HOME=/var/lib/mysql USER=mysql "$BASH_SOURCE" "$@"
    fi

    if [ -d "$DATADIR/mysql" ]; then
        log "MariaDB database directory appears to contain a database; skipping initialization"
        exec "$@"
    fi

    file_env ROOT_PASSWORD
    file_env ALLOW_EMPTY_PASSWORD
    [ -n "$MYSQL_ALLOW_EMPTY_PASSWORD" ] || { file_env ALLOW_EMPTY_ROOT_PASSWORD; MYSQL_ALLOW_EMPTY_PASSWORD=$MYSQL_ALLOW_EMPTY_ROOT_PASSWORD; }
    file_env RANDOM_ROOT_PASSWORD
    file_env ROOT_HOST %
    file_env DATABASE
    file_env USER
    file_env PASSWORD

    if [ -z "$MYSQL_ROOT_PASSWORD" ] && ! is_yes "$MYSQL_ALLOW_EMPTY_PASSWORD" && ! is_yes "$MYSQL_RANDOM_ROOT_PASSWORD"; then
        fail "Database is uninitialized and password option is not specified. You need to specify one of" \
            "MYSQL_ROOT_PASSWORD, MYSQL_ALLOW_EMPTY_PASSWORD and MYSQL_RANDOM_ROOT_PASSWORD."
    fi
    if [ "$MYSQL_USER" = root ]; then
        fail "MYSQL_USER=root is not allowed: use MYSQL_ROOT_PASSWORD for the root account."
    fi
    if is_yes "$MYSQL_RANDOM_ROOT_PASSWORD" && [ -z "$MYSQL_ROOT_PASSWORD" ]; then
        MYSQL_ROOT_PASSWORD=$(tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 || true)
        log "GENERATED ROOT PASSWORD: $MYSQL_ROOT_PASSWORD"
    fi

    # Accounts and database, as the official images set them up. They are created inside
    # mariadb-install-db's bootstrap run (--extra-file), so no temporary server is needed for
    # them, and an SQL error aborts the initialisation loudly. Bootstrap runs with
    # skip-grant-tables: FLUSH PRIVILEGES first enables account statements; GRANT PROXY is not
    # allowed there, so its row goes into mysql.proxies_priv directly.
    rootpw=$(sql_str "$MYSQL_ROOT_PASSWORD")
    roothost=$(sql_str "$MYSQL_ROOT_HOST")
    setup_sql="FLUSH PRIVILEGES;
SET @@SESSION.SQL_LOG_BIN=0;
SET @@SESSION.SQL_MODE=REPLACE(@@SESSION.SQL_MODE, 'NO_BACKSLASH_ESCAPES', '');
DROP USER IF EXISTS root@'127.0.0.1', root@'::1';
EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS root@\'', @@hostname, '\'');
ALTER USER 'root'@'localhost' IDENTIFIED BY '$rootpw';"
    if [ "$MYSQL_ROOT_HOST" != localhost ]; then
        setup_sql+="
CREATE USER IF NOT EXISTS 'root'@'$roothost' IDENTIFIED BY '$rootpw';
GRANT ALL ON *.* TO 'root'@'$roothost' WITH GRANT OPTION;
REPLACE INTO mysql.proxies_priv VALUES ('$roothost', 'root', '', '', TRUE, '', now());"
    fi
    if [ -n "$MYSQL_DATABASE" ]; then
        setup_sql+="
CREATE DATABASE IF NOT EXISTS \`$(sql_ident "$MYSQL_DATABASE")\`;"
    fi
    if [ -n "$MYSQL_USER" ]; then
        if [ -n "$MYSQL_PASSWORD" ]; then
            setup_sql+="
CREATE USER IF NOT EXISTS '$(sql_str "$MYSQL_USER")'@'%' IDENTIFIED BY '$(sql_str "$MYSQL_PASSWORD")';"
            if [ -n "$MYSQL_DATABASE" ]; then
                setup_sql+="
GRANT ALL ON \`$(sql_ident "$MYSQL_DATABASE")\`.* TO '$(sql_str "$MYSQL_USER")'@'%';"
            fi
        else
            log "WARNING: MYSQL_USER is set but MYSQL_PASSWORD is not; MYSQL_USER will not be created"
        fi
    fi
    setup_sql+="
FLUSH PRIVILEGES;"

    log "initializing database files in $DATADIR"
    t0=$(date +%s%N)
    # The setup SQL holds passwords: a private file that exists only while mariadb-install-db runs.
    setup_file=$(umask 077; mktemp /run/mysqld/moat-setup.XXXXXX)
    trap 'rm -f "$setup_file"' EXIT
    printf '%s\n' "$setup_sql" >"$setup_file"
    if ! mariadb-install-db --datadir="$DATADIR" --rpm --cross-bootstrap --skip-test-db \
        --auth-root-authentication-method=normal --skip-name-resolve --disable-log-bin \
        --extra-file="$setup_file" >/tmp/mariadb-install-db.log 2>&1; then
        grep -v '^$' /tmp/mariadb-install-db.log | head -n 20 >&2
        fail "mariadb-install-db failed (database, users or passwords could not be set up)"
    fi
    rm -f "$setup_file"
    trap - EXIT
    log "database files, accounts and database initialized in $((($(date +%s%N) - t0) / 1000000)) ms"

    shopt -s nullglob
    scripts=(/docker-entrypoint-initdb.d/*)
    shopt -u nullglob

    if [ ${#scripts[@]} -eq 0 ]; then
        log "MariaDB init process done. Ready for start up."
        exec "$@"
    fi

    # Init scripts: a temporary server on the unix socket only, as the official images do.
    "$@" --skip-networking --socket="$SOCKET" --skip-log-bin &
    tmp_pid=$!
    export MYSQL_PWD=$MYSQL_ROOT_PASSWORD
    client=(mariadb --protocol=socket --socket="$SOCKET" -uroot)
    up=
    for _ in $(seq 300); do
        if "${client[@]}" --database=mysql -e 'SELECT 1' >/dev/null 2>&1; then up=1; break; fi
        kill -0 "$tmp_pid" 2>/dev/null || fail "temporary server exited during start-up"
        sleep 0.1
    done
    [ -n "$up" ] || fail "temporary server did not answer within 30 s"
    # For sourced *.sh scripts, as in the official image:
    docker_process_sql() { "${client[@]}" ${MYSQL_DATABASE:+--database="$MYSQL_DATABASE"} "$@"; }
    for f in "${scripts[@]}"; do
        case "$f" in
            *.sh)
                if [ -x "$f" ]; then log "running $f"; "$f"; else log "sourcing $f"; . "$f"; fi ;;
            *.sql)    log "running $f"; docker_process_sql <"$f" ;;
            *.sql.gz) log "running $f"; gunzip -c "$f" | docker_process_sql ;;
            *.sql.xz) log "running $f"; xzcat "$f" | docker_process_sql ;;
            *)        log "ignoring $f" ;;
        esac
    done
    mariadb-admin --socket="$SOCKET" -uroot shutdown
    wait "$tmp_pid" || true
    unset MYSQL_PWD
    log "MariaDB init process done. Ready for start up."
fi

exec "$@"
