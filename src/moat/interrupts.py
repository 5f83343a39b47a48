"""A Ctrl-C that came before a run's own signal handling, remembered: CPython may swallow the
exception the early handler raises (one raised inside a callback the interpreter only reports as
"Exception ignored", such as a regular expression's compilation for pydantic), and the run would go
ahead. The run's signal machine looks here when it is installed (run.signals)."""

from __future__ import annotations

import threading

EARLY_SIGINT = threading.Event()
