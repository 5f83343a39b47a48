"""The real proxy daemon puts grants into requests: real tokens reach the upstream, the agent's
placeholders never do, runs never see each other's grants, and the trace holds no secret.

Upstreams are HTTPS servers on 127.0.0.1 with a test CA the daemon trusts (SSL_CERT_FILE); the
daemon reaches them as api.github.com & co. through an upstream-proxy stand-in in its environment
(HTTPS_PROXY with credentials), which is also how it serves users behind a corporate proxy.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from moat.credentials.rules import GrantRules, HeaderInjection, Substitution
from moat.errors import MoatError
from moat.proxy import client
from tests.integration.proxy_support import (
    Seen,
    StandIn,
    Upstream,
    curl,
    daemon_env,
    make_ca,
    proxy_auth,
    raw_connect,
    registration,
    require_curl,
    running_daemon,
    stand_in_proxy,
    trace_lines,
    tunnel,
    upstream_server,
    wait_for_trace,
)

CORP_AUTH = "corp-user:corp-pw"


@dataclass
class World:
    home: Path
    info: client.ProxyInfo
    upstream: Upstream
    plain: Upstream
    untrusted: Upstream
    stand_in: StandIn
    tmp: Path

    def register(self, run_id: str, *grants: GrantRules) -> tuple[str, Path]:
        token = secrets.token_hex(32)
        trace = self.home / "runs" / run_id / "network.jsonl"  # the only trace a run may have
        trace.parent.mkdir(parents=True, exist_ok=True)
        client.register(self.home, registration(run_id, token, trace, *grants))
        return token, trace

    def last(self, path_prefix: str) -> Seen:
        return [s for s in self.upstream.seen + self.plain.seen if s.path.startswith(path_prefix)][-1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_curl()
    tmp = tmp_path_factory.mktemp("proxy-grants")
    ca = make_ca(tmp / "ca")
    other_ca = make_ca(tmp / "other-ca", "a CA nobody trusts")
    with (upstream_server(ca) as upstream, upstream_server(None) as plain, upstream_server(other_ca) as untrusted,
          stand_in_proxy(upstream.port, {"untrusted.test": untrusted.port, "plain.test": plain.port}) as stand_in):
        env = daemon_env(HTTPS_PROXY=f"http://{CORP_AUTH}@127.0.0.1:{stand_in.port}",
                         HTTP_PROXY=f"http://{CORP_AUTH}@127.0.0.1:{stand_in.port}",
                         NO_PROXY="internal.example", SSL_CERT_FILE=str(ca.cert_file))
        env.pop("SSL_CERT_DIR", None)
        home = tmp / "home"
        with running_daemon(home, env=env) as info:
            yield World(home, info, upstream, plain, untrusted, stand_in, tmp)


def github(token: str) -> GrantRules:
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return GrantRules("github", injections=(
        HeaderInjection(("api.github.com",), (("Authorization", f"Bearer {token}"),)),
        HeaderInjection(("github.com",), (("Authorization", f"Basic {basic}"),)),
    ), values=(token,))


def secrets_absent(text: str, *values: str) -> None:
    for value in values:
        assert value not in text
        assert base64.b64encode(value.encode()).decode() not in text


def test_the_real_token_reaches_the_upstream_in_place_of_the_placeholder(world: World) -> None:
    real = "ghp_" + secrets.token_hex(18)
    token, trace = world.register("run_inject", github(real))
    result = curl(world.info, token, "https://api.github.com/echo/user",
                  "-H", "Authorization: Bearer ghp_moatProxyInjectedPlaceholder000000000000")
    assert result.returncode == 0, result.stderr
    seen = world.last("/echo/user")
    assert seen.header("Authorization") == f"Bearer {real}"
    assert real not in result.stdout  # the echo carries it back scrubbed
    assert seen.header("Accept-Encoding") is None  # asked for uncompressed, so nothing slips past the scrub
    assert seen.header("Proxy-Authorization") is None  # the run's token stays with moat
    assert "moatProxyInjectedPlaceholder" not in json.dumps(seen.headers)
    # Through moat's own upstream proxy, with its credentials on the CONNECT only.
    assert ("api.github.com:443", "Basic " + base64.b64encode(CORP_AUTH.encode()).decode()) in world.stand_in.connects
    [line] = wait_for_trace(trace, 1)
    assert line["grant"] == "github"
    assert line["status_code"] == 200
    assert line["url"] == "https://api.github.com/echo/user"
    assert line["req_headers"]["Authorization"] == "[REDACTED]"
    secrets_absent(trace.read_text(), real, token)


def test_git_gets_basic_auth_and_other_hosts_get_nothing(world: World) -> None:
    real = "ghp_" + secrets.token_hex(18)
    token, _ = world.register("run_git", github(real))
    assert curl(world.info, token, "https://github.com/echo/git/info/refs").returncode == 0
    expected = base64.b64encode(f"x-access-token:{real}".encode()).decode()
    assert world.last("/echo/git/").header("Authorization") == f"Basic {expected}"
    assert curl(world.info, token, "https://api.example.test/echo/other", "-H", "X-Keep: yes").returncode == 0
    other = world.last("/echo/other")
    assert other.header("Authorization") is None
    assert other.header("X-Keep") == "yes"


def test_a_grant_removes_headers_and_joins_list_headers(world: World) -> None:
    oauth = "sk-ant-oat01-" + secrets.token_hex(16)
    claude = GrantRules("claude", injections=(HeaderInjection(
        ("api.anthropic.com",), (("Authorization", f"Bearer {oauth}"), ("anthropic-beta", "oauth-2025-04-20")),
        remove=("x-api-key",)),))
    token, _ = world.register("run_claude", claude)
    connection = tunnel(world.info, token, "api.anthropic.com")
    connection.request("POST", "/echo/messages", body=b"{}", headers={
        "x-api-key": "sk-ant-placeholder", "anthropic-beta": "tools-2024", "Content-Type": "application/json"})
    assert connection.getresponse().status == 200
    connection.close()
    seen = world.last("/echo/messages")
    assert seen.header("x-api-key") is None
    assert seen.header("Authorization") == f"Bearer {oauth}"
    assert seen.header("anthropic-beta") == "tools-2024,oauth-2025-04-20"


def test_no_token_or_a_wrong_one_is_answered_407(world: World) -> None:
    status, headers, body = raw_connect(world.info.port, "api.github.com:443")
    assert status == 407
    assert headers["proxy-authenticate"] == 'Basic realm="moat"'
    assert body == b"Proxy authentication required\n"
    status, headers, body = raw_connect(world.info.port, "api.github.com:443", proxy_auth("not-a-registered-token"))
    assert (status, body) == (407, b"Invalid proxy token\n")
    assert headers["proxy-authenticate"] == 'Basic realm="moat"'
    plain = curl(world.info, None, "http://plain.test/echo/anonymous", "-i")
    assert plain.stdout.startswith("HTTP/1.1 407")
    assert 'Proxy-Authenticate: Basic realm="moat"' in plain.stdout
    assert not [s for s in world.plain.seen if s.path == "/echo/anonymous"]


def test_plain_http_requests_get_grants_too(world: World) -> None:
    real = secrets.token_hex(16)
    rules = GrantRules("plain", injections=(HeaderInjection(("plain.test",), (("X-Api-Key", real),)),))
    token, trace = world.register("run_plain", rules)
    assert curl(world.info, token, "http://plain.test/echo/plain").returncode == 0
    assert world.last("/echo/plain").header("X-Api-Key") == real
    assert world.last("/echo/plain").header("Proxy-Authorization") is None
    [line] = wait_for_trace(trace, 1)
    assert (line["grant"], line["url"]) == ("plain", "http://plain.test/echo/plain")
    secrets_absent(trace.read_text(), real, token)


def test_tokens_are_substituted_in_path_query_headers_and_body(world: World) -> None:
    real = "123456:" + secrets.token_hex(16)
    placeholder = "moat-" + secrets.token_hex(8)
    telegram = GrantRules("telegram", substitutions=(Substitution(("api.telegram.org",), placeholder, real),))
    token, trace = world.register("run_telegram", telegram)
    body = json.dumps({"text": f"token {placeholder}"})
    result = curl(world.info, token, f"https://api.telegram.org/echo/bot{placeholder}/send?key={placeholder}&x=1",
                  "-H", f"X-Token: {placeholder}", "-H", "Content-Type: application/json", "--data", body)
    assert result.returncode == 0, result.stderr
    seen = world.last("/echo/bot")
    assert seen.path == f"/echo/bot{real}/send?key={real}&x=1"
    assert seen.header("X-Token") == real
    assert json.loads(seen.body) == {"text": f"token {real}"}
    assert seen.header("Content-Length") == str(len(seen.body))
    # The upstream echoes the request: the agent must not get the token back that way (review).
    assert real not in result.stdout and "*" * len(real) in result.stdout
    assert json.loads(result.stdout)["path"] == f"/echo/bot{'*' * len(real)}/send?key={'*' * len(real)}&x=1"
    # Another host keeps the placeholder: a grant's value goes only where the grant says.
    assert curl(world.info, token, f"https://api.example.test/echo/elsewhere/{placeholder}").returncode == 0
    assert world.last("/echo/elsewhere/").path == f"/echo/elsewhere/{placeholder}"
    lines = wait_for_trace(trace, 2)
    assert [line["grant"] for line in lines] == ["telegram", None]
    assert "key=REDACTED" in lines[0]["url"]
    secrets_absent(trace.read_text(), real, token)


def test_server_sent_events_arrive_as_they_are_sent(world: World) -> None:
    token, _ = world.register("run_sse")
    world.upstream.gate.clear()
    connection = tunnel(world.info, token, "api.github.com", timeout=10)
    connection.request("GET", "/sse")
    response = connection.getresponse()
    assert response.getheader("Content-Type") == "text/event-stream"
    # The upstream holds its second event until the test has read the first: a proxy that
    # buffered the stream would deliver nothing before the timeout.
    assert response.readline() == b"data: one\n"
    assert world.upstream.sse_first_sent.is_set()
    world.upstream.gate.set()
    assert b"data: two" in response.read()
    connection.close()


def test_runs_do_not_see_each_others_grants(world: World) -> None:
    real_a, real_b = "ghp_a" + secrets.token_hex(16), "ghp_b" + secrets.token_hex(16)
    token_a, trace_a = world.register("run_a", github(real_a))
    token_b, trace_b = world.register("run_b", github(real_b))
    token_c, _ = world.register("run_c")
    for token, path in ((token_a, "/echo/a"), (token_b, "/echo/b"), (token_c, "/echo/c"), (token_a, "/echo/a2")):
        assert curl(world.info, token, f"https://api.github.com{path}").returncode == 0
    assert world.last("/echo/a2").header("Authorization") == f"Bearer {real_a}"
    assert world.last("/echo/b").header("Authorization") == f"Bearer {real_b}"
    assert world.last("/echo/c").header("Authorization") is None
    assert len(wait_for_trace(trace_a, 2)) == 2
    assert "/echo/b" not in trace_a.read_text()
    secrets_absent(trace_b.read_text(), real_a, real_b, token_a, token_b)


def test_unregister_ends_the_run_even_on_an_open_connection(world: World) -> None:
    real = "ghp_" + secrets.token_hex(18)
    token, _ = world.register("run_gone", github(real))
    connection = tunnel(world.info, token, "api.github.com")
    for n in range(3):  # one tunnel, several requests: each gets the grant
        connection.request("GET", f"/echo/kept/{n}")
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        assert world.last(f"/echo/kept/{n}").header("Authorization") == f"Bearer {real}"
    assert client.unregister(world.home, "run_gone") is True
    assert client.unregister(world.home, "run_gone") is False  # idempotent
    connection.request("GET", "/echo/kept/after")
    response = connection.getresponse()
    assert response.status == 407
    connection.close()
    assert not [s for s in world.upstream.seen if s.path == "/echo/kept/after"]
    assert raw_connect(world.info.port, "api.github.com:443", proxy_auth(token))[0] == 407


def test_an_upstream_certificate_moat_does_not_trust_is_refused(world: World) -> None:
    token, trace = world.register("run_untrusted")
    result = curl(world.info, token, "https://untrusted.test/echo/mitm", "-i")
    assert "\nHTTP/2 502" in result.stdout  # after curl's own "200 Connection established"
    assert not world.untrusted.seen
    [line] = wait_for_trace(trace, 1)
    assert line["status_code"] == 502
    assert "certificate" in line["error"].lower()


def test_a_large_download_streams_through_and_is_counted(world: World) -> None:
    token, trace = world.register("run_big")
    size = 20 * 1024 * 1024
    result = curl(world.info, token, f"https://api.github.com/bytes/{size}", "-o", "/dev/null",
                  "-w", "%{size_download}")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == size
    [line] = wait_for_trace(trace, 1)
    assert line["resp_bytes"] == size


def test_http2_clients_get_grants_too(world: World) -> None:
    real = "ghp_" + secrets.token_hex(18)
    token, _ = world.register("run_h2", github(real))
    result = curl(world.info, token, "https://api.github.com/echo/h2", "--http2", "-o", "/dev/null",
                  "-w", "%{http_version}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "2"
    assert world.last("/echo/h2").header("Authorization") == f"Bearer {real}"


def test_the_trace_has_every_field_and_no_secret(world: World) -> None:
    real = "ghp_" + secrets.token_hex(18)
    token, trace = world.register("run_trace", github(real))
    curl(world.info, token, f"https://api.github.com/echo/t?access_token={real}&page=2",
         "-H", "Cookie: session=abc", "-H", f"X-Echo: {real}")
    [line] = wait_for_trace(trace, 1)
    assert set(line) >= {"ts", "method", "url", "host", "status_code", "duration_ms", "req_bytes", "resp_bytes",
                         "grant", "blocked", "reason", "req_headers", "resp_headers"}
    assert line["url"] == "https://api.github.com/echo/t?access_token=REDACTED&page=2"
    assert line["host"] == "api.github.com"
    headers = {name.lower(): value for name, value in line["req_headers"].items()}  # HTTP/2 spells them so
    assert headers["cookie"] == "[REDACTED]"
    assert headers["x-echo"] == "****"
    assert headers["authorization"] == "[REDACTED]"
    assert "proxy-authorization" not in headers
    assert line["resp_bytes"] > 0
    assert line["ts"].endswith("Z")
    assert (trace.stat().st_mode & 0o777) == 0o600
    secrets_absent(trace.read_text(), real, token)
    assert trace_lines(trace) == [line]


def test_a_tls_client_that_refuses_moats_ca_is_named_in_the_trace(world: World) -> None:
    token, trace = world.register("run_distrust")
    context = ssl.create_default_context()  # the machine's roots, not moat's CA
    with socket.create_connection(("127.0.0.1", world.info.port), timeout=10) as sock:
        sock.sendall(f"CONNECT api.github.com:443 HTTP/1.1\r\nProxy-Authorization: {proxy_auth(token)}\r\n\r\n"
                     .encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        with pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(sock, server_hostname="api.github.com")
    [line] = wait_for_trace(trace, 1)
    assert "moat's CA" in line["error"]


def test_a_registration_may_only_trace_into_its_own_record(world: World) -> None:
    # Whoever reaches the control socket must not make the daemon append to a file of their choosing.
    elsewhere = world.tmp / "not-a-trace.sh"
    with pytest.raises(MoatError, match="a run's trace is"):
        client.register(world.home, registration("run_elsewhere", secrets.token_hex(32), elsewhere))
    with pytest.raises(MoatError, match="a run's trace is"):
        client.register(world.home, registration("run_x", secrets.token_hex(32),
                                                 world.home / "runs" / "run_y" / "network.jsonl"))
    assert not elsewhere.exists()


def test_server_sent_events_from_a_granted_host_are_not_held_back_either(world: World) -> None:
    # The response scrubber once held back the last bytes of every chunk: an event never came alone.
    token, _ = world.register("run_sse_granted", github("ghp_" + secrets.token_hex(18)))
    world.upstream.gate.clear()
    connection = tunnel(world.info, token, "api.github.com", timeout=10)
    connection.request("GET", "/sse")
    response = connection.getresponse()
    assert response.readline() == b"data: one\n"
    world.upstream.gate.set()
    assert b"data: two" in response.read()
    connection.close()


@pytest.mark.parametrize("header", [b"Bearer \xff", b"Basic \xe9\xe9", b"Basic bW9hdDrp"])
def test_a_malformed_proxy_authorization_is_refused_not_let_through(world: World, header: bytes) -> None:
    # A header that made the authentication fail with an error let mitmproxy carry on: an open proxy.
    for request in (b"CONNECT api.github.com:443 HTTP/1.1\r\nHost: api.github.com:443\r\n",
                    b"GET http://api.github.com/x HTTP/1.1\r\nHost: api.github.com\r\n"):
        with socket.create_connection(("127.0.0.1", world.info.port), timeout=10) as sock:
            sock.sendall(request + b"Proxy-Authorization: " + header + b"\r\n\r\n")
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 407"), answer[:80]


def test_a_refused_upload_is_cut_off_not_read_into_memory(world: World) -> None:
    with socket.create_connection(("127.0.0.1", world.info.port), timeout=10) as sock:
        sock.sendall(b"POST http://api.github.com/upload HTTP/1.1\r\nHost: api.github.com\r\n"
                     b"Content-Length: 629145600\r\n\r\n" + b"x" * 65536)
        sock.settimeout(5)
        answer = b""
        with contextlib.suppress(ConnectionError):
            while chunk := sock.recv(65536):
                answer += chunk
    assert not answer.startswith(b"HTTP/1.1 200")  # closed (or refused) at once, without 600 MB read


def test_a_strict_policy_admits_listed_hosts_and_allowed_requests_only(world: World) -> None:
    from moat.credentials.rules import Registration
    from moat.policy.rules import NetworkPolicy, parse_host_rules

    policy = NetworkPolicy(True, (parse_host_rules("api.github.com", ["allow GET /echo/repos/**"]),),
                           granted=("github.com",))
    token = secrets.token_hex(32)
    trace = world.home / "runs" / "run_strict" / "network.jsonl"
    trace.parent.mkdir(parents=True, exist_ok=True)
    client.register(world.home, Registration("run_strict", token, trace_file=str(trace),
                                             extra={"policy": policy.to_json()}))
    assert curl(world.info, token, "https://api.github.com/echo/repos/o/r").returncode == 0  # a rule allows it
    assert curl(world.info, token, "https://github.com/echo/x").returncode == 0  # a grant's host
    denied = curl(world.info, token, "https://api.github.com/echo/user", "-i")  # no rule: strict denies
    shown = denied.stdout.lower()  # inside the tunnel it is HTTP/2: lower-case header names
    assert "http/2 407" in shown and "x-moat-blocked: request-rule" in shown
    assert "proxy-authenticate: moat-policy" in shown and "- allow GET /echo/user" in denied.stdout
    status, headers, body = raw_connect(world.info.port, "evil.example:443", proxy_auth(token))
    assert (status, headers["x-moat-blocked"]) == (407, "request-rule")
    assert b'Host "evil.example" is not in the allow list' in body and b"      - evil.example" in body
    assert not [s for s in world.stand_in.connects if s[0].startswith("evil.example")]  # never left
    lines = wait_for_trace(trace, 4)
    assert [(line["blocked"], line["url"].split("?")[0]) for line in lines if line["blocked"]] == [
        (True, "https://api.github.com/echo/user"), (True, "evil.example:443")]


def test_a_policy_that_does_not_parse_is_refused_at_registration(world: World) -> None:
    from moat.credentials.rules import Registration

    policy = {"hosts": [{"host": "x.example", "rules": ["alow GET /"]}]}
    bad = Registration("run_badpolicy", secrets.token_hex(32), extra={"policy": policy})
    with pytest.raises(MoatError, match="its network policy"):
        client.register(world.home, bad)


def _strict(world: World, run_id: str, *entries: tuple[str, list[str]]) -> tuple[str, Path]:
    from moat.credentials.rules import Registration
    from moat.policy.rules import NetworkPolicy, parse_host_rules

    policy = NetworkPolicy(True, tuple(parse_host_rules(host, rules) for host, rules in entries))
    token = secrets.token_hex(32)
    trace = world.home / "runs" / run_id / "network.jsonl"
    trace.parent.mkdir(parents=True, exist_ok=True)
    client.register(world.home, Registration(run_id, token, trace_file=str(trace), extra={"policy": policy.to_json()}))
    return token, trace


def _raw_tunnel(world: World, token: str, target: str) -> socket.socket:
    """A CONNECT the proxy accepted, left open for raw bytes."""
    sock = socket.create_connection(("127.0.0.1", world.info.port), timeout=10)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
                 f"Proxy-Authorization: {proxy_auth(token)}\r\n\r\n".encode())
    head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def test_a_host_the_policy_refuses_is_refused_before_its_name_is_looked_up(world: World) -> None:
    # A lookup is a way out (the name carries data to a resolver, the answer comes back): the
    # policy's refusal comes first, as a request rule, not as what the name resolved to.
    token, _ = _strict(world, "run_nolookup", ("api.github.com", []))
    for url in ("http://localhost:9/x", "https://localhost:9/x"):
        result = curl(world.info, token, url, "-i", "--proxy-header", "X-Probe: 1")
        assert "x-moat-blocked: request-rule" in result.stdout.lower(), (url, result.stdout, result.stderr)
        assert "loopback" not in result.stdout  # nothing about what the name is


def test_raw_bytes_in_a_tunnel_to_a_host_with_rules_are_cut(world: World) -> None:
    # mitmproxy relays a tunnel whose first bytes do not look like HTTP as raw TCP; a request split
    # after its first byte would pass the rules unread. The tunnel is cut when it starts.
    token, trace = _strict(world, "run_rawtcp", ("api.github.com", ["allow GET /echo/ok/**"]))
    with _raw_tunnel(world, token, "api.github.com:80") as sock:
        sock.sendall(b"P")
        time.sleep(0.3)
        with contextlib.suppress(OSError):
            sock.sendall(b"OST /echo/admin HTTP/1.1\r\nHost: api.github.com\r\nContent-Length: 0\r\n\r\n")
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    assert b"HTTP/1.1 200" not in answer
    assert not [r for r in world.upstream.seen if "/admin" in r.path]
    lines = wait_for_trace(trace, 1)
    assert [(line["method"], line["blocked"]) for line in lines] == [("TCP", True)], lines
    assert "carries no HTTP" in lines[0]["reason"]


def test_raw_bytes_to_a_host_the_policy_allows_whole_pass(world: World) -> None:
    # The first entry that names the host decides, as for requests (review): listed whole, it is open.
    token, trace = _strict(world, "run_rawok", ("api.github.com", []), ("*.github.com", ["allow GET /x/**"]))
    with _raw_tunnel(world, token, "api.github.com:80") as sock:
        sock.sendall(b"P")
        time.sleep(0.3)
    lines = wait_for_trace(trace, 1)
    assert [(line["method"], line["blocked"]) for line in lines] == [("TCP", False)], lines
