"""The control socket's requests and replies (moat.proxy.control), against a stand-in daemon."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from moat.credentials.rules import Registration
from moat.proxy import protocol
from moat.proxy.control import answer

SECRET = "s3cret-token-value-0123456789"


class FakeDaemon:
    def __init__(self) -> None:
        self.registered: list[Registration] = []
        self.stopping = False
        self.touched = 0

    def register(self, registration: Registration) -> None:
        if registration.run_id == "refused":
            raise ValueError("a run's proxy token must be at least 16 characters")
        self.registered.append(registration)

    def unregister(self, run_id: str) -> bool:
        return run_id == "run_a"

    async def listen(self, host: str) -> int:
        if host == "bad":
            raise ValueError("'bad' is not an IP address")
        if host == "10.9.9.9":
            raise OSError(99, "Cannot assign requested address")
        return 40000

    def status(self) -> dict[str, Any]:
        return {"pid": 1, "runs": []}

    def stop(self) -> None:
        self.stopping = True

    def touch(self) -> None:
        self.touched += 1


def ask(daemon: FakeDaemon, message: object) -> tuple[dict[str, Any], bool]:
    line = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n"
    return asyncio.run(answer(daemon, line))


def test_each_request_gets_its_reply() -> None:
    daemon = FakeDaemon()
    registration = Registration(run_id="run_a", token=SECRET)
    assert ask(daemon, {"op": "register", "registration": registration.to_json()}) == ({"ok": True}, False)
    assert daemon.registered == [registration]
    assert ask(daemon, {"op": "unregister", "run_id": "run_a"}) == ({"ok": True, "removed": True}, False)
    assert ask(daemon, {"op": "unregister", "run_id": "run_x"}) == ({"ok": True, "removed": False}, False)
    assert ask(daemon, {"op": "listen", "host": "172.17.0.1"}) == ({"ok": True, "port": 40000}, False)
    assert ask(daemon, {"op": "status"}) == ({"ok": True, "pid": 1, "runs": []}, False)
    assert ask(daemon, {"op": "stop"}) == ({"ok": True}, True)
    assert daemon.touched == 6  # every request keeps an idle daemon up a while longer


def test_bad_requests_are_answered_not_fatal() -> None:
    daemon = FakeDaemon()
    assert ask(daemon, b"not json\n")[0]["code"] == protocol.CODE_BAD_REQUEST
    assert ask(daemon, b"[1, 2]\n")[0]["code"] == protocol.CODE_BAD_REQUEST
    assert ask(daemon, {"op": "dance"})[0] == protocol.error("unknown request 'dance'", protocol.CODE_BAD_REQUEST)
    assert ask(daemon, {"op": "listen", "host": "bad"})[0]["error"] == "listen: 'bad' is not an IP address"
    assert ask(daemon, {"op": "listen", "host": "10.9.9.9"})[0] == protocol.error(
        "listen: Cannot assign requested address")


def test_a_registration_is_never_echoed_in_an_error() -> None:
    daemon = FakeDaemon()
    malformed = {"run_id": "run_a", "token": SECRET, "grants": [{"grant": "g", "injections": [{"hosts": SECRET}]}],
                 "host_ports": [SECRET]}
    reply, _ = ask(daemon, {"op": "register", "registration": malformed})
    assert reply["ok"] is False and reply["code"] == protocol.CODE_BAD_REQUEST
    assert "malformed registration" in reply["error"]
    assert SECRET not in json.dumps(reply)
    reply, _ = ask(daemon, {"op": "register", "registration": {"run_id": "refused", "token": SECRET}})
    assert reply["error"] == "register: a run's proxy token must be at least 16 characters"
    assert ask(daemon, {"op": "register", "registration": "text"})[0]["code"] == protocol.CODE_BAD_REQUEST


def test_a_stopping_daemon_refuses_all_but_status() -> None:
    daemon = FakeDaemon()
    daemon.stopping = True
    reply, _ = ask(daemon, {"op": "register", "registration": Registration("run_a", SECRET).to_json()})
    assert reply["code"] == protocol.CODE_STOPPING
    assert ask(daemon, {"op": "status"})[0]["ok"] is True
    assert daemon.registered == []
