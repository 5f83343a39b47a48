"""docker-compose (1.29.2, in its own virtualenv) running the same services with healthchecks."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.common import AGENT_IMAGE, AGENT_LINE, SERVICES

PEERS = Path(__file__).resolve().parent / ".peers"
COMPOSE = PEERS / "compose" / "bin" / "docker-compose"


def compose_file() -> dict[str, object]:
    services: dict[str, object] = {}
    for service in SERVICES:
        spec: dict[str, object] = {
            "image": service.image,
            "environment": service.env,
            # interval 1 s, start period 0: as quick as compose users usually make it
            "healthcheck": {"test": ["CMD", *service.exec_probe], "interval": "1s", "timeout": "5s",
                            "retries": 120, "start_period": "0s"},
        }
        if service.command:
            spec["command"] = list(service.command)
        services[service.name] = spec
    services["agent"] = {
        "image": AGENT_IMAGE,
        "command": ["echo", AGENT_LINE],
        "depends_on": {s.name: {"condition": "service_healthy"} for s in SERVICES},
    }
    return {"version": "2.4", "services": services}


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-compose-") as scratch:
        path = Path(scratch) / "docker-compose.yml"
        path.write_text(json.dumps(compose_file()))  # JSON is YAML
        project = ["-p", f"bench{uuid.uuid4().hex[:8]}", "-f", str(path)]
        started = time.monotonic()
        up = subprocess.Popen([str(COMPOSE), *project, "up", "--no-color", "--exit-code-from", "agent", "agent"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        first = None
        assert up.stdout is not None
        for line in up.stdout:
            if first is None and AGENT_LINE in line:
                first = time.monotonic() - started
        up.wait()
        subprocess.run([str(COMPOSE), *project, "down", "-v", "--remove-orphans"], capture_output=True, check=True)
        total = time.monotonic() - started
    if up.returncode != 0 or first is None:
        raise RuntimeError(f"docker-compose up failed (exit {up.returncode})")
    return {"first_output": first, "total": total}
