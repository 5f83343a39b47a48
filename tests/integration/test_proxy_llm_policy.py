"""claude.llm-gateway in the real proxy daemon: Anthropic's answers (the stand-in's, reached as
api.anthropic.com through the stand-in corporate proxy) are judged by the run's Keep rules —
whole or streamed — denied answers become Keep's 400 policy_denied, the API's own errors pass as
they are, and the trace says which rule denied."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from moat.credentials.rules import Registration
from moat.policy.keep import parse_rules
from moat.proxy import client
from tests.integration.proxy_support import curl, daemon_env, make_ca, require_curl, running_daemon, wait_for_trace
from tests.llm_standin import OVERLOADED, REPLY_PREFIX, LlmStandIn, llm_standin
from tests.upstream import stand_in_proxy

RULES = {"scope": "llm-gateway", "rules": [
    {"name": "deny-edit", "match": {"operation": "llm.tool_use", "when": "params.name == 'edit'"}, "action": "deny",
     "message": "File editing is blocked by policy."},
    {"name": "log-tools", "match": {"operation": "llm.tool_use"}, "action": "log"},
]}


@dataclass
class Gateway:
    home: Path
    info: client.ProxyInfo
    llm: LlmStandIn
    token: str
    trace: Path

    def ask(self, prompt: str, *, stream: bool) -> tuple[int, str, str]:
        body = json.dumps({"model": "m", "max_tokens": 10, "stream": stream,
                           "messages": [{"role": "user", "content": prompt}]})
        result = curl(self.info, self.token, "https://api.anthropic.com/v1/messages", "-i", "-X", "POST",
                      "-H", "content-type: application/json", "--data", body)
        head, _, payload = result.stdout.partition("\n\n")
        while head.startswith("HTTP/1.1 200 Connection established"):  # the CONNECT's own answer
            head, _, payload = payload.partition("\n\n")
        return int(head.split()[1]), head, payload


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    require_curl()
    tmp = tmp_path_factory.mktemp("llm-policy")
    ca = make_ca(tmp / "ca")
    with llm_standin(ca) as llm, stand_in_proxy(llm.port) as corporate:
        url = f"http://127.0.0.1:{corporate.port}"
        env = daemon_env(HTTPS_PROXY=url, HTTP_PROXY=url, SSL_CERT_FILE=str(ca.cert_file))
        with running_daemon(tmp / "home", env=env) as info:
            token = secrets.token_hex(32)
            trace = tmp / "home" / "runs" / "run_llm" / "network.jsonl"
            trace.parent.mkdir(parents=True)
            rules = parse_rules(RULES, "llm-gateway")
            client.register(tmp / "home", Registration(run_id="run_llm", token=token, trace_file=str(trace),
                                                       extra={"llm_policy": rules.to_json()}))
            yield Gateway(tmp / "home", info, llm, token, trace)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_answer_asking_for_a_denied_tool_becomes_policy_denied(gateway: Gateway, stream: bool) -> None:
    status, head, payload = gateway.ask("call Edit", stream=stream)
    assert status == 400, head
    assert json.loads(payload) == {"type": "error", "error": {
        "type": "policy_denied", "message": "Policy denied: deny-edit. File editing is blocked by policy."}}
    assert "toolu_" not in payload  # nothing of the model's answer gets through


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_other_answers_pass_whole(gateway: Gateway, stream: bool) -> None:
    status, head, payload = gateway.ask("call Glob", stream=stream)
    assert status == 200, head
    assert '"name": "Glob"' in payload and REPLY_PREFIX[:10] in payload  # the model's answer, as it was sent


def test_the_apis_own_errors_pass_as_they_are_and_the_trace_names_the_rules(gateway: Gateway) -> None:
    status, head, payload = gateway.ask(OVERLOADED, stream=False)
    assert status == 503 and "retry-after: 7" in head.lower() and payload == "<html>overloaded</html>"
    gateway.ask("call Edit", stream=False)
    lines = wait_for_trace(gateway.trace, 1)
    denied = [line for line in lines if line.get("blocked") and line.get("status_code") == 400]
    assert denied and "claude.llm-gateway: deny-edit" in denied[-1]["reason"]
    gateway.ask("call Glob", stream=False)
    lines = wait_for_trace(gateway.trace, len(lines) + 1)
    assert lines[-1].get("llm_policy_logged") == ["log-tools"]
