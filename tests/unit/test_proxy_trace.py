"""The network trace (moat.proxy.trace): what a line holds and what it never holds."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from moat.masking import Masker
from moat.proxy.trace import Exchange, append, record, redact_headers, redact_url

SECRET = "ghp_0123456789abcdefSECRET"


def test_secret_looking_query_values_are_redacted_names_kept() -> None:
    url = "https://h.example/p?page=2&access_token=abc&X-Amz-Signature=f00&api_key=k&code=c&q=token#frag"
    assert redact_url(url) == ("https://h.example/p?page=2&access_token=REDACTED&X-Amz-Signature=REDACTED"
                               "&api_key=REDACTED&code=REDACTED&q=token#frag")
    assert redact_url("https://h.example/p") == "https://h.example/p"
    assert redact_url("https://h.example/p?flag&key") == "https://h.example/p?flag&key"
    assert redact_url("https://h.example/p?my%5Ftoken=x") == "https://h.example/p?my%5Ftoken=REDACTED"


def test_headers_that_carry_credentials_are_redacted() -> None:
    masker = Masker([SECRET])
    headers = [("Authorization", "Bearer x"), ("Proxy-Authorization", "Basic y"), ("Cookie", "a=b"),
               ("X-Api-Key", "k"), ("Private-Token", "t"), ("X-Injected", "z"), ("Accept", "a"),
               ("Accept", "b"), ("X-Echo", f"has {SECRET} inside"), ("Proxy-Connection", "keep-alive")]
    shown = redact_headers(headers, frozenset({"x-injected"}), masker)
    assert shown == {"Authorization": "[REDACTED]", "Cookie": "[REDACTED]", "X-Api-Key": "[REDACTED]",
                     "Private-Token": "[REDACTED]", "X-Injected": "[REDACTED]", "Accept": "a, b",
                     "X-Echo": "has **** inside"}


def test_a_record_has_the_go_fields_and_moats_and_no_secret() -> None:
    masker = Masker([SECRET])
    exchange = Exchange(started=1_700_000_000.25, method="POST", url=f"https://api.github.com/x/{SECRET}?token=t",
                        host="api.github.com", status_code=201, duration_ms=12, req_bytes=3, resp_bytes=4,
                        grants=("github",), req_headers=[("Authorization", f"Bearer {SECRET}")],
                        resp_headers=[("Set-Cookie", "s=1"), ("Content-Type", "application/json")])
    line = record(exchange, masker, frozenset({"authorization"}))
    assert line == {
        "ts": "2023-11-14T22:13:20.250000Z", "method": "POST", "url": "https://api.github.com/x/****?token=REDACTED",
        "host": "api.github.com", "status_code": 201, "duration_ms": 12, "req_bytes": 3, "resp_bytes": 4,
        "grant": "github", "blocked": False, "reason": None,
        "req_headers": {"Authorization": "[REDACTED]"},
        "resp_headers": {"Set-Cookie": "[REDACTED]", "Content-Type": "application/json"},
    }
    assert SECRET not in json.dumps(line)


def test_a_failed_request_says_why_masked() -> None:
    line = record(Exchange(started=0, method="GET", url="https://h/", host="h", error=f"boom {SECRET}",
                           blocked=True, reason=f"why {SECRET}"), Masker([SECRET]), frozenset())
    assert (line["status_code"], line["error"], line["reason"], line["grant"]) == (0, "boom ****", "why ****", None)
    assert "req_headers" not in line


def test_lines_are_appended_to_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "network.jsonl"
    old = os.umask(0)
    try:
        append(str(path), {"a": 1})
        append(str(path), {"b": "é"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"a": 1}, {"b": "é"}]


def test_a_redirect_to_a_presigned_url_is_redacted_in_the_trace() -> None:
    from moat.masking import Masker
    from moat.proxy.trace import Exchange, record

    exchange = Exchange(started=0.0, method="GET", url="https://github.com/o/r/releases/download/v1/x.tgz",
                        host="github.com", status_code=302,
                        resp_headers=[("Location", "https://objects.example/x?X-Amz-Signature=abc123&id=7")])
    line = record(exchange, Masker(frozenset()), frozenset())
    assert line["resp_headers"]["Location"] == "https://objects.example/x?X-Amz-Signature=REDACTED&id=7"
