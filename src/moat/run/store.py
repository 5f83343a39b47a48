"""The run store: ``MOAT_HOME/runs/<run-id>/`` with metadata.json, logs.jsonl and service logs.

Directories are 0700 and files 0600 (runs record environments and output). Everything written here
passes through the plan's ``Masker`` first: passwords never reach the disk.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moat.constants import ENV_HOME
from moat.errors import UsageError
from moat.files import now_iso, private_dir, write_private
from moat.ownership import owner_metadata
from moat.plan.model import Masker

METADATA = "metadata.json"
LOGS = "logs.jsonl"
SERVICE_LOGS_DIR = "services"
METADATA_SCHEMA = 1
FREE_TEXT = ("command", "error")  # the metadata fields whose text comes from the user or the world


def moat_home(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(ENV_HOME) or Path.home() / ".moat").expanduser()


class RunRecord:
    """One run's directory. Thread-safe: services and the agent log from several threads."""

    def __init__(self, directory: Path, metadata: dict[str, Any], masker: Masker) -> None:
        self.dir = directory
        self.metadata = metadata
        self.masker = masker
        self._lock = threading.Lock()
        self._log: Any = None

    @property
    def id(self) -> str:
        return str(self.metadata["id"])

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.metadata.update(fields)
            self._save()

    def update_service(self, name: str, **fields: Any) -> None:
        with self._lock:
            for service in self.metadata["services"]:
                if service["name"] == name:
                    service.update(fields)
            self._save()

    def _save(self) -> None:
        # Only the free-text fields can carry a secret; masking the whole document would also hit
        # moat's own fields whenever a user's password happens to equal one (a name, a number).
        record = dict(self.metadata)
        for key in FREE_TEXT:
            value = record.get(key)
            if isinstance(value, str):
                record[key] = self.masker.text(value)
            elif isinstance(value, list):
                record[key] = [self.masker.text(v) if isinstance(v, str) else v for v in value]
        write_private(self.dir / METADATA, json.dumps(record, indent=2, sort_keys=True) + "\n")

    def log(self, stream: str, line: str, ts: str | None = None, **extra: Any) -> None:
        """Append one line of output (or one of moat's own events) to logs.jsonl."""
        record = {"ts": ts or now_iso(), "stream": stream, "line": self.masker.text(line), **extra}
        text = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            if self._log is None:
                fd = os.open(self.dir / LOGS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._log = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
            self._log.write(text)

    def write_file(self, relative: str, text: str) -> Path:
        path = self.dir / relative
        private_dir(path.parent)
        write_private(path, self.masker.text(text))
        return path

    def close(self) -> None:
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None


class RunStore:
    def __init__(self, home: Path | None = None) -> None:
        self.home = home or moat_home()
        self.runs = self.home / "runs"

    def create(self, run_id: str, masker: Masker, **metadata: Any) -> RunRecord:
        try:
            private_dir(self.home)
            directory = private_dir(self.runs / run_id)
        except OSError as exc:
            raise UsageError(f"cannot keep runs in {self.home}: {exc.strerror or exc}",
                             hint=f"Point {ENV_HOME} at a directory you can write (default ~/.moat).") from None
        record = RunRecord(directory, {
            "schema": METADATA_SCHEMA,
            "id": run_id,
            "state": "created",
            "created_at": now_iso(),
            **owner_metadata(),
            "services": [],
            **metadata,
        }, masker)
        record.update()
        return record

    def open(self, run_id: str, masker: Masker) -> RunRecord:
        """An existing run's record, to go on writing it (a detached run's supervisor)."""
        directory = self.runs / run_id
        metadata = json.loads((directory / METADATA).read_text())
        return RunRecord(directory, metadata, masker)
