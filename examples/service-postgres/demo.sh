#!/usr/bin/env bash
# Round-trips rows through the postgres sidecar using only what moat injected.
set -euo pipefail
echo "connecting to $MOAT_POSTGRES_HOST:$MOAT_POSTGRES_PORT as $MOAT_POSTGRES_USER (db $MOAT_POSTGRES_DB)"
psql "$MOAT_POSTGRES_URL" -v ON_ERROR_STOP=1 -q <<'SQL'
CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);
INSERT INTO notes (body) VALUES ('first note'), ('second note'), ('third note');
SQL
echo "rows in notes: $(psql "$MOAT_POSTGRES_URL" -tAc 'SELECT count(*) FROM notes')"
psql "$MOAT_POSTGRES_URL" -tA -F ' | ' -c 'SELECT id, body FROM notes ORDER BY id'
