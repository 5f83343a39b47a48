"""Validating a token against the provider's ``validate`` request: a loopback server of the test's
own stands in for the provider and records what it received."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from moat.credentials.providers.model import TOKEN, TokenCheck
from moat.credentials.tokencheck import TokenRejected, check_token

SECRET = "tok-VALID-0123456789"


class Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str, dict[str, str]]]] = []
    status = 200

    def _answer(self) -> None:
        Recorder.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(Recorder.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _answer  # http.server's names

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    Recorder.seen = []
    Recorder.status = 200
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_a_2xx_answer_accepts_the_token_sent_as_the_provider_says(server: str) -> None:
    check = TokenCheck(f"{server}/user", "GET", (("Authorization", f"Bearer {TOKEN}"), ("Accept", "x/y")))
    check_token("github", check, SECRET)
    method, path, headers = Recorder.seen[0]
    assert (method, path) == ("GET", "/user")
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert headers["accept"] == "x/y"
    assert headers["user-agent"] == "moat"


def test_a_token_in_the_url(server: str) -> None:
    check_token("telegram", TokenCheck(f"{server}/bot{TOKEN}/getMe", "POST"), SECRET)
    method, path, headers = Recorder.seen[0]
    assert (method, path) == ("POST", f"/bot{SECRET}/getMe")
    assert "authorization" not in headers


@pytest.mark.parametrize(("status", "expected"), [
    (401, "invalid token (401 Unauthorized)"),
    (403, "token rejected (403 Forbidden)"),
    (429, "rate limited"),
    (500, "unexpected status 500 from 127.0.0.1"),
    (302, "unexpected status 302"),
])
def test_refusals_are_named_and_never_show_the_token(server: str, status: int, expected: str) -> None:
    Recorder.status = status
    with pytest.raises(TokenRejected, match=expected.replace("(", r"\(").replace(")", r"\)")) as caught:
        check_token("telegram", TokenCheck(f"{server}/bot{TOKEN}/getMe"), SECRET)
    assert SECRET not in caught.value.render()
    assert "--no-validate" in (caught.value.hint or "")


def test_an_unreachable_provider_is_an_error_without_the_url(server: str) -> None:
    with socket.socket() as probe:  # a port nothing listens on any more
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(TokenRejected, match="did not answer") as caught:
        check_token("telegram", TokenCheck(f"{closed}/bot{TOKEN}/getMe"), SECRET, timeout=2)
    assert SECRET not in caught.value.render()
