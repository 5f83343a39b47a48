#!/bin/sh
# moat-test/redis entrypoint, after the official redis image's:
# - arguments starting with '-' (or a *.conf file) are options for redis-server;
# - redis-server runs as the redis user, in /data;
# - protected mode is off unless asked for: the official image compiles it off by default,
#   Debian's binary has it on, which would refuse other containers when no password is set.
#   Without a config file redis listens on all interfaces (bind "* -::*").
set -e

if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
    set -- redis-server "$@"
fi

if [ "$1" = redis-server ]; then
    want_pm=yes
    for a in "$@"; do
        [ "$a" = --protected-mode ] && want_pm=
    done
    # a config file as first argument that sets protected-mode itself wins too
    if [ -n "$want_pm" ] && [ $# -ge 2 ] && [ "${2#-}" = "$2" ] && [ -f "$2" ] &&
        grep -Eqi '^[[:space:]]*protected-mode[[:space:]]' "$2"; then
        want_pm=
    fi
    [ -n "$want_pm" ] && set -- "$@" --protected-mode no

    if [ "$(id -u)" = 0 ]; then
        find . \! -user redis -exec chown redis '{}' +
        exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
    fi
    umask 0077
fi

exec "$@"
