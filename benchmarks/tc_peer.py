"""testcontainers-python starting the same services as its users do, then a trivial container.

Runs under benchmarks/.peers/testcontainers (its own virtualenv); prints its timings as JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # its reaper image cannot be pulled here

import docker
from benchmarks.common import PASSWORD, run_agent
from testcontainers.mysql import MySqlContainer
from testcontainers.postgres import PostgresContainer
from testcontainers.redis import RedisContainer


def main() -> None:
    started = time.monotonic()
    containers = [
        PostgresContainer("moat-test/postgres:latest", password=PASSWORD),
        # Its default wait wants the "ready for connections" line twice (MySQL's init); MariaDB prints it once.
        MySqlContainer("moat-test/mysql:latest", root_password=PASSWORD, dbname="moat",
                       wait_strategy_check_string=r".*ready for connections.*"),
        RedisContainer("moat-test/redis:latest", password=PASSWORD),
    ]
    try:
        for container in containers:  # as its users write it: one after another, each waited for
            container.start()
        ready = time.monotonic() - started
        first = run_agent(docker.from_env(), started)
    finally:
        for container in containers:
            with contextlib.suppress(Exception):  # best effort: a container that never started
                container.stop()
    print(json.dumps({"ready": ready, "first_output": first, "total": time.monotonic() - started}))


if __name__ == "__main__":
    main()
