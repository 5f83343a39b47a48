"""claude.llm-gateway: Keep rules read and checked before the run, evaluated as Keep evaluates them,
over Anthropic answers decomposed as Keep decomposes them (whole or streamed); fail closed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from moat.cli.runinputs import read_llm_policy
from moat.errors import ConfigError
from moat.policy.keep import Evaluator, KeepError, RuleSet, inline_rules, parse_rules
from moat.proxy import llmpolicy
from tests.unit.support import parse, plan_for

READ_ONLY = {
    "scope": "llm-gateway", "mode": "enforce",
    "defs": {"is_write": "params.name == 'write' || params.name == 'edit'"},
    "rules": [
        {"name": "deny-write", "match": {"operation": "llm.tool_use", "when": "is_write"}, "action": "deny",
         "message": "File writing is blocked by policy."},
        {"name": "log-everything", "match": {"operation": "llm.*"}, "action": "log"},
    ],
}


def evaluator(data: dict[str, Any] = READ_ONLY) -> Evaluator:
    return Evaluator(parse_rules(data, "llm-gateway"))


def test_a_rule_denies_what_it_matches_whatever_the_tools_case() -> None:
    ev = evaluator()
    denied = ev.evaluate("llm.tool_use", {"name": "Edit", "input": {"file_path": "/workspace/a"}})
    assert (denied.denied, denied.rule, denied.message) == (True, "deny-write", "File writing is blocked by policy.")
    allowed = ev.evaluate("llm.tool_use", {"name": "Read", "input": {}})
    assert not allowed.denied and allowed.logged == ("log-everything",)
    sensitive = evaluator({**READ_ONLY, "case_sensitive": True})
    assert not sensitive.evaluate("llm.tool_use", {"name": "Edit", "input": {}}).denied


def test_exact_operations_are_judged_before_globs_and_audit_only_denies_nothing() -> None:
    data = {"scope": "llm-gateway", "rules": [
        {"name": "deny-all", "match": {"operation": "llm.*"}, "action": "deny"},
        {"name": "deny-tools", "match": {"operation": "llm.tool_use"}, "action": "deny"},
    ]}
    assert evaluator(data).evaluate("llm.tool_use", {"name": "x"}).rule == "deny-tools"
    assert evaluator(data).evaluate("llm.response", {}).rule == "deny-all"
    audit = evaluator({**data, "mode": "audit_only"}).evaluate("llm.tool_use", {"name": "x"})
    assert not audit.denied and audit.logged == ("deny-tools", "deny-all")


def test_an_expression_that_fails_denies_unless_on_error_is_open() -> None:
    data = {"scope": "llm-gateway", "rules": [
        {"name": "needs-path", "match": {"operation": "llm.tool_use", "when": "params.input.path == 'x'"},
         "action": "deny"}]}
    closed = evaluator(data).evaluate("llm.tool_use", {"name": "bash", "input": {}})
    assert closed.denied and "fail-closed" in closed.message
    assert not evaluator({**data, "on_error": "open"}).evaluate("llm.tool_use", {"name": "bash", "input": {}}).denied


@pytest.mark.parametrize("data, message", [
    ({"rules": []}, "at least one rule"),
    ({"packs": [{"name": "linear-readonly"}], "rules": [{"name": "a", "action": "deny"}]}, "packs are not supported"),
    ({"rules": [{"name": "a", "action": "redact", "redact": {"target": "params.text"}}]}, "redaction"),
    ({"rules": [{"name": "a", "action": "allow"}]}, "one of deny, log"),
    ({"rules": [{"name": "a", "action": "deny"}, {"name": "a", "action": "log"}]}, "two rules are named 'a'"),
    ({"scope": "http", "rules": [{"name": "a", "action": "deny"}]}, "this policy is for 'llm-gateway'"),
    ({"version": "v2", "rules": [{"name": "a", "action": "deny"}]}, "version 'v2'"),
    ({"mode": "loud", "rules": [{"name": "a", "action": "deny"}]}, "mode 'loud'"),
    ({"rules": [{"name": "a", "action": "deny", "match": {"operation": "x", "if": "y"}}]}, "match: has"),
])
def test_what_moat_cannot_evaluate_is_refused_never_skipped(data: dict[str, Any], message: str) -> None:
    with pytest.raises(KeepError, match=message):
        parse_rules(data, "llm-gateway")


def test_an_expression_that_is_not_cel_is_refused_when_compiled() -> None:
    with pytest.raises(KeepError, match="rule 'bad': its when: is not CEL"):
        evaluator({"rules": [{"name": "bad", "match": {"when": "params.name =="}, "action": "deny"}]})


def test_the_rules_travel_to_the_proxy_unchanged() -> None:
    rules = parse_rules(READ_ONLY, "llm-gateway")
    assert RuleSet.from_json(json.loads(json.dumps(rules.to_json()))) == rules
    inline = inline_rules(["llm.tool_use"], "audit", "llm-gateway")
    assert inline.mode == "audit_only" and inline.rules[0].name == "deny-llm.tool_use"
    assert RuleSet.from_json(inline.to_json()) == inline


# -- Anthropic's answers --------------------------------------------------------------------------

TOOL = {"type": "tool_use", "id": "toolu_1", "name": "Edit", "input": {"file_path": "/workspace/moat.yaml"}}
MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "stop_reason": "tool_use",
           "content": [{"type": "text", "text": "I will edit it."}, TOOL]}


def _sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return "".join(f"event: {kind}\ndata: {json.dumps(data)}\n\n" for kind, data in events).encode()


def _streamed(message: dict[str, Any]) -> bytes:
    tool_input = json.dumps(TOOL["input"])
    return _sse(("message_start", {"type": "message_start", "message": {**message, "content": [],
                                                                         "stop_reason": None}}),
                ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
                ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "I will"}}),
                ("ping", {"type": "ping"}),
                ("content_block_start", {"index": 1, "content_block": {**TOOL, "input": {}}}),
                ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta",
                                                               "partial_json": tool_input[:10]}}),
                ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta",
                                                               "partial_json": tool_input[10:]}}),
                ("message_delta", {"delta": {"stop_reason": "tool_use"}}),
                ("message_stop", {"type": "message_stop"}))


def test_an_answer_is_decomposed_as_keep_decomposes_it() -> None:
    assert list(llmpolicy.decompose(MESSAGE)) == [
        ("llm.response", {"stop_reason": "tool_use", "tool_use_count": 1}),
        ("llm.tool_use", {"name": "Edit", "input": {"file_path": "/workspace/moat.yaml"}}),
    ]


def test_a_streamed_answer_is_put_back_together_with_its_tool_input() -> None:
    message = llmpolicy.reassemble(_streamed(MESSAGE))
    assert message["stop_reason"] == "tool_use"
    assert message["content"][0]["text"] == "I will"
    assert message["content"][1]["input"] == TOOL["input"]


@pytest.mark.parametrize("body, content_type", [
    (json.dumps(MESSAGE).encode(), "application/json"),
    (_streamed(MESSAGE), "text/event-stream; charset=utf-8"),
])
def test_a_denied_answer_becomes_keeps_policy_denied_error(body: bytes, content_type: str) -> None:
    verdict = llmpolicy.judge(evaluator(), body, content_type)
    assert (verdict.denied, verdict.rule, verdict.message) == (True, "deny-write", "File writing is blocked by policy.")
    assert verdict.logged == ("log-everything",)  # the summary call matched the log rule first
    assert json.loads(llmpolicy.denied_body(verdict)) == {"type": "error", "error": {
        "type": "policy_denied", "message": "Policy denied: deny-write. File writing is blocked by policy."}}


@pytest.mark.parametrize("body, content_type", [
    (b"{not json", "application/json"),
    (b"event: content_block_start\ndata: {}\n\n", "text/event-stream"),  # no message_start
    (b"x" * (llmpolicy.MAX_BODY + 1), "application/json"),
])
def test_an_answer_that_cannot_be_read_is_denied(body: bytes, content_type: str) -> None:
    verdict = llmpolicy.judge(evaluator(), body, content_type)
    assert verdict.denied and verdict.rule == "evaluation-error"


def test_only_the_messages_api_of_anthropic_is_judged() -> None:
    assert llmpolicy.applies("api.anthropic.com", "POST", "/v1/messages?beta=true")
    assert not llmpolicy.applies("api.anthropic.com", "POST", "/v1/messages/count_tokens")
    assert not llmpolicy.applies("api.openai.com", "POST", "/v1/messages")


# -- read before the run ----------------------------------------------------------------------------

def _config(workspace: Path, policy: str) -> Any:
    return parse(f"claude:\n  llm-gateway:\n    policy: {policy}\n", file=workspace / "moat.yaml")


def test_a_rule_file_in_the_workspace_and_an_inline_list_are_read(tmp_path: Path) -> None:
    (tmp_path / ".keep").mkdir()
    (tmp_path / ".keep" / "read-only.yaml").write_text(json.dumps(READ_ONLY))
    rules = read_llm_policy(_config(tmp_path, ".keep/read-only.yaml"), tmp_path)
    assert rules is not None and [r.name for r in rules.rules] == ["deny-write", "log-everything"]
    inline = read_llm_policy(_config(tmp_path, "{deny: [llm.tool_use], mode: audit}"), tmp_path)
    assert inline is not None and inline.mode == "audit_only"


@pytest.mark.parametrize("policy, files, message", [
    (".keep/missing.yaml", {}, "cannot read the rule file"),
    ("linear-readonly", {}, "policy packs, which moat does not provide yet"),
    ("{deny: []}", {}, "at least one operation under deny"),
    ("bad.yaml", {"bad.yaml": "rules: [{name: a, action: deny, match: {when: 'params.x =='}}]"}, "is not CEL"),
    ("bad.yaml", {"bad.yaml": "rules: [\n"}, "is not valid YAML"),
])
def test_a_policy_moat_cannot_use_is_a_located_error(tmp_path: Path, policy: str, files: dict[str, str],
                                                      message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_llm_policy(_config(tmp_path, policy), tmp_path)
    [problem] = caught.value.problems
    assert message in problem.message and problem.line == 3


def test_the_plan_registers_the_rules_with_the_proxy_even_without_grants(tmp_path: Path) -> None:
    rules = inline_rules(["llm.tool_use"], "", "llm-gateway")
    plan = plan_for("claude:\n  llm-gateway:\n    policy: {deny: [llm.tool_use]}\n", home=tmp_path,
                    scratch_root=tmp_path, proxy_ca=tmp_path / "ca.crt", llm_policy=rules)
    assert plan.proxy is not None
    assert RuleSet.from_json(plan.proxy.registration.extra["llm_policy"]) == rules
    with pytest.raises(ConfigError, match="cannot both be set"):
        plan_for("claude:\n  llm-gateway:\n    policy: {deny: [llm.tool_use]}\n  base_url: https://gw.example.com\n",
                 home=tmp_path, scratch_root=tmp_path, proxy_ca=tmp_path / "ca.crt", llm_policy=rules)


# -- what the review found: every way for an answer to pass unjudged is closed ----------------------

def test_parameters_cel_cannot_hold_deny_instead_of_passing() -> None:
    huge = {**MESSAGE, "content": [{"type": "tool_use", "id": "t0", "name": "Read",
                                    "input": {"limit": 18446744073709551616}}, TOOL]}
    verdict = llmpolicy.judge(evaluator(), json.dumps(huge).encode(), "application/json")
    assert verdict.denied and verdict.rule == "evaluation-error"
    deep = '{"x":' * 3000 + "{}" + "}" * 3000  # deeper than json can read back (a RecursionError)
    nested = ('{"type": "message", "role": "assistant", "content": [{"type": "tool_use", "id": "t",'
              f' "name": "Read", "input": {deep}}}]}}')
    assert llmpolicy.judge(evaluator(), nested.encode(), "application/json").denied


@pytest.mark.parametrize("body", [
    _sse(("message_start", {"message": {"type": "message", "role": "assistant", "content": []}}),
         ("content_block_delta", {"index": 3, "delta": {"type": "input_json_delta", "partial_json": "{}"}})),
    _sse(("message_start", {"message": {"type": "message", "role": "assistant", "content": []}}),
         ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
         ("content_block_delta", {"index": 0, "delta": "x"})),
    json.dumps({**MESSAGE, "content": [{"type": "tool_use", "name": ["Edit"], "input": {}}]}).encode(),
])
def test_malformed_answers_are_denied(body: bytes) -> None:
    content_type = "application/json" if body.startswith(b"{") else "text/event-stream"
    assert llmpolicy.judge(evaluator(), body, content_type).denied


def test_what_follows_message_stop_or_an_error_event_is_judged_too() -> None:
    after_stop = _sse(("message_start", {"message": {"type": "message", "role": "assistant", "content": []}}),
                      ("message_stop", {}),
                      ("content_block_start", {"index": 0, "content_block": TOOL}))
    assert llmpolicy.judge(evaluator(), after_stop, "text/event-stream").denied
    then_error = _streamed(MESSAGE).replace(b"event: message_stop",
                                            b"event: error\ndata: {\"type\": \"error\"}\n\nevent: message_stop")
    assert llmpolicy.judge(evaluator(), then_error, "text/event-stream").denied
    only_error = _sse(("error", {"type": "error", "error": {"type": "overloaded_error"}}))
    assert not llmpolicy.judge(evaluator(), only_error, "text/event-stream").denied


@pytest.mark.parametrize("value, expected", [(True, True), ("no", False), ("off", False), ("false", False),
                                             ("yes", True), (None, False)])
def test_case_sensitive_reads_as_keeps_yaml_reads_it(value: object, expected: bool) -> None:
    assert parse_rules({**READ_ONLY, "case_sensitive": value}, "llm-gateway").case_sensitive is expected
    with pytest.raises(KeepError, match="true or false"):
        parse_rules({**READ_ONLY, "case_sensitive": "maybe"}, "llm-gateway")


@pytest.mark.parametrize("when, named", [
    ("containsAny(params.input.command, ['rm'])", "the function containsAny()"),
    ("params.input.command.lowerAscii() == 'x'", "the method .lowerAscii()"),
    ("now > 1", "the name 'now'"),
    ("context.timestamp > 1", "context.timestamp"),
])
def test_names_moat_does_not_provide_are_refused_before_the_run(when: str, named: str) -> None:
    with pytest.raises(KeepError, match=re.escape(named)):
        evaluator({"rules": [{"name": "r", "match": {"when": when}, "action": "deny"}]})
    ok = "[1, 2].exists(x, x > 1) && context.agent_id == '' && size(params) > 0 && has(params.name)"
    evaluator({"rules": [{"name": "r", "match": {"when": ok}, "action": "deny"}]})


def test_defs_are_substituted_as_keep_does_never_in_strings_or_fields() -> None:
    data = {"defs": {"rm": "params.input.command.contains(' rm ')", "command": "params.input.command"},
            "rules": [{"name": "no-rm", "match": {"operation": "llm.tool_use",
                                                  "when": "rm || command.startsWith('rm')"}, "action": "deny"}]}
    ev = evaluator(data)
    assert ev.evaluate("llm.tool_use", {"name": "bash", "input": {"command": "rm -rf /"}}).denied
    assert not ev.evaluate("llm.tool_use", {"name": "bash", "input": {"command": "ls"}}).denied


def test_audit_only_and_log_rules_are_recorded_not_enforced() -> None:
    audit = {**READ_ONLY, "mode": "audit_only"}
    verdict = llmpolicy.judge(evaluator(audit), json.dumps(MESSAGE).encode(), "application/json")
    assert not verdict.denied and "deny-write" in verdict.logged
