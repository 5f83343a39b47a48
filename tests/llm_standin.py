"""A local stand-in for the model APIs the agent CLIs call (never the real thing: no model here).

It speaks the subset of each API the CLIs use for one prompt, streaming included, and records every
request (headers and body) so a test can see what the agent sent and which credential arrived:

- Anthropic Messages (Claude Code, pi): ``POST /v1/messages`` (SSE when ``stream``), ``…/count_tokens``,
  ``GET /v1/models``;
- OpenAI Responses (Codex) and Chat Completions: ``POST /v1/responses`` (SSE), ``/v1/chat/completions``;
- Gemini: ``POST /v1beta/models/<model>:generateContent``, ``:streamGenerateContent`` (SSE with
  ``alt=sse``), ``:countTokens``.

Every answer is ``REPLY_PREFIX`` followed by the last user text it was given, so a test sees that its
prompt travelled to the "model" and the answer back to the terminal. Anything else is a 404, recorded.

Run alone (for a look with a real CLI): ``python -m tests.llm_standin --port 8787``.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.upstream import Seen, TestCA, serving

REPLY_PREFIX = "stand-in model says: "
OVERLOADED = "be overloaded"  # a prompt the Messages API answers with a 503 page
DONE = "[DONE]"  # the end of a Chat Completions stream
# Long enough to stream in several events, short enough for any CLI to print whole.
CHUNK = 12


@dataclass
class LlmStandIn:
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # A prompt whose answer takes this long (seconds): an agent that is still working.
    delays: dict[str, float] = field(default_factory=dict)

    def requests(self, path_part: str) -> list[Seen]:
        with self.lock:
            return [r for r in self.seen if path_part in r.path]

    def prompts(self) -> list[str]:
        """The last user text of every model call, in order."""
        with self.lock:
            calls = [r for r in self.seen if _is_model_call(r.path)]
        return [last_user_text(json.loads(r.body or b"{}")) for r in calls]


def _is_model_call(path: str) -> bool:
    return any(p in path for p in ("/v1/messages", "/responses", "/chat/completions", "generateContent")) \
        and "count_tokens" not in path


def _texts(content: Any) -> list[str]:
    """The text parts of a turn's content, in order (a string, or a list of parts in any API's shape)."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [text for part in content for text in _texts(
            part.get("text") if isinstance(part, dict) and "text" in part else
            part.get("content") if isinstance(part, dict) else part)]
    return []


WRAPPED = re.compile(r"<([a-z_-]+)>.*?</\1>", re.DOTALL)  # an agent's <system-reminder>…</system-reminder>


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user turn, in any of the three APIs' shapes."""
    turns: list[Any] = []
    if isinstance(body.get("messages"), list):  # Anthropic, Chat Completions
        turns = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
    elif isinstance(body.get("input"), list):  # Responses
        turns = [m for m in body["input"] if isinstance(m, dict) and m.get("role") == "user"]
    elif isinstance(body.get("input"), str):
        return str(body["input"])
    elif isinstance(body.get("contents"), list):  # Gemini
        turns = [{"content": c.get("parts")} for c in body["contents"] if isinstance(c, dict)
                 and c.get("role", "user") == "user"]
    if not turns:
        return ""
    # Agents send reminders and context beside the prompt (or before it), each wrapped in a tag: the
    # prompt is what is left of the last part without them (or, when nothing is, the last part).
    parts = [text for text in _texts(turns[-1].get("content")) if text.strip()]
    plain = [unwrapped for text in parts if (unwrapped := WRAPPED.sub("", text).strip())]
    return (plain or parts or [""])[-1].strip()


def _chunks(text: str) -> list[str]:
    return [text[i:i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]


def _handler(stand_in: LlmStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _record(self) -> tuple[Seen, dict[str, Any]]:
            seen = Seen(self.command, self.path, list(self.headers.items()), self._body(), self.client_address[1])
            with stand_in.lock:
                stand_in.seen.append(seen)
            try:
                body = json.loads(seen.body) if seen.body else {}
            except ValueError:
                body = {}
            return seen, body if isinstance(body, dict) else {}

        def _json(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _events(self, events: Iterator[tuple[str | None, Any]]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            for name, payload in events:
                head = f"event: {name}\n" if name else ""
                data = payload if payload is DONE else json.dumps(payload)
                self.wfile.write(f"{head}data: {data}\n\n".encode())
                self.wfile.flush()
            self.close_connection = True

        def do_GET(self) -> None:
            seen, _ = self._record()
            path = seen.path.split("?")[0]
            if path == "/v1/models":
                self._json(200, {"data": [{"id": "claude-standin", "type": "model", "display_name": "stand-in"}],
                                 "has_more": False, "object": "list"})
            elif path == "/copilot_internal/user":  # GitHub: who the Copilot user is, and where its API is
                self._json(200, {"login": "standin", "copilot_plan": "individual", "chat_enabled": True,
                                 "access_type_sku": "free_limited_copilot",
                                 "endpoints": {"api": "https://api.individual.githubcopilot.com",
                                               "proxy": "https://proxy.individual.githubcopilot.com",
                                               "telemetry": "https://telemetry.individual.githubcopilot.com"}})
            elif path == "/models":  # Copilot's API: the models it offers
                self._json(200, {"object": "list", "data": [_copilot_model(m) for m in COPILOT_MODELS]})
            elif path.startswith("/v1beta/models"):
                self._json(200, {"models": [{"name": "models/gemini-standin"}]})
            else:
                self._not_found(path)

        def _not_found(self, path: str) -> None:
            # Anthropic's shape (OpenAI's clients read .error.message from it as well).
            self._json(404, {"type": "error", "error": {"type": "not_found_error",
                                                        "message": f"stand-in has no {path}"}})

        def do_POST(self) -> None:
            seen, body = self._record()
            path = seen.path.split("?")[0]
            prompt = last_user_text(body)
            reply = REPLY_PREFIX + prompt
            if _is_model_call(path):
                time.sleep(stand_in.delays.get(prompt, 0))
            if path == "/v1/messages/count_tokens":
                self._json(200, {"input_tokens": max(1, len(seen.body) // 4)})
            elif path == "/v1/messages" and OVERLOADED in prompt:  # the API's own error, an HTML page
                self.send_response(503)
                self.send_header("Content-Type", "text/html")
                self.send_header("Retry-After", "7")
                self.send_header("Content-Length", "23")
                self.end_headers()
                self.wfile.write(b"<html>overloaded</html>")
            elif path == "/v1/messages":
                tool = _asked_tool(body, prompt)
                if body.get("stream"):
                    self._events(_anthropic_stream(body, reply, tool))
                else:
                    self._json(200, _anthropic_message(body, reply, tool))
            elif path in ("/v1/responses", "/responses"):  # OpenAI; Copilot's API (no /v1)
                if body.get("stream", False):
                    self._events(_responses_stream(body, reply))
                else:
                    self._json(200, _response(body, reply, "completed"))
            elif path in ("/v1/chat/completions", "/chat/completions"):
                if body.get("stream"):
                    self._events(_chat_stream(body, reply))
                else:
                    self._json(200, {"id": "chatcmpl-standin", "object": "chat.completion",
                                     "model": body.get("model", "standin"), "created": int(time.time()),
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": reply}}],
                                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
            elif path.endswith(":countTokens"):
                self._json(200, {"totalTokens": max(1, len(seen.body) // 4)})
            elif path.endswith(":streamGenerateContent"):
                chunks = _chunks(reply)
                parts = [_gemini_chunk(part, last=i == len(chunks) - 1) for i, part in enumerate(chunks)]
                if "alt=sse" in seen.path:
                    self._events((None, part) for part in parts)
                else:  # without alt=sse the API streams one JSON array
                    self._json(200, parts)
            elif path.endswith(":generateContent"):
                config = body.get("generationConfig") or {}
                if config.get("responseMimeType") == "application/json":  # a structured answer (Gemini's router)
                    reply = json.dumps(schema_instance(config.get("responseJsonSchema")
                                                       or config.get("responseSchema") or {}))
                self._json(200, _gemini_chunk(reply, last=True))
            else:
                self._not_found(path)

    return Handler


def schema_instance(schema: dict[str, Any]) -> Any:
    """The smallest value a JSON schema (or Gemini's upper-case dialect of it) accepts."""
    if schema.get("enum"):
        return schema["enum"][0]
    kind = str(schema.get("type", "object")).lower()
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: schema_instance(sub) for name, sub in properties.items()}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return max(1, int(schema.get("minimum", 1)))
    if kind == "boolean":
        return False
    return "stand-in"


# -- GitHub Copilot ----------------------------------------------------------------------------------

COPILOT_MODELS = ("gpt-5-mini", "claude-sonnet-4.5", "gpt-4.1")


def _copilot_model(model: str) -> dict[str, Any]:
    return {"id": model, "name": model, "object": "model", "vendor": "stand-in", "version": model, "preview": False,
            "model_picker_enabled": True, "is_chat_default": model == COPILOT_MODELS[0], "is_chat_fallback": True,
            "policy": {"state": "enabled", "terms": ""}, "billing": {"is_premium": False, "multiplier": 0},
            "capabilities": {"type": "chat", "family": model, "object": "model_capabilities", "tokenizer": "o200k_base",
                             "supports": {"streaming": True, "tool_calls": True, "parallel_tool_calls": True,
                                          "vision": False},
                             "limits": {"max_context_window_tokens": 200000, "max_prompt_tokens": 128000,
                                        "max_output_tokens": 16000}},
            "supported_endpoints": ["/chat/completions", "/responses"]}


# -- Anthropic ---------------------------------------------------------------------------------------

# A prompt "call Edit" makes the model ask for that tool (once: not again in the turn that carries
# the tool's result), its input a small edit of moat.yaml — what a policy on tool use judges.
TOOL_PROMPT = re.compile(r"\bcall ([A-Za-z]+)\b")
TOOL_INPUT = {"file_path": "/workspace/moat.yaml", "old_string": "name:", "new_string": "# edited\nname:"}


def _asked_tool(body: dict[str, Any], prompt: str) -> str | None:
    messages = body.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    content = last.get("content")
    if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "tool_result" for p in content):
        return None
    match = TOOL_PROMPT.search(prompt)
    return match.group(1) if match else None


def _anthropic_message(body: dict[str, Any], reply: str, tool: str | None = None) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": reply}]
    if tool:
        content.append({"type": "tool_use", "id": f"toolu_standin{uuid.uuid4().hex[:12]}", "name": tool,
                        "input": TOOL_INPUT})
    return {"id": f"msg_standin{uuid.uuid4().hex[:12]}", "type": "message", "role": "assistant",
            "model": body.get("model", "claude-standin"), "content": content,
            "stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": len(reply.split())}}


def _anthropic_stream(body: dict[str, Any], reply: str, tool: str | None = None) -> Iterator[tuple[str | None, Any]]:
    message = _anthropic_message(body, reply, tool)
    start = {**message, "content": [], "stop_reason": None, "usage": {"input_tokens": 1, "output_tokens": 1}}
    yield "message_start", {"type": "message_start", "message": start}
    yield "content_block_start", {"type": "content_block_start", "index": 0,
                                  "content_block": {"type": "text", "text": ""}}
    for part in _chunks(reply):
        yield "content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": part}}
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    if tool:  # its input streamed in pieces, as the API sends it
        block = message["content"][1]
        yield "content_block_start", {"type": "content_block_start", "index": 1,
                                      "content_block": {**block, "input": {}}}
        for part in _chunks(json.dumps(block["input"])):
            yield "content_block_delta", {"type": "content_block_delta", "index": 1,
                                          "delta": {"type": "input_json_delta", "partial_json": part}}
        yield "content_block_stop", {"type": "content_block_stop", "index": 1}
    yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": message["stop_reason"],
                                                               "stop_sequence": None},
                            "usage": {"output_tokens": len(reply.split())}}
    yield "message_stop", {"type": "message_stop"}


# -- OpenAI ------------------------------------------------------------------------------------------

def _output_message(item_id: str, reply: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": reply, "annotations": []}] if reply else []}


def _response(body: dict[str, Any], reply: str, status: str, response_id: str = "resp_standin",
              item_id: str = "msg_standin") -> dict[str, Any]:
    done = status == "completed"
    return {"id": response_id, "object": "response", "created_at": int(time.time()), "status": status,
            "model": body.get("model", "gpt-standin"),
            "output": [_output_message(item_id, reply, "completed")] if done else [],
            "usage": {"input_tokens": 1, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": len(reply.split()), "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": 1 + len(reply.split())} if done else None}


def _responses_stream(body: dict[str, Any], reply: str) -> Iterator[tuple[str | None, Any]]:
    rid, iid = f"resp_standin{uuid.uuid4().hex[:12]}", f"msg_standin{uuid.uuid4().hex[:12]}"
    seq = iter(range(1_000_000))

    def event(kind: str, **fields: Any) -> tuple[str, Any]:
        return kind, {"type": kind, "sequence_number": next(seq), **fields}

    yield event("response.created", response=_response(body, "", "in_progress", rid, iid))
    yield event("response.in_progress", response=_response(body, "", "in_progress", rid, iid))
    yield event("response.output_item.added", output_index=0, item=_output_message(iid, "", "in_progress"))
    yield event("response.content_part.added", item_id=iid, output_index=0, content_index=0,
                part={"type": "output_text", "text": "", "annotations": []})
    for part in _chunks(reply):
        yield event("response.output_text.delta", item_id=iid, output_index=0, content_index=0, delta=part)
    yield event("response.output_text.done", item_id=iid, output_index=0, content_index=0, text=reply)
    yield event("response.content_part.done", item_id=iid, output_index=0, content_index=0,
                part={"type": "output_text", "text": reply, "annotations": []})
    yield event("response.output_item.done", output_index=0, item=_output_message(iid, reply, "completed"))
    yield event("response.completed", response=_response(body, reply, "completed", rid, iid))


def _chat_stream(body: dict[str, Any], reply: str) -> Iterator[tuple[str | None, Any]]:
    base = {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": body.get("model", "standin")}
    yield None, {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    for part in _chunks(reply):
        yield None, {**base, "choices": [{"index": 0, "delta": {"content": part}}]}
    yield None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    yield None, DONE


# -- Gemini ------------------------------------------------------------------------------------------

def _gemini_chunk(text: str, *, last: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if last:
        candidate["finishReason"] = "STOP"
    return {"candidates": [candidate], "modelVersion": "gemini-standin",
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2}}


# -- serving -----------------------------------------------------------------------------------------

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def llm_standin(ca: TestCA | None, port: int = 0) -> Iterator[LlmStandIn]:
    """The stand-in on 127.0.0.1 (HTTPS with a certificate from ``ca`` for every upstream name, or
    plain HTTP without one), for the duration of the block."""
    stand_in = LlmStandIn()
    server = _Server(("127.0.0.1", port), _handler(stand_in))
    if ca is not None:
        server.socket = ca.server_context().wrap_socket(server.socket, server_side=True)
    stand_in.port = server.server_address[1]
    with serving(server):
        yield stand_in


def main() -> None:
    parser = argparse.ArgumentParser(description="A local stand-in for the model APIs (plain HTTP, logs requests).")
    parser.add_argument("--port", type=int, default=8787)
    args = parser.parse_args()
    with llm_standin(None, args.port) as stand_in:
        print(f"stand-in listening on http://127.0.0.1:{stand_in.port}", flush=True)
        seen = 0
        try:
            while True:
                time.sleep(0.2)
                for request in stand_in.seen[seen:]:
                    print(request.method, request.path, request.body[:300], flush=True)
                seen = len(stand_in.seen)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
