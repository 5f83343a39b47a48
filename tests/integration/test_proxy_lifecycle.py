"""The daemon's life: one per MOAT_HOME however many moats ask at once, reused while it lives,
replaced when it died, gone by itself once idle, and a clear error when it cannot start."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moat.ownership import process_alive
from moat.proxy import client
from moat.proxy.errors import ProxyError
from tests.helpers import run_moat
from tests.integration.proxy_support import (
    daemon_env,
    end_daemon,
    registration,
    require_proxy_python,
    running_daemon,
)


def wait_gone(info: client.ProxyInfo, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(info.pid, None, info.pid_start):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_it_idles_out_once_the_last_run_is_gone_and_cleans_up(tmp_path: Path) -> None:
    require_proxy_python()
    home = tmp_path / "home"
    info = client.ensure_running(home, idle=1.5, environ=daemon_env())
    try:
        client.register(home, registration("run_idle", secrets.token_hex(32), None))
        time.sleep(2.5)
        assert process_alive(info.pid, None, info.pid_start)  # a registered run keeps it
        assert client.unregister(home, "run_idle")
        assert wait_gone(info, 10)
        proxy_dir = home / "proxy"
        assert not (proxy_dir / "daemon.json").exists()
        assert not (proxy_dir / "control.sock").exists()
        assert not (proxy_dir / "relay" / "proxy.sock").exists()
        assert client.status(home) is None
        assert "no run for" in (proxy_dir / "daemon.log").read_text()
    finally:
        end_daemon(home, info)


def test_concurrent_moats_share_one_daemon_and_reuse_it(tmp_path: Path) -> None:
    python = require_proxy_python()
    home = tmp_path / "home"
    code = ("import sys; from pathlib import Path; from moat.proxy import client; "
            "print(client.ensure_running(Path(sys.argv[1]), idle=0).pid)")
    env = {**daemon_env(), "MOAT_PROXY_PYTHON": str(python)}
    starters = [subprocess.Popen([sys.executable, "-c", code, str(home)], stdout=subprocess.PIPE, text=True, env=env)
                for _ in range(4)]
    pids = {int(p.communicate(timeout=60)[0]) for p in starters}
    info = client.status(home)
    assert info is not None
    try:
        assert pids == {info.pid}
        assert client.ensure_running(home).pid == info.pid
    finally:
        end_daemon(home, info)


def test_a_killed_daemon_is_replaced(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with running_daemon(home) as first:
        os.kill(first.pid, signal.SIGKILL)
        assert wait_gone(first, 10)
        assert (home / "proxy" / "control.sock").exists()  # left behind, stale
        second = client.ensure_running(home, idle=0, environ=daemon_env())
        try:
            assert second.pid != first.pid
            assert json.loads((home / "proxy" / "daemon.json").read_text())["pid"] == second.pid
            assert client.unregister(home, "run_never_registered") is False
        finally:
            end_daemon(home, second)


def test_a_second_daemon_for_the_same_home_refuses_to_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with running_daemon(home) as info:
        second = subprocess.run([str(require_proxy_python()), "-m", "moat.proxy.daemon", "--home", str(home)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 3
        assert "another moat proxy daemon serves" in second.stderr
        assert client.status(home).pid == info.pid  # type: ignore[union-attr]


def test_sigterm_stops_it_cleanly_even_with_clients_connected(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with running_daemon(home) as info:
        token = secrets.token_hex(32)
        client.register(home, registration("run_open", token, None))
        with socket.create_connection(("127.0.0.1", info.port)) as open_client:
            open_client.sendall(b"GET http://moat-host:1/ HTTP/1.1\r\n")  # half a request, then nothing
            time.sleep(0.2)
            os.kill(info.pid, signal.SIGTERM)
            assert wait_gone(info, 10)
        assert not (home / "proxy" / "daemon.json").exists()
        assert not (home / "proxy" / "control.sock").exists()


def test_a_daemon_that_dies_at_start_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named mitmproxy' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MOAT_PROXY_PYTHON", str(fake))
    with pytest.raises(ProxyError) as raised:
        client.ensure_running(tmp_path / "home")
    assert "exited as it started (code 1)" in raised.value.message
    assert "No module named mitmproxy" in (raised.value.hint or "")


def test_proxy_status_and_stop_commands(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"MOAT_HOME": str(home)}
    assert run_moat(["proxy", "status"], env=env).stdout.strip() == "moat's proxy is not running."
    with running_daemon(home) as info:
        client.register(home, registration("run_cli", secrets.token_hex(32), None))
        shown = run_moat(["proxy", "status", "--json"], env=env)
        assert shown.code == 0, shown.output
        status = json.loads(shown.stdout)
        assert (status["running"], status["pid"], status["port"], status["runs"]) == (True, info.pid, info.port,
                                                                                     ["run_cli"])
        text = run_moat(["proxy", "status"], env=env).stdout
        assert f"pid {info.pid}" in text
        assert "- run_cli" in text
        stopped = run_moat(["proxy", "stop"], env=env)
        assert stopped.code == 0
        assert f"Stopped moat's proxy (pid {info.pid})" in stopped.stdout
        assert "run_cli" in stopped.stdout  # the runs that lost it are named
        assert wait_gone(info, 10)
        assert run_moat(["proxy", "stop"], env=env).stdout.strip() == "moat's proxy is not running."
