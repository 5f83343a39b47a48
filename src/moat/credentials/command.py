"""Running a credential helper (``gh auth token``, ``op read``, ``aws ssm``) with a deadline.

The helper runs in a session of its own, so a deadline ends it and whatever it started (a helper's
own helpers would otherwise outlive moat, holding its pipes). Output is captured, never shown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, repr=False)
class Finished:
    returncode: int
    stdout: bytes
    stderr: bytes

    def __repr__(self) -> str:  # its output may be a secret
        return f"Finished(returncode={self.returncode})"


def run_helper(argv: Sequence[str], env: Mapping[str, str], timeout: float, *, stdin_devnull: bool) -> Finished:
    """Raises subprocess.TimeoutExpired (after ending the helper's session) or OSError."""
    process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL if stdin_devnull else None,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(env), start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return Finished(process.returncode, stdout, stderr)
