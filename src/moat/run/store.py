"""The run store: ``MOAT_HOME/runs/<run-id>/`` with metadata.json, logs.jsonl and service logs.

Directories are 0700 and files 0600 (runs record environments and output). Everything written here
passes through the run's ``Masker`` first: passwords never reach the disk.

Recording never stops a run: when the disk is full (or the directory goes away), the failure is
reported once through ``on_failure`` and remembered, and the run goes on and tears down as usual.
Only creating a run's directory, before anything has started, is an error (a usage error: the
user's MOAT_HOME cannot be used).
"""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from moat.constants import ENV_HOME, RUNS_DIR
from moat.errors import MoatError, UsageError
from moat.files import now_iso, overwrite_private, private_dir, write_private
from moat.masking import Masker
from moat.ownership import owner_metadata

METADATA = "metadata.json"
LOGS = "logs.jsonl"
SERVICE_LOGS_DIR = "services"
METADATA_SCHEMA = 1
FREE_TEXT = ("command", "error")  # the metadata fields whose text comes from the user or the world


def moat_home(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(ENV_HOME) or Path.home() / ".moat").expanduser()


class RecordError(MoatError):
    """A file of the run's record could not be written."""


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


class RunRecord:
    """One run's directory. Thread-safe: services and the agent log from several threads."""

    def __init__(self, directory: Path, metadata: dict[str, Any], masker: Masker,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.dir = directory
        self.metadata = metadata
        self.masker = masker
        self.on_failure = on_failure or (lambda _message: None)
        self.failure: str | None = None  # the first write that failed, if any
        self._lock = threading.Lock()
        self._log: Any = None

    def _failed(self, what: str, exc: OSError) -> None:
        if self.failure is None:
            self.failure = f"could not write the run's {what} in {self.dir}: {_describe(exc)}"
            self.on_failure(f"{self.failure}; the run goes on, but its record is incomplete")

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

    def save(self) -> None:
        """Write the metadata as it stands; raises ``RecordError`` (the caller must know)."""
        with self._lock:
            self._save(quiet=False)

    def _save(self, quiet: bool = True) -> None:
        # Only the free-text fields can carry a secret; masking the whole document would also hit
        # moat's own fields whenever a user's password happens to equal one (a name, a number).
        record = dict(self.metadata)
        for key in FREE_TEXT:
            value = record.get(key)
            if isinstance(value, str):
                record[key] = self.masker.text(value)
            elif isinstance(value, list):
                record[key] = [self.masker.text(v) if isinstance(v, str) else v for v in value]
        text = json.dumps(record, indent=2, sort_keys=True) + "\n"
        try:
            write_private(self.dir / METADATA, text)
        except OSError as exc:
            if exc.errno == errno.ENOSPC and (self.dir / METADATA).exists():
                # No room for a new copy: the run's outcome goes into the old one's blocks.
                try:
                    overwrite_private(self.dir / METADATA, text)
                    return
                except OSError:
                    pass
            if not quiet:
                raise RecordError(f"could not write {self.dir / METADATA}: {_describe(exc)}") from None
            self._failed("metadata", exc)

    def log(self, stream: str, line: str, ts: str | None = None, **extra: Any) -> None:
        """Append one line of output (or one of moat's own events) to logs.jsonl."""
        record = {"ts": ts or now_iso(), "stream": stream, "line": self.masker.text(line), **extra}
        text = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            if self.failure is not None and self._log is None:
                return  # the log could not even be opened: do not try again for every line
            try:
                if self._log is None:
                    fd = os.open(self.dir / LOGS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                    self._log = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
                self._log.write(text)
            except OSError as exc:
                self._failed("log", exc)

    def write_file(self, relative: str, text: str) -> Path:
        """Write a file of the record (masked); raises ``RecordError`` when it cannot."""
        path = self.dir / relative
        try:
            private_dir(path.parent)
            write_private(path, self.masker.text(text))
        except OSError as exc:
            raise RecordError(f"could not write {path}: {_describe(exc)}") from None
        return path

    def close(self) -> None:
        with self._lock:
            if self._log is not None:
                try:
                    self._log.close()
                except OSError as exc:  # the last buffered line could not be written
                    self._failed("log", exc)
                self._log = None


class RunStore:
    def __init__(self, home: Path | None = None) -> None:
        self.home = home or moat_home()
        self.runs = self.home / RUNS_DIR

    def create(self, run_id: str, masker: Masker, on_failure: Callable[[str], None] | None = None,
               **metadata: Any) -> RunRecord:
        """A new run's record; a usage error (nothing has started) when MOAT_HOME cannot hold it."""
        record: RunRecord | None = None
        try:
            private_dir(self.home)
            directory = private_dir(self.runs / run_id)
            record = RunRecord(directory, {
                "schema": METADATA_SCHEMA,
                "id": run_id,
                "state": "created",
                "created_at": now_iso(),
                **owner_metadata(),
                "services": [],
                **metadata,
            }, masker, on_failure)
            record.save()
        except (OSError, RecordError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else exc.message
            if record is not None:
                _remove_quietly(record.dir)
            raise UsageError(f"cannot keep runs in {self.home}: {reason or exc}",
                             hint=f"Free some space there, or point {ENV_HOME} at a directory you can write"
                                  " (default ~/.moat). Nothing was started.") from None
        return record

    def open(self, run_id: str, masker: Masker, on_failure: Callable[[str], None] | None = None) -> RunRecord:
        """An existing run's record, to go on writing it (a detached run's supervisor)."""
        directory = self.runs / run_id
        metadata = json.loads((directory / METADATA).read_text())
        return RunRecord(directory, metadata, masker, on_failure)


def _remove_quietly(directory: Path) -> None:
    for path in (directory / METADATA, directory):
        try:
            path.rmdir() if path.is_dir() else path.unlink(missing_ok=True)
        except OSError:
            continue
