"""``moat trace --network``: a run's requests through the proxy, as the proxy recorded them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moat.cli.main import main
from tests.unit.test_registry import record

LINES = [
    {"ts": "2026-11-26T10:00:01.123456Z", "method": "GET", "url": "https://api.github.com:443/user", "host":
     "api.github.com", "status_code": 200, "duration_ms": 42, "grant": "github", "blocked": False,
     "req_headers": {"Authorization": "[REDACTED]", "User-Agent": "curl/7.88.1"},
     "resp_headers": {"Content-Type": "application/json"}},
    {"ts": "2026-11-26T10:00:02.000000Z", "method": "CONNECT", "url": "moat-host:22", "host": "moat-host",
     "status_code": 407, "duration_ms": 0, "grant": None, "blocked": True, "reason": "host port 22 not listed"},
]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    record(home, "run_000000000001", "traced", "2026-11-26T10:00:00Z")
    record(home, "run_000000000002", "quiet", "2026-11-26T09:00:00Z")
    trace = home / "runs" / "run_000000000001" / "network.jsonl"
    # A line cut short (the proxy killed while writing) is skipped, not an error.
    trace.write_text("".join(json.dumps(line) + "\n" for line in LINES) + '{"ts": "2026-11-26T10:0')
    monkeypatch.setenv("MOAT_HOME", str(home))
    return home


def test_each_request_on_a_line_with_its_grant_and_refusals(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "--network", "traced"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "[10:00:01.123] GET https://api.github.com:443/user 200 (42ms)  [grant github]",
        "[10:00:02.000] CONNECT moat-host:22 407 (0ms)  [blocked: host port 22 not listed]",
    ]


def test_verbose_adds_the_headers_as_recorded(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "--network", "-v", "run_000000000001"]) == 0
    out = capsys.readouterr().out
    assert "  Request Headers:\n    Authorization: [REDACTED]\n    User-Agent: curl/7.88.1" in out
    assert "  Response Headers:\n    Content-Type: application/json" in out


def test_json_gives_the_records(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "--network", "--json", "traced"]) == 0
    assert json.loads(capsys.readouterr().out) == LINES


def test_a_run_without_requests_says_so(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "--network", "quiet"]) == 0
    assert capsys.readouterr().out.strip() == "No network requests recorded"


def test_without_network_it_says_what_it_can_trace(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "traced"]) == 2
    assert "moat trace --network" in capsys.readouterr().err


def test_an_unknown_run_is_a_usage_error(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "--network", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_what_the_agent_sent_cannot_drive_the_terminal_and_odd_records_do_not_crash(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = home / "runs" / "run_000000000002" / "network.jsonl"
    odd = [{"ts": "2026-11-26T10:00:03.000000Z", "method": "GET", "url": "https://x/\x1b]0;pwned\x07",
            "req_headers": {"X-Evil": "a\x1b]52;c;Y2xpcA==\x07b"}, "status_code": 200, "duration_ms": 1},
           {"ts": 5, "method": ["x"], "req_headers": ["a", "b"], "req_body": {"k": 1}, "duration_ms": None}]
    trace.write_text("".join(json.dumps(r) + "\n" for r in odd) + '{"ts": "x", "duration_ms": Infinity}\n')
    assert main(["trace", "--network", "-v", "quiet"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b]0;pwned\\x07" in out
    assert main(["trace", "--network", "--json", "quiet"]) == 0
    assert "Infinity" not in capsys.readouterr().out
