#!/usr/bin/env bash
# benchmarks/peers.sh - the peers the start-up benchmark compares moat with, each in its own
# virtualenv under benchmarks/.peers/ (idempotent: an existing, working venv is kept).
#   compose:         docker-compose 1.29.2 (its last Python release). It needs Cython<3 and PyYAML 5.4.1
#                    built without build isolation, docker==6.1.3 and requests<2.32.
#   testcontainers:  testcontainers-python with its postgres, mysql and redis modules.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PEERS="$HERE/.peers"
PYTHON=${PYTHON:-python3}
mkdir -p "$PEERS"

if ! "$PEERS/compose/bin/docker-compose" version >/dev/null 2>&1; then
    echo "peers: installing docker-compose 1.29.2"
    rm -rf "$PEERS/compose"
    "$PYTHON" -m venv "$PEERS/compose"
    "$PEERS/compose/bin/pip" install -q --disable-pip-version-check "Cython<3" wheel setuptools
    "$PEERS/compose/bin/pip" install -q --disable-pip-version-check --no-build-isolation "PyYAML==5.4.1"
    "$PEERS/compose/bin/pip" install -q --disable-pip-version-check "docker-compose==1.29.2" "docker==6.1.3" \
        "requests<2.32" "PyYAML==5.4.1"
fi
echo "peers: $("$PEERS/compose/bin/docker-compose" version --short 2>/dev/null | head -1) (docker-compose)"

if ! "$PEERS/testcontainers/bin/python" -c "import testcontainers.postgres, testcontainers.mysql, testcontainers.redis" \
        >/dev/null 2>&1; then
    echo "peers: installing testcontainers"
    rm -rf "$PEERS/testcontainers"
    "$PYTHON" -m venv "$PEERS/testcontainers"
    "$PEERS/testcontainers/bin/pip" install -q --disable-pip-version-check "testcontainers[postgres,mysql,redis]" \
        redis psycopg2-binary pymysql sqlalchemy
fi
echo "peers: testcontainers $("$PEERS/testcontainers/bin/python" -c 'import importlib.metadata as m; print(m.version("testcontainers"))')"
