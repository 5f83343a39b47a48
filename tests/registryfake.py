"""A small stand-in for an image registry (the Docker Registry HTTP API v2, the part ``docker push``
and ``docker manifest inspect`` use), on 127.0.0.1 over plain HTTP, which dockerd accepts for a
loopback registry. It keeps blobs and manifests in memory, counts uploads, and can refuse pushes."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

BLOB = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
UPLOADS = re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<id>[0-9a-f-]*)$")
MANIFEST = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$")


class FakeRegistry:
    def __init__(self, refuse_pushes: bool = False) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}  # (name, tag or digest) → (type, body)
        self.uploads: dict[str, bytearray] = {}
        self.blob_uploads = 0
        self.manifest_puts = 0
        self.refuse_pushes = refuse_pushes
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeRegistry:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(registry: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:
            pass

        def _reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, code: int, kind: str, message: str) -> None:
            body = json.dumps({"errors": [{"code": kind, "message": message}]}).encode()
            self._reply(code, body, {"Content-Type": "application/json"})

        def _unauthorized(self) -> None:
            body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})
            self._reply(401, body.encode(), {"Content-Type": "application/json",
                                             "WWW-Authenticate": 'Basic realm="fake-registry"'})

        def _read(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = bytearray()
                while True:
                    size = int(self.rfile.readline().strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return bytes(data)
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:
            path = urlparse(self.path).path
            if path in ("/v2/", "/v2"):
                if registry.refuse_pushes:  # not logged in: what a registry that wants one says first
                    self._unauthorized()
                    return
                self._reply(200, b"{}", {"Content-Type": "application/json"})
                return
            if (match := BLOB.match(path)) and match["digest"] in registry.blobs:
                self._reply(200, registry.blobs[match["digest"]], {"Docker-Content-Digest": match["digest"]})
                return
            if (match := MANIFEST.match(path)) and (match["name"], match["ref"]) in registry.manifests:
                kind, body = registry.manifests[(match["name"], match["ref"])]
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
                self._reply(200, body, {"Content-Type": kind, "Docker-Content-Digest": digest})
                return
            self._error(404, "MANIFEST_UNKNOWN" if MANIFEST.match(path) else "BLOB_UNKNOWN", "unknown")

        do_HEAD = do_GET

        def do_POST(self) -> None:
            path = urlparse(self.path).path
            self._read()
            if registry.refuse_pushes:
                self._unauthorized()
                return
            if (match := UPLOADS.match(path)) is None:
                self._error(404, "NAME_UNKNOWN", "unknown")
                return
            upload = str(uuid.uuid4())
            registry.uploads[upload] = bytearray()
            self._reply(202, headers={"Location": f"/v2/{match['name']}/blobs/uploads/{upload}",
                                      "Docker-Upload-UUID": upload, "Range": "0-0"})

        def do_PATCH(self) -> None:
            match = UPLOADS.match(urlparse(self.path).path)
            data = self._read()
            if match is None or match["id"] not in registry.uploads:
                self._error(404, "BLOB_UPLOAD_UNKNOWN", "unknown")
                return
            registry.uploads[match["id"]] += data
            size = len(registry.uploads[match["id"]])
            self._reply(202, headers={"Location": f"/v2/{match['name']}/blobs/uploads/{match['id']}",
                                      "Docker-Upload-UUID": match["id"], "Range": f"0-{max(size - 1, 0)}"})

        def do_PUT(self) -> None:
            parsed = urlparse(self.path)
            data = self._read()
            if (match := UPLOADS.match(parsed.path)) and match["id"] in registry.uploads:
                blob = bytes(registry.uploads.pop(match["id"]) + data)
                digest = parse_qs(parsed.query).get("digest", [""])[0]
                if digest != "sha256:" + hashlib.sha256(blob).hexdigest():
                    self._error(400, "DIGEST_INVALID", "digest mismatch")
                    return
                with registry.lock:
                    registry.blobs[digest] = blob
                    registry.blob_uploads += 1
                self._reply(201, headers={"Location": f"/v2/{match['name']}/blobs/{digest}",
                                          "Docker-Content-Digest": digest})
                return
            if match := MANIFEST.match(parsed.path):
                kind = self.headers.get("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                with registry.lock:
                    registry.manifests[(match["name"], match["ref"])] = (kind, data)
                    registry.manifests[(match["name"], digest)] = (kind, data)
                    registry.manifest_puts += 1
                self._reply(201, headers={"Location": f"/v2/{match['name']}/manifests/{digest}",
                                          "Docker-Content-Digest": digest})
                return
            self._error(404, "NAME_UNKNOWN", "unknown")

    return Handler
