"""A terminal of its own for an interactive sandbox agent, relayed to moat's, as `docker run -it` does.

The agent never gets moat's terminal: on it, it could push input into the shell that started moat
(TIOCSTI, the hole of bubblewrap's CVE-2017-5226) — as root, under sudo. Instead it gets a fresh pty,
made its controlling terminal inside its own session, and moat copies bytes between the two with its
own terminal in raw mode: Ctrl-C is a byte the agent's pty turns into the agent's SIGINT, never a
signal to moat. The agent's output is also appended to its log.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import struct
import sys
import termios
import tty
from pathlib import Path
from typing import IO

from moat.plan.identity import Identity

POLL = 0.5  # seconds between looks at moat's window size


class Terminal:
    def __init__(self, identity: Identity) -> None:
        self.master, self.slave = pty.openpty()
        self.slave_path = os.ttyname(self.slave)
        if os.geteuid() == 0:
            # The agent reopens /dev/tty at times: the device must be its own, as a login's is.
            os.fchown(self.slave, identity.uid, identity.gid)
        self._size = b""
        self._copy_size()

    def foreground_group(self) -> int | None:
        """The agent's foreground process group (for signals moat passes on: `moat stop`)."""
        try:
            return os.tcgetpgrp(self.master)
        except OSError:
            return None

    def close_slave(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.slave)

    def relay(self, log: Path) -> None:
        """Copy moat's stdin to the agent and its output to moat's stdout (and its log), until the
        agent's side of the pty closes."""
        stdin = sys.stdin.fileno()
        saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
        if saved is not None:
            tty.setraw(stdin)
        reading = True
        try:
            with open(log, "ab") as record:
                while True:
                    watched = [self.master, stdin] if reading else [self.master]
                    ready, _, _ = select.select(watched, [], [], POLL)
                    self._copy_size()
                    if self.master in ready and not self._out(record):
                        return
                    if stdin in ready:
                        reading = self._in(stdin)
        finally:
            if saved is not None:
                termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
            with contextlib.suppress(OSError):
                os.close(self.master)

    def _out(self, record: IO[bytes]) -> bool:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every process on the agent's side has closed it
            return False
        if not data:
            return False
        with contextlib.suppress(OSError):  # a closed terminal must not end the agent
            os.write(sys.stdout.fileno(), data)
        record.write(data)
        record.flush()
        return True

    def _in(self, stdin: int) -> bool:
        data = os.read(stdin, 65536)
        if not data:  # moat's stdin ended (a pipe): the agent reads end-of-file
            os.write(self.master, b"\x04")
            return False
        os.write(self.master, data)
        return True

    def _copy_size(self) -> None:
        """The agent's window is moat's: set at the start, and again whenever moat's changes."""
        for fd in (sys.stdout.fileno(), sys.stdin.fileno()):
            if os.isatty(fd):
                size = fcntl.ioctl(fd, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
                if size != self._size:
                    self._size = size
                    with contextlib.suppress(OSError):  # the master sets the pty's size for both ends
                        fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)
                return
