"""A small fake Kubernetes API server — the stand-in for a cluster, which cannot be installed here.

It speaks the part of the API moat's cluster engine uses, over plain HTTP on 127.0.0.1, to the
official client: create/get/list (label selectors)/patch/delete of pods, secrets, configmaps,
persistentvolumeclaims and networkpolicies, with the garbage collector's cascade from an owner;
pod logs (followed); exec over a WebSocket (the v4 channel protocol: stdin, stdout, stderr, status).
A ``FakeKubelet`` decides what pods do: it starts them (or fails their image pulls), runs the
commands moat execs (a tiny in-memory filesystem per pod: ``touch``, ``cat``, the workspace's tar),
and plays the agent once moat opens its gate. Requests can be refused (403) per verb and kind.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import re
import shlex
import struct
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PATH = re.compile(r"^/(?:api/v1|apis/networking\.k8s\.io/v1)/namespaces/(?P<ns>[^/]+)/(?P<plural>[a-z]+)"
                  r"(?:/(?P<name>[^/]+)(?:/(?P<sub>log|exec))?)?$")
KINDS = {"pods": "Pod", "secrets": "Secret", "configmaps": "ConfigMap", "persistentvolumeclaims":
         "PersistentVolumeClaim", "networkpolicies": "NetworkPolicy"}


@dataclass
class PodLife:
    """What the fake kubelet knows of one pod."""

    files: dict[str, bytes] = field(default_factory=dict)
    log: dict[str, bytearray] = field(default_factory=dict)
    terminated: dict[str, int] = field(default_factory=dict)  # container → exit code
    waiting: dict[str, tuple[str, str]] = field(default_factory=dict)  # container → (reason, message)


class FakeKubelet:
    """Runs the pods: every container starts at once (unless its image is in ``unpullable``), init
    containers end with 0 (or ``init_exit``), the agent prints ``agent_output`` and exits with
    ``agent_exit`` once moat writes its gate file."""

    def __init__(self) -> None:
        self.unpullable: set[str] = set()
        self.evicted: set[str] = set()  # pods the node has evicted (their containers killed)
        self.agent_output = b"hello from the agent\n"
        self.agent_exit = 0
        self.init_exit = 0
        self.ready_after = 0  # readiness checks that fail before one passes
        self.execs: list[tuple[str, str, tuple[str, ...], int]] = []  # (pod, container, argv, stdin bytes)
        self.pods: dict[str, PodLife] = {}
        self.scripts: dict[str, str] = {}  # pod → its agent's command (the gate script)
        self.lock = threading.Lock()

    def started(self, pod: dict[str, Any]) -> None:
        life = self.pods.setdefault(pod["metadata"]["name"], PodLife())
        for container in pod["spec"]["containers"]:
            life.log[container["name"]] = bytearray()
            if container["image"] in self.unpullable:
                life.waiting[container["name"]] = ("ErrImagePull", f"pull access denied for {container['image']}")
        for init in pod["spec"].get("initContainers", []):
            life.terminated[init["name"]] = self.init_exit
            life.log[init["name"]] = bytearray(b"iptables: permission denied\n" if self.init_exit else b"")

    def status(self, pod: dict[str, Any]) -> dict[str, Any]:
        life = self.pods.get(pod["metadata"]["name"], PodLife())

        def state(name: str, image: str) -> dict[str, Any]:
            if name in life.terminated:
                s: dict[str, Any] = {"terminated": {"exitCode": life.terminated[name],
                                                    "reason": "Completed" if life.terminated[name] == 0 else "Error"}}
            elif name in life.waiting:
                s = {"waiting": {"reason": life.waiting[name][0], "message": life.waiting[name][1]}}
            else:
                s = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
            return {"name": name, "image": image, "imageID": f"fake://{image}", "ready": "running" in s,
                    "restartCount": 0, "state": s}

        containers = [state(c["name"], c["image"]) for c in pod["spec"]["containers"]]
        inits = [state(c["name"], c["image"]) for c in pod["spec"].get("initContainers", [])]
        done = all("terminated" in c["state"] for c in containers)
        phase = ("Succeeded" if all(c["state"]["terminated"]["exitCode"] == 0 for c in containers) else "Failed") \
            if done else "Pending" if life.waiting else "Running"
        if pod["metadata"]["name"] in self.evicted:
            return {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory.",
                    "containerStatuses": containers, "initContainerStatuses": inits}
        return {"phase": phase, "containerStatuses": containers, "initContainerStatuses": inits}

    def exec(self, pod: str, container: str, argv: tuple[str, ...], stdin: bytes) -> tuple[int, bytes, bytes]:
        with self.lock:
            self.execs.append((pod, container, argv, len(stdin)))
        life = self.pods[pod]
        if container in life.terminated:
            return 1, b"", b"container not running"
        if argv[:1] == ("touch",):
            life.files[argv[1]] = b""
            if argv[1].endswith("/go"):
                threading.Thread(target=self._agent, args=(pod, argv[1].rpartition("/")[0]), daemon=True).start()
            if argv[1].endswith("/collected"):
                life.terminated["agent"] = int(life.files.get(argv[1].rpartition("/")[0] + "/exit", b"1") or 1)
            return 0, b"", b""
        if argv[:1] == ("cat",):
            if argv[1] in life.files:
                return 0, life.files[argv[1]], b""
            return 1, b"", f"cat: {argv[1]}: No such file or directory".encode()
        command = " ".join(argv)
        if "tar -x" in command:
            life.files["/workspace.tar"] = stdin
            return 0, b"", b""
        if argv[:2] == ("tar", "-c"):
            return 0, life.files.get("/workspace.tar", _empty_tar()), b""
        if container == "proxy" and argv[:1] == ("python3",):  # moat's check that the proxy listens
            return 0, b"", b""
        if container.startswith("svc-"):  # a readiness check: the service's own client
            if self.ready_after > 0:
                self.ready_after -= 1
                return 1, b"", b"connection refused"
            return 0, b"1\nPONG\n", b""
        return 127, b"", f"{argv[0]}: not found".encode()

    def _agent(self, pod: str, control: str) -> None:
        life = self.pods[pod]
        time.sleep(0.05)
        life.log["agent"] += self.agent_output
        if "collected" in self.scripts.get(pod, ""):  # a copied workspace: the agent waits to be collected
            life.files[f"{control}/exit"] = str(self.agent_exit).encode() + b"\n"
        else:
            life.terminated["agent"] = self.agent_exit


class FakeApiServer:
    def __init__(self, kubelet: FakeKubelet | None = None) -> None:
        self.kubelet = kubelet or FakeKubelet()
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, namespace, name) → object
        self.forbidden: set[tuple[str, str]] = set()  # (verb, plural): answered 403
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeApiServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def api_client(self) -> Any:
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return client.ApiClient(configuration)

    def names(self, plural: str) -> list[str]:
        with self.lock:
            return sorted(name for (p, _, name) in self.objects if p == plural)

    # -- the API ----------------------------------------------------------------------------------

    def create(self, plural: str, ns: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = body["metadata"]["name"]
        with self.lock:
            if (plural, ns, name) in self.objects:
                return 409, _status(409, "AlreadyExists", f'{plural} "{name}" already exists')
            obj = copy.deepcopy(body)
            obj.setdefault("apiVersion", "v1")
            obj["kind"] = KINDS[plural]
            obj["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion="1",
                                   creationTimestamp="2026-01-01T00:00:00Z")
            self.objects[(plural, ns, name)] = obj
        if plural == "pods":
            self.kubelet.started(obj)
            agent = next((c for c in obj["spec"]["containers"] if c["name"] == "agent"), None)
            if agent is not None:
                self.kubelet.scripts[name] = " ".join(agent.get("command", []))
        return 201, self._view(plural, obj)

    def _view(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        if plural == "pods":
            return {**obj, "status": self.kubelet.status(obj)}
        return obj

    def get(self, plural: str, ns: str, name: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            obj = self.objects.get((plural, ns, name))
        if obj is None:
            return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
        return 200, self._view(plural, obj)

    def list(self, plural: str, ns: str, selector: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            items = [self._view(plural, o) for (p, n, _), o in self.objects.items()
                     if p == plural and n == ns and _matches(o["metadata"].get("labels") or {}, selector)]
        return 200, {"apiVersion": "v1", "kind": f"{KINDS[plural]}List", "metadata": {}, "items": items}

    def patch(self, plural: str, ns: str, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            obj = self.objects.get((plural, ns, name))
            if obj is None:
                return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
            _merge(obj, body)
            return 200, self._view(plural, obj)

    def delete(self, plural: str, ns: str, name: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            obj = self.objects.pop((plural, ns, name), None)
            if obj is None:
                return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
            uid = obj["metadata"]["uid"]
            for key, other in list(self.objects.items()):  # the garbage collector's cascade
                if any(ref.get("uid") == uid for ref in other["metadata"].get("ownerReferences", [])):
                    del self.objects[key]
        return 200, obj if plural == "pods" else _status(200, "", "deleted", success=True)


def _status(code: int, reason: str, message: str, success: bool = False) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success" if success else "Failure",
            "message": message, "reason": reason, "code": code}


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, eq, value = term.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def _empty_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w"):
        pass
    return buffer.getvalue()


def _handler(api: FakeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def _route(self) -> tuple[re.Match[str] | None, dict[str, list[str]]]:
            parsed = urlparse(self.path)
            return PATH.match(parsed.path), parse_qs(parsed.query)

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}")  # type: ignore[no-any-return]

        def _refused(self, verb: str, plural: str) -> bool:
            api.requests.append((verb, plural))
            if (verb, plural) in api.forbidden:
                self._send(403, _status(403, "Forbidden", f'{plural} is forbidden: User "dev" cannot {verb}'
                                                          f' resource "{plural}"'))
                return True
            return False

        def do_POST(self) -> None:
            match, _ = self._route()
            if match is None or match["name"]:
                self._send(404, _status(404, "NotFound", self.path))
                return
            if not self._refused("create", match["plural"]):
                self._send(*api.create(match["plural"], match["ns"], self._body()))

        def do_PATCH(self) -> None:
            match, _ = self._route()
            if match is None or not match["name"]:
                self._send(404, _status(404, "NotFound", self.path))
                return
            if not self._refused("patch", match["plural"]):
                self._send(*api.patch(match["plural"], match["ns"], match["name"], self._body()))

        def do_DELETE(self) -> None:
            match, _ = self._route()
            if match is None or not match["name"]:
                self._send(404, _status(404, "NotFound", self.path))
                return
            self._body()
            if not self._refused("delete", match["plural"]):
                self._send(*api.delete(match["plural"], match["ns"], match["name"]))

        def do_GET(self) -> None:
            match, query = self._route()
            if match is None:
                self._send(404, _status(404, "NotFound", self.path))
                return
            if match["sub"] == "exec":
                self._exec(match["name"], query)
                return
            if match["sub"] == "log":
                self._log(match["name"], query)
                return
            if match["name"]:
                if not self._refused("get", match["plural"]):
                    self._send(*api.get(match["plural"], match["ns"], match["name"]))
                return
            if not self._refused("list", match["plural"]):
                self._send(*api.list(match["plural"], match["ns"], query.get("labelSelector", [""])[0]))

        def _log(self, pod: str, query: dict[str, list[str]]) -> None:
            container = query.get("container", [""])[0]
            follow = query.get("follow", ["false"])[0] == "true"
            life = api.kubelet.pods.get(pod)
            if life is None:
                self._send(404, _status(404, "NotFound", f'pods "{pod}" not found'))
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Connection", "close")
            self.end_headers()
            sent = 0
            deadline = time.monotonic() + 30
            while True:
                data = bytes(life.log.get(container, b""))
                if len(data) > sent:
                    self.wfile.write(data[sent:])
                    self.wfile.flush()
                    sent = len(data)
                if not follow or container in life.terminated or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            self.close_connection = True

        # -- exec over a WebSocket (RFC 6455, v4.channel.k8s.io) ---------------------------------

        def _exec(self, pod: str, query: dict[str, list[str]]) -> None:
            if self._refused("create", "pods/exec"):
                return
            key = self.headers.get("Sec-WebSocket-Key", "")
            accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept)
            self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
            self.end_headers()
            argv = tuple(query.get("command", []))
            container = query.get("container", [""])[0]
            stdin = b""
            wanted = _stdin_size(argv) if query.get("stdin", ["false"])[0] == "true" else 0
            while len(stdin) < wanted:
                frame = self._read_frame()
                if frame is None:
                    break
                if frame[:1] == b"\x00":
                    stdin += frame[1:]
            code, out, err = api.kubelet.exec(pod, container, argv, stdin)
            for channel, data in ((1, out), (2, err)):
                for start in range(0, len(data), 1 << 15):
                    self._write_frame(bytes([channel]) + data[start:start + (1 << 15)])
            status = {"status": "Success"} if code == 0 else {
                "status": "Failure", "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
            self._write_frame(b"\x03" + json.dumps(status).encode())
            self.wfile.write(b"\x88\x00")  # close
            self.wfile.flush()
            self.close_connection = True

        def _read_frame(self) -> bytes | None:
            head = self.rfile.read(2)
            if len(head) < 2:
                return None
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            payload = bytearray(self.rfile.read(length))
            for i in range(len(payload)):
                payload[i] ^= mask[i % 4]
            if opcode == 0x8:
                return None
            return bytes(payload) if opcode in (0x1, 0x2, 0x0) else b""

        def _write_frame(self, payload: bytes) -> None:
            length = len(payload)
            if length < 126:
                header = bytes([0x82, length])
            elif length < 1 << 16:
                header = bytes([0x82, 126]) + struct.pack(">H", length)
            else:
                header = bytes([0x82, 127]) + struct.pack(">Q", length)
            self.wfile.write(header + payload)
            self.wfile.flush()

    return Handler


def _stdin_size(argv: tuple[str, ...]) -> int:
    """How much stdin the command reads: moat sends exactly ``head -c N`` bytes."""
    found = re.search(r"head -c (\d+)", " ".join(shlex.quote(a) for a in argv))
    return int(found.group(1)) if found else 0
