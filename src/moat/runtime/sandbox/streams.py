"""Output of sandbox processes: an agent's pipes, commands run in a container, service logs."""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from moat.errors import EngineError
from moat.plan.identity import Identity
from moat.runtime.base import ContainerNotRunning, ExecResult, ExecStream, OutputChunk, ProgramNotFound
from moat.runtime.sandbox import launch, procs
from moat.runtime.sandbox.procs import Proc

FOLLOW_POLL = 0.1  # seconds between looks at a growing log
GATE_TIMEOUT = 5.0  # seconds for an exec's process to appear in the container


def chunks(process: subprocess.Popen[bytes]) -> Iterator[OutputChunk]:
    """stdout and stderr as they come, until both close."""
    selector = selectors.DefaultSelector()
    for stream, pipe in (("stdout", process.stdout), ("stderr", process.stderr)):
        if pipe is not None:
            os.set_blocking(pipe.fileno(), False)
            selector.register(pipe, selectors.EVENT_READ, stream)
    try:
        while selector.get_map():
            for key, _ in selector.select():
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                yield OutputChunk(key.data, data)
    finally:
        selector.close()


def spawn_exec(holder: int, init: int, command: Sequence[str], env: Mapping[str, str], identity: Identity,
               cgroup_paths: Sequence[str]) -> subprocess.Popen[bytes]:
    """A command in a running container's namespaces (and cgroups: it is held until it is in them)."""
    if not command:
        raise EngineError("no command to run in the container")
    gated = bool(cgroup_paths)
    script = launch.GATED_EXEC_SCRIPT if gated else launch.EXEC_SCRIPT
    process = subprocess.Popen(
        [*launch.enter_container(holder, init), "/bin/sh", "-c", script, *command], env=dict(env), cwd="/",
        stdin=subprocess.PIPE if gated else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True, **launch.as_identity(identity))
    if gated and process.stdin is not None:
        # nsenter forks into the container's pid namespace; that child waits on the gate.
        parent, deadline = Proc.of(process.pid), time.monotonic() + GATE_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            inside = procs.children(parent)
            if inside:
                for path in cgroup_paths:
                    (Path(path) / "cgroup.procs").write_text(str(inside[0].pid))
                break
            time.sleep(0.001)
        with contextlib.suppress(BrokenPipeError):
            process.stdin.write(b"go\n")
            process.stdin.close()
        process.stdin = None  # closed: communicate() must not flush it
    return process


def missing_program(command: Sequence[str], code: int, output: str) -> ProgramNotFound | None:
    if code == 127 and f"{launch.MISSING_MARK} {command[0]}" in output:
        return ProgramNotFound(command[0], "executable file not found in $PATH")
    return None


def exit_code(returncode: int) -> int:
    """As a container engine says it: a command killed by signal N exited with 128 + N."""
    return returncode if returncode >= 0 else 128 - returncode


def run_exec(process: subprocess.Popen[bytes], command: Sequence[str],
             still_running: Callable[[], bool]) -> ExecResult:
    out, err = process.communicate()
    output = (out + err).decode(errors="replace")
    code = exit_code(process.returncode)
    missing = missing_program(command, code, output)
    if missing is not None:
        raise missing
    if code != 0 and output.startswith("nsenter:") and not still_running():
        raise ContainerNotRunning(f"the container stopped: {output.strip()}")
    return ExecResult(code, output)


def stream_exec(process: subprocess.Popen[bytes]) -> ExecStream:
    return ExecStream(chunks(process), lambda: exit_code(process.wait()))


def tail(path: Path, lines: int | None) -> str:
    try:
        found = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    if lines is not None:
        found = found[-lines:] if lines else []
    return "\n".join(found) + ("\n" if found else "")


def follow(path: Path, lines: int | None, running: Callable[[], bool]) -> Iterator[str]:
    """The log's last ``lines``, then each line as it is written, until the container has stopped."""
    offset, pending, first = 0, b"", True
    while True:
        alive = running()  # asked before reading: what it wrote before it stopped is still read
        try:
            with path.open("rb") as log:
                log.seek(offset)
                data = log.read()
        except OSError:
            data = b""
        offset += len(data)
        pending += data
        *complete, pending = pending.split(b"\n")
        if first and lines is not None:
            complete = complete[-lines:] if lines else []
        first = False
        yield from (line.decode(errors="replace") for line in complete)
        if not alive:
            if pending:
                yield pending.decode(errors="replace")
            return
        if not data:
            time.sleep(FOLLOW_POLL)


TAR_CHUNK = 1 << 20


def tar_directory(path: Path) -> Iterator[bytes]:
    """``path`` as a tar archive whose top directory is its name (as ``docker cp`` gives one), made by
    the host's tar (owners, modes and sparse files as they are), streamed as it is made."""
    process = subprocess.Popen(["tar", "-c", "-C", str(path.parent), path.name], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdout is not None
    try:
        while chunk := process.stdout.read(TAR_CHUNK):
            yield chunk
        error = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
        if process.wait() != 0:
            raise EngineError(f"could not archive {path}: {error or f'tar exited {process.returncode}'}")
    finally:
        if process.poll() is None:  # the reader stopped early: the archive is not wanted any more
            process.kill()
            process.wait()
        process.stdout.close()
        if process.stderr is not None:
            process.stderr.close()
