#!/usr/bin/env bash
# moat-test/postgres entrypoint: the official postgres image's contract, on Debian's postgresql-15.
#
#   POSTGRES_PASSWORD          superuser password; required unless POSTGRES_HOST_AUTH_METHOD=trust
#   POSTGRES_USER              superuser name (default postgres)
#   POSTGRES_DB                database created at init (default $POSTGRES_USER)
#   POSTGRES_INITDB_ARGS       extra initdb arguments
#   POSTGRES_HOST_AUTH_METHOD  pg_hba method for host connections (default scram-sha-256)
#   PGDATA                     data directory (default /var/lib/postgresql/data, a VOLUME)
#   *_FILE                     POSTGRES_PASSWORD_FILE etc.: read the value from a file
#   /docker-entrypoint-initdb.d/*.sh, *.sql, *.sql.gz, *.sql.xz  run once, on first start
# Listens on all addresses, port 5432; runs postgres as the postgres user.
set -Eeuo pipefail

log() { printf '%s [entrypoint] %s\n' "$(date -u '+%F %T UTC')" "$*"; }
fail() { log "ERROR: $*" >&2; exit 1; }

# file_env VAR [DEFAULT]: VAR from $VAR or from the file named by $VAR_FILE.
file_env() {
    local var=$1 def=${2:-} fvar="${1}_FILE" val
    if [ -n "${!var:-}" ] && [ -n "${!fvar:-}" ]; then fail "both $var and $fvar are set (but are exclusive)"; fi
    val=$def
    if [ -n "${!var:-}" ]; then val=${!var}; elif [ -n "${!fvar:-}" ]; then val=$(<"${!fvar}"); fi
    export "$var=$val"
    unset "$fvar"
}

# postgres options given as arguments: `docker run image -c fsync=off`
if [ "${1:0:1}" = '-' ]; then set -- postgres "$@"; fi

export PGDATA=${PGDATA:-/var/lib/postgresql/data}

if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA" || :
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    chown postgres:postgres /var/run/postgresql
    chmod 3777 /var/run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups \
        env HOME=/var/lib/postgresql USER=postgres "$BASH_SOURCE" "$@"
fi

process_init_file() {
    local f=$1
    local psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc --dbname "$POSTGRES_DB")
    case "$f" in
        *.sh)
            if [ -x "$f" ]; then log "running $f"; "$f"; else log "sourcing $f"; . "$f"; fi ;;
        *.sql)    log "running $f"; "${psql[@]}" -f "$f"; echo ;;
        *.sql.gz) log "running $f"; gunzip -c "$f" | "${psql[@]}"; echo ;;
        *.sql.xz) log "running $f"; xzcat "$f" | "${psql[@]}"; echo ;;
        *)        log "ignoring $f" ;;
    esac
}

if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    file_env POSTGRES_PASSWORD
    file_env POSTGRES_USER postgres
    file_env POSTGRES_DB "$POSTGRES_USER"
    file_env POSTGRES_INITDB_ARGS
    auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
    if [ -z "$POSTGRES_PASSWORD" ] && [ "$auth" != trust ]; then
        fail "Database is uninitialized and superuser password is not specified. You must specify" \
            "POSTGRES_PASSWORD to a non-empty value for the superuser, e.g. -e POSTGRES_PASSWORD=password" \
            "on docker run (or POSTGRES_HOST_AUTH_METHOD=trust to allow all connections without a password)."
    fi
    [ -w "$PGDATA" ] || fail "PGDATA $PGDATA is not writable by uid $(id -u)"

    log "initializing database in $PGDATA (superuser $POSTGRES_USER)"
    # (the password goes through a pipe, never a file or the command line)
    # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is word-split on purpose, as upstream does
    if [ -n "$POSTGRES_PASSWORD" ]; then
        initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") $POSTGRES_INITDB_ARGS >/dev/null
    else
        initdb --username="$POSTGRES_USER" $POSTGRES_INITDB_ARGS >/dev/null
    fi
    printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
    printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"

    shopt -s nullglob
    scripts=(/docker-entrypoint-initdb.d/*)
    shopt -u nullglob
    if [ "$POSTGRES_DB" != postgres ] || [ ${#scripts[@]} -gt 0 ]; then
        # Temporary server on the unix socket only, to create the database and run init scripts.
        export PGPASSWORD=${POSTGRES_PASSWORD:-} PGUSER=$POSTGRES_USER PGHOST=/var/run/postgresql PGPORT=5432
        pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w -t 60 -s start
        if [ "$POSTGRES_DB" != postgres ]; then
            psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --dbname postgres -q --set db="$POSTGRES_DB" \
                <<<'CREATE DATABASE :"db";'
            log "created database $POSTGRES_DB"
        fi
        for f in "${scripts[@]}"; do process_init_file "$f"; done
        pg_ctl -D "$PGDATA" -m fast -w -s stop
        unset PGPASSWORD PGUSER PGHOST PGPORT
    fi
    log "PostgreSQL init process complete; ready for start up."
elif [ "$1" = postgres ]; then
    log "PostgreSQL database directory appears to contain a database; skipping initialization"
fi

exec "$@"
