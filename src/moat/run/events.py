"""What a run says, in one place: live status for the user (the reporter) and lines for its record,
both through the run's one ``Masker``."""

from __future__ import annotations

from typing import Any

from moat.masking import Masker
from moat.run.report import Reporter
from moat.run.store import RunRecord


class RunEvents:
    """The reporter and the record of one run; every text passes the run's masker first."""

    def __init__(self, reporter: Reporter, record: RunRecord, masker: Masker) -> None:
        self.reporter = reporter
        self.record = record
        self.masker = masker

    # --- for the user ----------------------------------------------------------------------------

    def info(self, message: str) -> None:
        self.reporter.info(self.masker.text(message))

    def warn(self, message: str) -> None:
        self.reporter.warn(self.masker.text(message))

    def task(self, key: str, label: str) -> None:
        self.reporter.task(key, self.masker.text(label))

    def update(self, key: str, text: str) -> None:
        self.reporter.update(key, self.masker.text(text))

    def progress(self, key: str, completed: int, total: int) -> None:
        self.reporter.progress(key, completed, total)

    def finish(self, key: str, message: str, ok: bool | None = True) -> None:
        self.reporter.finish(key, self.masker.text(message), ok)

    def pause(self) -> None:
        self.reporter.pause()

    # --- for the record (the record masks what it writes) ------------------------------------------

    def log(self, message: str, **fields: Any) -> None:
        self.record.log("moat", message, **fields)

    def warn_and_log(self, message: str) -> None:
        self.warn(message)
        self.log(f"warning: {message}")
