#!/usr/bin/env bash
# Creates a table, inserts rows and reads them back through the mysql sidecar.
set -euo pipefail
export MYSQL_PWD="$MOAT_MYSQL_PASSWORD"   # keeps the password off the command line
sql() { mysql -h "$MOAT_MYSQL_HOST" -P "$MOAT_MYSQL_PORT" -u "$MOAT_MYSQL_USER" -N -B "$MOAT_MYSQL_DB" -e "$1"; }
sql "CREATE TABLE tasks (id INT AUTO_INCREMENT PRIMARY KEY, title VARCHAR(100) NOT NULL)"
sql "INSERT INTO tasks (title) VALUES ('write tests'), ('ship it')"
echo "rows in tasks: $(sql 'SELECT COUNT(*) FROM tasks')"
sql "SELECT id, title FROM tasks ORDER BY id"
