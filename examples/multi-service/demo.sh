#!/usr/bin/env bash
# Uses all three sidecars with the credentials moat injected.
set -euo pipefail
echo "agent started; services: postgres, mysql, redis"
psql "$MOAT_POSTGRES_URL" -v ON_ERROR_STOP=1 -q -c "CREATE TABLE visits (n int)" -c "INSERT INTO visits VALUES (1), (2)"
echo "postgres: $(psql "$MOAT_POSTGRES_URL" -tAc 'SELECT sum(n) FROM visits') (sum of visits)"
export MYSQL_PWD="$MOAT_MYSQL_PASSWORD"
echo "mysql: $(mysql -h "$MOAT_MYSQL_HOST" -u "$MOAT_MYSQL_USER" -N -B "$MOAT_MYSQL_DB" -e 'SELECT 6*7') (6*7)"
export REDISCLI_AUTH="$MOAT_REDIS_PASSWORD"
redis-cli -h "$MOAT_REDIS_HOST" INCRBY counter 5 >/dev/null
echo "redis: $(redis-cli -h "$MOAT_REDIS_HOST" GET counter) (counter)"
