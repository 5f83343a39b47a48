"""``claude.llm-gateway``: Anthropic's answers judged by the run's Keep rules before the agent sees them.

As the Go tool's proxy (gatekeeper's LLM policy) does it: only responses of api.anthropic.com's
Messages API, read whole (at most ``MAX_BODY``; an event stream up to its ``message_stop``),
decomposed as Keep decomposes them — one ``llm.response`` call (``stop_reason``,
``tool_use_count``) and one ``llm.tool_use`` call per tool the model asks for (``name``, ``input``)
— and, when a rule denies, replaced by Keep's 400 ``policy_denied`` error. Anything that cannot be
read is denied: the policy fails closed.

Standard library only (the proxy daemon imports it); the rules come from ``moat.policy.keep``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from moat.policy.keep import Evaluator

SCOPE = "llm-gateway"
HOST = "api.anthropic.com"
PATH = "/v1/messages"
MAX_BODY = 10 * 1024 * 1024  # the Go tool's limit; a larger answer is denied


@dataclass(frozen=True)
class Verdict:
    denied: bool
    rule: str = ""
    message: str = ""
    logged: tuple[str, ...] = ()  # rules that matched with action log, or would have denied (audit_only)


def applies(host: str, method: str, path: str) -> bool:
    return host == HOST and method == "POST" and path.split("?", 1)[0].rstrip("/") == PATH


def denied_body(verdict: Verdict) -> bytes:
    """Keep's LLM gateway error, which Claude Code shows as the API's answer."""
    message = f"Policy denied: {verdict.rule}" + (f". {verdict.message}" if verdict.message else "")
    return json.dumps({"type": "error", "error": {"type": "policy_denied", "message": message}}).encode()


def judge(evaluator: Evaluator, body: bytes, content_type: str) -> Verdict:
    """The rules' verdict on one response body (decoded); a body that cannot be read is denied."""
    if len(body) > MAX_BODY:
        return Verdict(True, "evaluation-error", f"The response is over {MAX_BODY >> 20} MB")
    logged: list[str] = []
    try:
        message = reassemble(body) if "text/event-stream" in content_type else json.loads(body)
        if not isinstance(message, dict):
            raise ValueError("not a message object")
        if message.get("type") == "error":
            return Verdict(False)  # the API's own error: nothing the model asked for
        for operation, params in decompose(message):
            decision = evaluator.evaluate(operation, params, {"direction": "response"})
            logged += decision.logged
            if decision.denied:
                return Verdict(True, decision.rule, decision.message, tuple(logged))
    except Exception as exc:  # anything at all (a RecursionError, an overflow): the answer does not pass
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        return Verdict(True, "evaluation-error", f"LLM policy evaluation failed: {detail}", tuple(logged))
    return Verdict(False, logged=tuple(logged))


def decompose(message: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    content = message.get("content") or []
    if not isinstance(content, list):
        raise ValueError("content is not a list")
    tools = [block for block in content if isinstance(block, dict) and block.get("type") == "tool_use"]
    yield "llm.response", {"stop_reason": str(message.get("stop_reason") or ""), "tool_use_count": len(tools)}
    for block in tools:
        name, tool_input = block.get("name"), block.get("input", {})
        if not isinstance(name, str) or not isinstance(tool_input, dict):
            raise ValueError("a tool_use block without a name or an input object")
        yield "llm.tool_use", {"name": name, "input": tool_input}


def events(body: bytes) -> Iterator[tuple[str, str]]:
    """Server-sent events as (event, data): all of them (what follows message_stop reaches the agent
    too, so it is judged too)."""
    for raw in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        kind, data = "", []
        for line in raw.decode("utf-8").split("\n"):
            if line.startswith(":") or not line:
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)
        if kind or data:
            yield kind, "\n".join(data)


def reassemble(body: bytes) -> dict[str, Any]:
    """A streamed Messages answer put back together (text and tool inputs from their deltas)."""
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, list[str]] = {}
    errored = False
    for named, data in events(body):
        if not data or named == "ping":
            continue
        event = json.loads(data)
        kind = named or str(event.get("type", ""))
        if kind == "error":
            errored = True  # what was sent before it reached the agent all the same: still judged
            continue
        if kind == "message_start":
            message = dict(event["message"])
        elif kind == "content_block_start":
            blocks[int(event["index"])] = dict(event["content_block"])
        elif kind == "content_block_delta":
            index, delta = int(event["index"]), event["delta"]
            if index not in blocks or not isinstance(delta, dict):
                raise ValueError("a content_block_delta for no block")
            if delta.get("type") == "input_json_delta":
                partial.setdefault(index, []).append(str(delta.get("partial_json", "")))
            elif delta.get("type") == "text_delta":
                blocks[index]["text"] = str(blocks[index].get("text", "")) + str(delta.get("text", ""))
        elif kind == "message_delta" and message is not None:
            message.update({k: v for k, v in (event.get("delta") or {}).items() if v is not None})
    if message is None:
        if errored and not blocks:
            return {"type": "error"}  # the API's error before any answer
        raise ValueError("the stream has no message_start")
    for index, pieces in partial.items():
        text = "".join(pieces)
        streamed = json.loads(text) if text else {}
        started = blocks[index].get("input") or {}
        # An input given whole at the block's start and streamed too: both are judged, merged.
        blocks[index]["input"] = {**started, **streamed} if isinstance(started, dict) and \
            isinstance(streamed, dict) else streamed
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message
