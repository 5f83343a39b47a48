#!/usr/bin/env bash
# Writes and reads keys in the redis sidecar, authenticating with the injected password.
set -euo pipefail
export REDISCLI_AUTH="$MOAT_REDIS_PASSWORD"   # keeps the password off the command line
r() { redis-cli -h "$MOAT_REDIS_HOST" -p "$MOAT_REDIS_PORT" "$@"; }
r SET greeting "hello from the agent" >/dev/null
r RPUSH queue a b c >/dev/null
echo "greeting: $(r GET greeting)"
echo "queue length: $(r LLEN queue)"
# The URL works as-is with every client (redis://default:PASSWORD@redis:6379).
echo "by url: $(redis-cli --no-auth-warning -u "$MOAT_REDIS_URL" PING)"
