"""What the sandbox started, on disk, so that any moat process can find and remove it.

    MOAT_HOME/sandbox/<network>/network.json     the holder of the run's network namespace
    MOAT_HOME/sandbox/<network>/<id>.json        a container: its processes, cgroup, scratch directory
    MOAT_HOME/sandbox/<network>/<id>.log         a service's output (the process writes an inherited fd)
    MOAT_HOME/sandbox/<network>/<id>.status      bubblewrap's status: the exit code once it has ended

Written by moat only (0700/0600), and never holding a secret: environments stay in memory.
A record is written before its processes start, with the tag they carry on their command lines, so
even a moat killed while starting one leaves them findable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any

from moat.files import private_dir, write_private
from moat.runtime.base import NotFound

NETWORK = "network"


class Records:
    def __init__(self, root: Path) -> None:
        self.root = root  # MOAT_HOME/sandbox

    def directory(self, network: str) -> Path:
        return private_dir(self.root / network)

    def write(self, network: str, key: str, record: dict[str, Any]) -> None:
        write_private(self.directory(network) / f"{key}.json", json.dumps(record, indent=2) + "\n")

    def all(self) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.root.glob("*/*.json")) if self.root.is_dir() else []:
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return found

    def container(self, container_id: str) -> dict[str, Any]:
        for path in self.root.glob(f"*/{container_id}.json") if self.root.is_dir() and container_id else []:
            with contextlib.suppress(OSError, ValueError):
                record: dict[str, Any] = json.loads(path.read_text())
                if record.get("kind") == "container":
                    return record
        raise NotFound(f"no sandbox container {container_id}")

    def on_network(self, network: str) -> list[dict[str, Any]]:
        return [r for r in self.all() if r.get("kind") == "container" and r.get("network") == network]

    def network(self, name: str) -> dict[str, Any]:
        try:
            record: dict[str, Any] = json.loads((self.root / name / f"{NETWORK}.json").read_text())
        except (OSError, ValueError):
            raise NotFound(f"the sandbox network {name} does not exist") from None
        return record

    def log(self, network: str, key: str) -> Path:
        return self.root / network / f"{key}.log"

    def status(self, network: str, key: str) -> Path:
        return self.root / network / f"{key}.status"

    def open(self, path: Path, append: bool = True) -> IO[bytes]:
        """A 0600 file of the records, for a process to write through an inherited descriptor."""
        self.directory(path.parent.name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
        return os.fdopen(os.open(path, flags, 0o600), "ab" if append else "wb")

    def exit_code(self, network: str, key: str) -> int | None:
        """The exit code bubblewrap wrote once the container's command ended."""
        try:
            text = self.status(network, key).read_text()
        except OSError:
            return None
        decoder, at, code = json.JSONDecoder(), 0, None
        while at < len(text):
            try:
                document, at = decoder.raw_decode(text, at)
            except ValueError:
                break
            if isinstance(document, dict) and isinstance(document.get("exit-code"), int):
                code = document["exit-code"]
            while at < len(text) and text[at].isspace():
                at += 1
        return code

    def forget(self, network: str, key: str) -> None:
        for suffix in (".json", ".log", ".status"):
            (self.root / network / f"{key}{suffix}").unlink(missing_ok=True)

    def forget_network(self, network: str) -> None:
        shutil.rmtree(self.root / network, ignore_errors=True)
