#!/usr/bin/python3
"""moat-test ollama stand-in -- NOT Ollama.

A test double for the official ``ollama/ollama`` image (which cannot be installed here). It
implements the parts of Ollama's CLI and HTTP API that moat uses, with the same wording, status
codes, streaming format and on-disk layout, but it has no model: pulls write deterministic
filler bytes and generation returns a canned answer that quotes the prompt.

    ollama serve                    HTTP server on $OLLAMA_HOST (default 127.0.0.1:11434)
    ollama list | pull | run | rm | show | ps | --version     clients of that server

Server knobs (read from the server's environment at each request):
    STANDIN_PULL_BYTES    size of a pulled model's weights blob, in bytes (default 8 MiB)
    STANDIN_PULL_SECONDS  how long a pull's download takes (default 2)
    STANDIN_FAIL_MODELS   comma-separated model names whose pull fails with Ollama's
                          "pull model manifest: file does not exist" (so does any name
                          containing "does-not-exist")
Standard library only.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

VERSION = "0.18.1-standin"
DEFAULT_PORT = 11434
REGISTRY = "registry.ollama.ai"
LIBRARY = "library"
MIB = 1024 * 1024
DEFAULT_PULL_BYTES = 8 * MIB
DEFAULT_PULL_SECONDS = 2.0
PROGRESS_INTERVAL = 0.1  # seconds between pull progress updates, like Ollama's
TOKEN_DELAY = 0.01  # seconds between streamed generate chunks
MANIFEST_ERROR = "pull model manifest: file does not exist"
NO_SERVER_ERROR = "could not connect to ollama app, is it running?"
MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_MODEL = "application/vnd.ollama.image.model"


# =========================================================================== small helpers


def now_rfc3339(t: float | None = None) -> str:
    """Go's time.Time JSON form (RFC 3339 with nanoseconds, trailing zeros trimmed), UTC."""
    ns = time.time_ns() if t is None else int(t * 1e9)
    return rfc3339_ns(ns)


def rfc3339_ns(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    base = _dt.datetime.fromtimestamp(sec, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{frac:09d}".rstrip("0")
    return base + ("." + fraction if fraction else "") + "Z"


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def human_bytes(b: int) -> str:
    """format.HumanBytes from Ollama (decimal units)."""
    for limit, unit in ((10**12, "TB"), (10**9, "GB"), (10**6, "MB"), (10**3, "KB")):  # noqa: B007 — used after
        if b >= limit:
            value = b / limit
            break
    else:
        return f"{b} B"
    if value >= 10:
        return f"{int(value)} {unit}"
    if value != math.trunc(value):
        return f"{value:.1f} {unit}"
    return f"{int(value)} {unit}"


def human_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds // 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def human_time(t: float) -> str:
    """format.HumanTime(t, "Never") from Ollama."""
    delta = time.time() - t
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


def go_duration(seconds: float) -> str:
    """Roughly Go's time.Duration String(), for the GIN access log."""
    ns = seconds * 1e9
    if ns < 1e3:
        return f"{int(ns)}ns"
    if ns < 1e6:
        return f"{ns / 1e3:.3f}".rstrip("0").rstrip(".") + "µs"
    if ns < 1e9:
        return f"{ns / 1e6:.6f}".rstrip("0").rstrip(".") + "ms"
    if seconds < 60:
        return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"
    m, s = divmod(seconds, 60)
    return f"{int(m)}m{s:.9f}".rstrip("0").rstrip(".") + "s"


def env_number(name: str, default: float, cast=float):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
        if value < 0:
            raise ValueError
        return value
    except ValueError:
        log("WARN", f"invalid {name}={raw!r}, using {default}")
        return default


def log(level: str, msg: str, **attrs) -> None:
    """slog text format, like `ollama serve` writes to stderr."""
    parts = [f"time={now_rfc3339()}", f"level={level}", "source=standin", f"msg={json.dumps(msg)}"]
    parts += [f"{k}={json.dumps(str(v)) if (' ' in str(v) or not str(v)) else v}" for k, v in attrs.items()]
    with contextlib.suppress(BrokenPipeError, ValueError):
        print(" ".join(parts), file=sys.stderr, flush=True)


# =========================================================================== model names & store


NAME_PART = {
    "host": re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,349}$"),
    "namespace": re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$"),
    "model": re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$"),
    "tag": re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$"),
}


class Name:
    """[host/][namespace/]model[:tag], defaults registry.ollama.ai / library / latest."""

    def __init__(self, host: str, namespace: str, model: str, tag: str):
        self.host, self.namespace, self.model, self.tag = host, namespace, model, tag

    @classmethod
    def parse(cls, raw: str) -> Name | None:
        s = (raw or "").strip()
        if not s or "@" in s or "://" in s:
            return None
        tag = "latest"
        slash = s.rfind("/")
        colon = s.rfind(":")
        if colon > slash:
            s, tag = s[:colon], s[colon + 1:]
        parts = s.split("/")
        if len(parts) == 1:
            host, namespace, model = REGISTRY, LIBRARY, parts[0]
        elif len(parts) == 2:
            host, (namespace, model) = REGISTRY, parts
        elif len(parts) == 3:
            host, namespace, model = parts
        else:
            return None
        name = cls(host, namespace, model, tag)
        for field, pattern in NAME_PART.items():
            if not pattern.match(getattr(name, field)):
                return None
        return name

    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def display(self) -> str:
        """DisplayShortest: library models as model:tag, other namespaces as ns/model:tag."""
        if self.host == REGISTRY:
            if self.namespace == LIBRARY:
                return f"{self.model}:{self.tag}"
            return f"{self.namespace}/{self.model}:{self.tag}"
        return self.full()

    def key(self) -> str:
        return self.full().lower()


def models_dir() -> str:
    configured = os.environ.get("OLLAMA_MODELS", "").strip()
    return configured or os.path.join(os.path.expanduser("~"), ".ollama", "models")


def manifests_dir() -> str:
    return os.path.join(models_dir(), "manifests")


def blobs_dir() -> str:
    return os.path.join(models_dir(), "blobs")


def manifest_path(name: Name) -> str:
    return os.path.join(manifests_dir(), name.host, name.namespace, name.model, name.tag)


def blob_path(digest: str) -> str:
    return os.path.join(blobs_dir(), digest.replace(":", "-"))


def write_atomic(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class Local:
    """A model present on disk (a manifest file)."""

    def __init__(self, name: Name, path: str):
        self.name, self.path = name, path
        with open(path, "rb") as f:
            self.raw = f.read()
        self.manifest = json.loads(self.raw)
        self.mtime_ns = os.stat(path).st_mtime_ns
        self.digest = hashlib.sha256(self.raw).hexdigest()
        layers = self.manifest.get("layers") or []
        # Real Ollama adds the config blob (a few hundred bytes) to the size; the stand-in
        # reports exactly the layers, so the size equals STANDIN_PULL_BYTES.
        self.size = sum(int(layer.get("size", 0)) for layer in layers)
        self.config = {}
        cfg = self.manifest.get("config") or {}
        try:
            with open(blob_path(cfg.get("digest", "")), "rb") as f:
                self.config = json.load(f)
        except (OSError, ValueError):
            pass

    def details(self) -> dict:
        c = self.config
        family = c.get("model_family") or "standin"
        return {
            "parent_model": "",
            "format": c.get("model_format") or "gguf",
            "family": family,
            "families": c.get("model_families") or [family],
            "parameter_size": c.get("model_type") or "unknown",
            "quantization_level": c.get("file_type") or "Q4_K_M",
        }

    def modified_at(self) -> str:
        return rfc3339_ns(self.mtime_ns)

    def as_tag(self) -> dict:
        shown = self.name.display()
        return {"name": shown, "model": shown, "modified_at": self.modified_at(), "size": self.size,
                "digest": self.digest, "details": self.details()}

    def blob_digests(self) -> set[str]:
        digests = {layer.get("digest", "") for layer in self.manifest.get("layers") or []}
        digests.add((self.manifest.get("config") or {}).get("digest", ""))
        return {d for d in digests if d}


def find_local(name: Name) -> Local | None:
    path = manifest_path(name)
    if not os.path.isfile(path):
        return None
    try:
        return Local(name, path)
    except (OSError, ValueError):
        return None


def all_local() -> list[Local]:
    root = manifests_dir()
    found = []
    if not os.path.isdir(root):
        return found
    for host in sorted(os.listdir(root)):
        for namespace in sorted(_subdirs(os.path.join(root, host))):
            for model in sorted(_subdirs(os.path.join(root, host, namespace))):
                directory = os.path.join(root, host, namespace, model)
                for tag in sorted(os.listdir(directory)):
                    path = os.path.join(directory, tag)
                    if ".tmp-" in tag or not os.path.isfile(path):
                        continue
                    try:
                        found.append(Local(Name(host, namespace, model, tag), path))
                    except (OSError, ValueError) as exc:
                        log("WARN", "bad manifest", path=path, error=exc)
    found.sort(key=lambda m: m.mtime_ns, reverse=True)
    return found


def _subdirs(path: str) -> list[str]:
    try:
        return [d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))]
    except OSError:
        return []


STORE_LOCK = threading.Lock()  # manifest writes, deletes and pruning


def prune_blobs() -> None:
    """Remove complete blobs no manifest references (Ollama does this after pull/delete)."""
    if os.environ.get("OLLAMA_NOPRUNE"):
        return
    used = set()
    for local in all_local():
        used |= local.blob_digests()
    try:
        names = os.listdir(blobs_dir())
    except OSError:
        return
    for fn in names:
        if re.fullmatch(r"sha256-[0-9a-f]{64}", fn) and fn.replace("-", ":", 1) not in used:
            if fn.replace("-", ":", 1) in BUSY_DIGESTS:
                continue
            with contextlib.suppress(OSError):
                os.remove(os.path.join(blobs_dir(), fn))


def remove_empty_dirs(path: str) -> None:
    root = manifests_dir()
    while os.path.abspath(path) != os.path.abspath(root) and path.startswith(root):
        try:
            os.rmdir(path)
        except OSError:
            return
        path = os.path.dirname(path)


# =========================================================================== fake registry


def param_size(tag: str) -> str:
    m = re.search(r"(\d+(?:\.\d+)?)([bBmM])(?![A-Za-z])", tag)
    return (m.group(1) + m.group(2).upper()) if m else "unknown"


def family_of(model: str) -> str:
    m = re.match(r"[a-z]+\d*", model.lower())
    return m.group(0) if m else "standin"


_BLOCKS: dict[str, bytes] = {}


def filler_block(seed: str) -> bytes:
    block = _BLOCKS.get(seed)
    if block is None:
        base = hashlib.sha256(seed.encode()).digest()
        block = b"".join(hashlib.sha256(base + i.to_bytes(4, "big")).digest() for i in range(2048))
        _BLOCKS[seed] = block  # 64 KiB
    return block


class Filler:
    """Deterministic weights for a model name: a header line, then a 64 KiB pattern repeated."""

    def __init__(self, full_name: str, size: int):
        header = f"moat-test ollama stand-in (not Ollama): filler weights for {full_name}\n".encode()
        self.head = header[:size]
        self.block = filler_block(full_name)
        self.size, self.pos = size, 0

    def read(self, n: int) -> bytes:
        n = max(0, min(n, self.size - self.pos))
        out = bytearray()
        while len(out) < n:
            p = self.pos + len(out)
            if p < len(self.head):
                out += self.head[p:p + n - len(out)]
            else:
                q = (p - len(self.head)) % len(self.block)
                out += self.block[q:q + n - len(out)]
        self.pos += n
        return bytes(out)


class Layer:
    def __init__(self, media_type: str, size: int, digest: str, source):
        self.media_type, self.size, self.digest, self.source = media_type, size, digest, source

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}

    def reader(self):
        return self.source()


_REMOTE_DIGESTS: dict[tuple[str, int], str] = {}


def remote_model(name: Name, size: int) -> tuple[bytes, list[Layer]]:
    """What the 'registry' serves for a name: the manifest bytes and its blobs."""
    key = (name.full(), size)
    digest = _REMOTE_DIGESTS.get(key)
    if digest is None:
        h, filler = hashlib.sha256(), Filler(name.full(), size)
        while chunk := filler.read(MIB):
            h.update(chunk)
        digest = _REMOTE_DIGESTS[key] = "sha256:" + h.hexdigest()
    model = Layer(MEDIA_MODEL, size, digest, lambda: Filler(name.full(), size))
    family = family_of(name.model)
    config = dumps({
        "model_format": "gguf", "model_family": family, "model_families": [family],
        "model_type": param_size(name.tag), "file_type": "Q4_K_M", "architecture": "amd64",
        "os": "linux", "rootfs": {"type": "layers", "diff_ids": [digest]},
        "standin": "moat-test ollama stand-in (not Ollama)",
    }).encode()
    cfg = Layer(MEDIA_CONFIG, len(config), "sha256:" + hashlib.sha256(config).hexdigest(),
                lambda: _BytesReader(config))
    manifest = dumps({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": cfg.descriptor(),
                      "layers": [model.descriptor()]}).encode()
    return manifest, [model, cfg]


class _BytesReader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


def fails(raw: str, name: Name) -> bool:
    if "does-not-exist" in raw or "does-not-exist" in name.full():
        return True
    for listed in os.environ.get("STANDIN_FAIL_MODELS", "").split(","):
        entry = listed.strip()
        if not entry:
            continue
        other = Name.parse(entry)
        if entry == raw or (other is not None and other.key() == name.key()):
            return True
    return False


class PullError(Exception):
    pass


_DIGEST_LOCKS: dict[str, threading.Lock] = {}
_DIGEST_LOCKS_GUARD = threading.Lock()
BUSY_DIGESTS: set[str] = set()  # blobs being written right now (never pruned)


def digest_lock(digest: str) -> threading.Lock:
    with _DIGEST_LOCKS_GUARD:
        return _DIGEST_LOCKS.setdefault(digest, threading.Lock())


def blob_complete(layer: Layer) -> bool:
    try:
        return os.path.getsize(blob_path(layer.digest)) == layer.size
    except OSError:
        return False


def pull(raw: str, name: Name, emit) -> None:
    """Ollama's PullModel: progress events through emit(dict); raises PullError on failure."""
    size = int(env_number("STANDIN_PULL_BYTES", DEFAULT_PULL_BYTES, int))
    seconds = env_number("STANDIN_PULL_SECONDS", DEFAULT_PULL_SECONDS)
    emit({"status": "pulling manifest"})
    if fails(raw, name):
        time.sleep(min(0.3, seconds))
        raise PullError(MANIFEST_ERROR)
    manifest, layers = remote_model(name, size)
    locks = [digest_lock(d) for d in sorted({layer.digest for layer in layers})]
    for lock in locks:
        lock.acquire()
    try:
        BUSY_DIGESTS.update(layer.digest for layer in layers)
        missing = [layer for layer in layers if not blob_complete(layer)]
        missing_bytes = sum(layer.size for layer in missing) or 1
        downloaded = []
        for layer in layers:
            status = f"pulling {layer.digest[7:19]}"
            if layer not in missing:
                emit({"status": status, "digest": layer.digest, "total": layer.size,
                      "completed": layer.size})
                continue
            emit({"status": status, "digest": layer.digest, "total": layer.size})
            downloaded.append(download(layer, status, seconds * layer.size / missing_bytes, emit))
        emit({"status": "verifying sha256 digest"})
        for layer, partial in downloaded:
            h = hashlib.sha256()
            with open(partial, "rb") as f:
                while chunk := f.read(MIB):
                    h.update(chunk)
            got = "sha256:" + h.hexdigest()
            if got != layer.digest:
                os.remove(partial)
                raise PullError(f"digest mismatch, file must be downloaded again: want {layer.digest}, got {got}")
            os.replace(partial, blob_path(layer.digest))
        emit({"status": "writing manifest"})
        with STORE_LOCK:
            write_atomic(manifest_path(name), manifest)
            prune_blobs()
    finally:
        BUSY_DIGESTS.difference_update(layer.digest for layer in layers)
        for lock in reversed(locks):
            lock.release()
    emit({"status": "success"})


def download(layer: Layer, status: str, budget: float, emit) -> tuple[Layer, str]:
    """Write the layer to <blob>-partial in steps of ~100 ms spread over budget seconds."""
    os.makedirs(blobs_dir(), exist_ok=True)
    partial = blob_path(layer.digest) + "-partial"
    steps = max(1, round(budget / PROGRESS_INTERVAL))
    reader = layer.reader()
    start, done = time.monotonic(), 0
    with open(partial, "wb") as f:
        for i in range(steps):
            target = layer.size if i == steps - 1 else layer.size * (i + 1) // steps
            before = done
            while done < target:
                data = reader.read(min(MIB, target - done))
                if not data:
                    raise PullError("unexpected EOF")
                f.write(data)
                done += len(data)
            f.flush()
            if done > before or i == steps - 1:
                emit({"status": status, "digest": layer.digest, "total": layer.size, "completed": done})
            delay = start + (i + 1) * budget / steps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return layer, partial


# =========================================================================== HTTP server


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class ClientGone(Exception):
    pass


def canned_answer(model: str, prompt: str) -> str:
    quoted = prompt.strip()
    if len(quoted) > 500:
        quoted = quoted[:500] + "..."
    return (f"This is the moat-test Ollama stand-in, not a real model, answering as {model}. "
            f"You said: {quoted}")


def tokens(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text) or [""]


def eval_stats(prompt: str, answer: str, elapsed: float) -> dict:
    total = max(1, int(elapsed * 1e9))
    return {"total_duration": total, "load_duration": 1_000_000,
            "prompt_eval_count": max(1, len(prompt.split())), "prompt_eval_duration": 1_000_000,
            "eval_count": len(tokens(answer)), "eval_duration": max(1, total - 2_000_000)}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ollama-standin"

    # ---- plumbing

    def send_response(self, code, message=None):  # no "Server:" header, like gin
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())
        self._status = code

    def log_request(self, code="-", size="-"):
        pass  # logged after the request, GIN style

    def log_message(self, format, *args):
        pass

    def _gin_log(self, method: str, path: str, started: float) -> None:
        stamp = time.strftime("%Y/%m/%d - %H:%M:%S")
        status = getattr(self, "_status", 0)
        client = self.client_address[0] if self.client_address else ""
        with contextlib.suppress(BrokenPipeError, ValueError):
            print(f"[GIN] {stamp} | {status:3d} | {go_duration(time.monotonic() - started):>13} | "
                  f"{client:>15} | {method:<7} {json.dumps(path)}", flush=True)

    def _dispatch(self, method: str) -> None:
        started = time.monotonic()
        path = urlsplit(self.path).path
        self._status = 0
        route = ROUTES.get((method, path))
        try:
            if route is None:
                self.read_body()
                self.send_text(404, "404 page not found")
            else:
                route(self)
        except BadRequest as exc:
            self.send_json(exc.status, {"error": str(exc)})
        except (ClientGone, BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # keep serving; report like Ollama's 500s
            log("ERROR", "request failed", path=path, error=repr(exc))
            if not self._status:
                try:
                    self.send_json(500, {"error": str(exc)})
                except OSError:
                    self.close_connection = True
            else:
                self.close_connection = True
        finally:
            self._gin_log(method, path, started)

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_OPTIONS(self):
        self._dispatch("OPTIONS")

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def json_body(self) -> dict:
        raw = self.read_body()
        if not raw.strip():
            raise BadRequest("missing request body")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise BadRequest(f"invalid character in request body: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("json: cannot unmarshal request body")
        return body

    def send_bytes(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, obj) -> None:
        self.send_bytes(status, "application/json; charset=utf-8", dumps(obj).encode())

    def send_text(self, status: int, text: str) -> None:
        self.send_bytes(status, "text/plain; charset=utf-8", text.encode())

    def start_stream(self, content_type: str = "application/x-ndjson") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            raise ClientGone() from exc

    def write_line(self, obj) -> None:
        self.write_chunk((dumps(obj) + "\n").encode())

    def end_stream(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError as exc:
            raise ClientGone() from exc

    def model_name(self, body: dict, missing: str = "model is required") -> tuple[str, Name]:
        raw = body.get("model") or body.get("name") or ""
        if not isinstance(raw, str) or not raw.strip():
            raise BadRequest(missing)
        name = Name.parse(raw)
        if name is None:
            raise BadRequest("invalid model name")
        return raw, name

    # ---- routes

    def root(self):
        self.read_body()
        self.send_text(200, "Ollama is running")

    def version(self):
        self.read_body()
        self.send_json(200, {"version": VERSION})

    def tags(self):
        self.read_body()
        self.send_json(200, {"models": [m.as_tag() for m in all_local()]})

    def ps(self):
        self.read_body()
        self.send_json(200, {"models": []})

    def api_pull(self):
        body = self.json_body()
        raw, name = self.model_name(body)
        stream = body.get("stream") is not False
        if not stream:
            last = {}

            def keep(event):
                last.clear()
                last.update(event)
            try:
                pull(raw, name, keep)
            except PullError as exc:
                self.send_json(500, {"error": str(exc)})
                return
            self.send_json(200, last)
            return
        self.start_stream()
        try:
            pull(raw, name, self.write_line)
        except PullError as exc:
            self.write_line({"error": str(exc)})
        self.end_stream()

    def api_generate(self):
        body = self.json_body()
        raw, name = self.model_name(body)
        local = find_local(name)
        if local is None:
            raise BadRequest(f"model {json.dumps(raw)} not found, try pulling it first", 404)
        prompt = body.get("prompt") or ""
        stream = body.get("stream") is not False
        started = time.monotonic()
        if not prompt and not body.get("messages"):
            done = {"model": raw, "created_at": now_rfc3339(), "response": "", "done": True,
                    "done_reason": "load"}
            if stream:
                self.start_stream()
                self.write_line(done)
                self.end_stream()
            else:
                self.send_json(200, done)
            return
        answer = canned_answer(name.display(), str(prompt))
        final = {"model": raw, "created_at": "", "response": "", "done": True, "done_reason": "stop",
                 "context": list(range(1, min(len(tokens(answer)), 64) + 1))}
        if not stream:
            time.sleep(TOKEN_DELAY)
            final.update(created_at=now_rfc3339(), response=answer)
            final.update(eval_stats(str(prompt), answer, time.monotonic() - started))
            self.send_json(200, final)
            return
        self.start_stream()
        for piece in tokens(answer):
            time.sleep(TOKEN_DELAY)
            self.write_line({"model": raw, "created_at": now_rfc3339(), "response": piece, "done": False})
        final["created_at"] = now_rfc3339()
        final.update(eval_stats(str(prompt), answer, time.monotonic() - started))
        self.write_line(final)
        self.end_stream()

    def api_chat(self):
        body = self.json_body()
        raw, name = self.model_name(body)
        if find_local(name) is None:
            raise BadRequest(f"model {json.dumps(raw)} not found, try pulling it first", 404)
        messages = body.get("messages") or []
        stream = body.get("stream") is not False
        started = time.monotonic()
        last_user = next((str(m.get("content", "")) for m in reversed(messages)
                          if isinstance(m, dict) and m.get("role") == "user"), "")
        if not messages:
            done = {"model": raw, "created_at": now_rfc3339(),
                    "message": {"role": "assistant", "content": ""}, "done_reason": "load", "done": True}
            self.send_json(200, done) if not stream else self._stream_one(done)
            return
        answer = canned_answer(name.display(), last_user)
        if not stream:
            time.sleep(TOKEN_DELAY)
            final = {"model": raw, "created_at": now_rfc3339(),
                     "message": {"role": "assistant", "content": answer}, "done_reason": "stop", "done": True}
            final.update(eval_stats(last_user, answer, time.monotonic() - started))
            self.send_json(200, final)
            return
        self.start_stream()
        for piece in tokens(answer):
            time.sleep(TOKEN_DELAY)
            self.write_line({"model": raw, "created_at": now_rfc3339(),
                             "message": {"role": "assistant", "content": piece}, "done": False})
        final = {"model": raw, "created_at": now_rfc3339(), "message": {"role": "assistant", "content": ""},
                 "done_reason": "stop", "done": True}
        final.update(eval_stats(last_user, answer, time.monotonic() - started))
        self.write_line(final)
        self.end_stream()

    def _stream_one(self, obj):
        self.start_stream()
        self.write_line(obj)
        self.end_stream()

    def api_embed(self):
        body = self.json_body()
        raw, name = self.model_name(body)
        if find_local(name) is None:
            raise BadRequest(f"model {json.dumps(raw)} not found, try pulling it first", 404)
        legacy = self.path.startswith("/api/embeddings")
        inputs = body.get("prompt" if legacy else "input", "")
        items = inputs if isinstance(inputs, list) else [inputs]
        vectors = [embedding(str(x)) for x in items]
        if legacy:
            self.send_json(200, {"embedding": vectors[0]})
        else:
            self.send_json(200, {"model": raw, "embeddings": vectors, "total_duration": 1_000_000,
                                 "load_duration": 100_000, "prompt_eval_count": len(items)})

    def api_show(self):
        body = self.json_body()
        raw, name = self.model_name(body)
        local = find_local(name)
        if local is None:
            raise BadRequest(f"model '{raw}' not found", 404)
        details = local.details()
        self.send_json(200, {
            "license": "",
            "modelfile": (f"# Modelfile generated by \"ollama show\"\n# moat-test ollama stand-in (not Ollama)\n"
                          f"FROM {blob_path(local.manifest['layers'][0]['digest'])}\n"
                          "TEMPLATE {{ .Prompt }}\n"),
            "parameters": "",
            "template": "{{ .Prompt }}",
            "details": details,
            "model_info": {"general.architecture": details["family"], "general.file_type": 15,
                           "general.parameter_count": local.size,
                           "general.quantization_version": 2,
                           f"{details['family']}.context_length": 32768},
            "capabilities": ["completion"],
            "modified_at": local.modified_at(),
        })

    def api_delete(self):
        body = self.json_body()
        raw, name = self.model_name(body)
        with STORE_LOCK:
            path = manifest_path(name)
            if not os.path.isfile(path):
                raise BadRequest(f"model '{raw}' not found", 404)
            os.remove(path)
            remove_empty_dirs(os.path.dirname(path))
            prune_blobs()
        self.send_bytes(200, "text/plain; charset=utf-8", b"")

    # ---- OpenAI-compatible subset

    def v1_models(self):
        self.read_body()
        self.send_json(200, {"object": "list", "data": [
            {"id": m.name.display(), "object": "model", "created": m.mtime_ns // 1_000_000_000,
             "owned_by": m.name.namespace if m.name.namespace != LIBRARY else "library"}
            for m in all_local()]})

    def v1_chat(self):
        body = self.json_body()
        raw = body.get("model") or ""
        name = Name.parse(raw) if isinstance(raw, str) else None
        if name is None or find_local(name) is None:
            self.send_json(404, {"error": {"message": f"model \"{raw}\" not found, try pulling it first",
                                           "type": "api_error", "param": None, "code": None}})
            return
        messages = body.get("messages") or []
        last_user = next((str(m.get("content", "")) for m in reversed(messages)
                          if isinstance(m, dict) and m.get("role") == "user"), "")
        answer = canned_answer(name.display(), last_user)
        ident, created = f"chatcmpl-{int(time.time() * 1000) % 1000}", int(time.time())
        if not body.get("stream"):
            self.send_json(200, {
                "id": ident, "object": "chat.completion", "created": created, "model": raw,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": max(1, len(last_user.split())),
                          "completion_tokens": len(tokens(answer)),
                          "total_tokens": max(1, len(last_user.split())) + len(tokens(answer))}})
            return
        self.start_stream("text/event-stream")
        for piece in [*tokens(answer), None]:
            time.sleep(TOKEN_DELAY)
            delta = {"role": "assistant", "content": piece} if piece is not None else {}
            chunk = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": raw,
                     "system_fingerprint": "fp_ollama",
                     "choices": [{"index": 0, "delta": delta,
                                  "finish_reason": None if piece is not None else "stop"}]}
            self.write_chunk(f"data: {dumps(chunk)}\n\n".encode())
        self.write_chunk(b"data: [DONE]\n\n")
        self.end_stream()


def embedding(text: str, dims: int = 16) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((b - 127.5) / 127.5, 6) for b in digest[:dims]]


ROUTES = {
    ("GET", "/"): Handler.root,
    ("HEAD", "/"): Handler.root,
    ("GET", "/api/version"): Handler.version,
    ("HEAD", "/api/version"): Handler.version,
    ("GET", "/api/tags"): Handler.tags,
    ("HEAD", "/api/tags"): Handler.tags,
    ("GET", "/api/ps"): Handler.ps,
    ("POST", "/api/pull"): Handler.api_pull,
    ("POST", "/api/generate"): Handler.api_generate,
    ("POST", "/api/chat"): Handler.api_chat,
    ("POST", "/api/embed"): Handler.api_embed,
    ("POST", "/api/embeddings"): Handler.api_embed,
    ("POST", "/api/show"): Handler.api_show,
    ("DELETE", "/api/delete"): Handler.api_delete,
    ("GET", "/v1/models"): Handler.v1_models,
    ("POST", "/v1/chat/completions"): Handler.v1_chat,
}


def parse_host(default_host: str = "127.0.0.1") -> tuple[str, str, int]:
    """envconfig.Host(): OLLAMA_HOST as [scheme://]host[:port][/path] -> (scheme, host, port)."""
    s = os.environ.get("OLLAMA_HOST", "").strip().strip("\"'")
    default_port = DEFAULT_PORT
    scheme, sep, hostport = s.partition("://")
    if not sep:
        scheme, hostport = "http", s
    elif scheme == "http":
        default_port = 80
    elif scheme == "https":
        default_port = 443
    hostport = hostport.split("/", 1)[0]
    host, port = default_host, default_port
    m = re.fullmatch(r"\[([^\]]*)\]:(\d*)|([^:\[\]]*):(\d*)", hostport)
    if m:
        host = m.group(1) if m.group(1) is not None else m.group(3)
        port_s = m.group(2) if m.group(1) is not None else m.group(4)
        try:
            port = int(port_s)
            if not 0 <= port <= 65535:
                raise ValueError
        except ValueError:
            port = default_port
    elif hostport:
        host = hostport.strip("[]")
    return scheme, host, port


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class Server6(Server):
    address_family = socket.AF_INET6


def serve(args: list[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        print("Start ollama (moat-test stand-in)\n\nUsage:\n  ollama serve [flags]\n\nEnvironment Variables:\n"
              "      OLLAMA_HOST     IP Address for the ollama server (default 127.0.0.1:11434)\n"
              "      OLLAMA_MODELS   The path to the models directory\n"
              "      STANDIN_PULL_BYTES, STANDIN_PULL_SECONDS, STANDIN_FAIL_MODELS (stand-in knobs)")
        return 0
    if args:
        return cli_error(f'unknown command "{args[0]}" for "ollama serve"')
    _, host, port = parse_host("127.0.0.1")
    bind = "0.0.0.0" if host == "" else host
    cls = Server6 if ":" in bind else Server
    try:
        httpd = cls((bind, port), Handler)
    except OSError as exc:
        print(f"Error: listen tcp {join_hostport(host, port)}: bind: {exc.strerror.lower() if exc.strerror else exc}",
              file=sys.stderr)
        return 1
    for d in (blobs_dir(), manifests_dir()):
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as exc:
            log("WARN", "cannot create models directory", path=d, error=exc)
    with STORE_LOCK:
        prune_blobs()
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log("INFO", "server config", env=(
        f"map[OLLAMA_HOST:{os.environ.get('OLLAMA_HOST', '')} OLLAMA_MODELS:{models_dir()} "
        f"STANDIN_PULL_BYTES:{os.environ.get('STANDIN_PULL_BYTES', '')} "
        f"STANDIN_PULL_SECONDS:{os.environ.get('STANDIN_PULL_SECONDS', '')} "
        f"STANDIN_FAIL_MODELS:{os.environ.get('STANDIN_FAIL_MODELS', '')}]"))
    log("INFO", f"Listening on {join_hostport(bind, port)} (version {VERSION})")
    log("INFO", "this is the moat-test ollama stand-in, not Ollama: no models are run")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    while not stop.wait(0.5):
        pass
    log("INFO", "received signal, shutting down")
    httpd.shutdown()
    httpd.server_close()
    return 0


def join_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# =========================================================================== client


class ClientError(Exception):
    pass


class StatusError(ClientError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Client:
    def __init__(self):
        scheme, host, port = parse_host("127.0.0.1")
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host in ("::", "[::]"):
            host = "::1"
        self.scheme, self.host, self.port = scheme, host, port
        self.base = f"{scheme}://{join_hostport(host, port)}"

    def _conn(self):
        import http.client
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port)
        return http.client.HTTPConnection(self.host, self.port)

    def _request(self, method: str, path: str, body=None):
        conn = self._conn()
        headers = {"Accept": "application/json", "User-Agent": f"ollama/{VERSION} (amd64 linux) standin"}
        data = None
        if body is not None:
            data = dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            return conn, conn.getresponse()
        except ConnectionRefusedError:
            raise ClientError(NO_SERVER_ERROR) from None
        except socket.gaierror:
            raise ClientError(f'{method.title()} "{self.base}{path}": dial tcp: lookup {self.host}: '
                              "no such host") from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ClientError(f'{method.title()} "{self.base}{path}": dial tcp {join_hostport(self.host, self.port)}: '
                              f"connect: {reason.lower()}") from None

    def do(self, method: str, path: str, body=None):
        conn, resp = self._request(method, path, body)
        try:
            raw = resp.read()
        finally:
            conn.close()
        if resp.status >= 400:
            try:
                message = json.loads(raw).get("error") or raw.decode()
            except (ValueError, AttributeError):
                message = raw.decode(errors="replace")
            raise StatusError(resp.status, message)
        return json.loads(raw) if raw.strip() else None

    def stream(self, path: str, body, fn) -> None:
        conn, resp = self._request("POST", path, body)
        try:
            while True:
                try:
                    line = resp.readline()
                except Exception:
                    raise ClientError("unexpected EOF") from None
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    raise ClientError(f"unmarshal: invalid character in {line[:40]!r}") from None
                if isinstance(obj, dict) and obj.get("error"):
                    if resp.status >= 400:
                        raise StatusError(resp.status, obj["error"])
                    raise ClientError(obj["error"])
                fn(obj)
        finally:
            conn.close()

    def heartbeat(self) -> None:
        with contextlib.suppress(StatusError):
            self.do("HEAD", "/")


class Spinner:
    FRAMES = ("⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏")

    def __init__(self, message: str):
        self.message, self.value, self.stopped = message, 0, False

    def tick(self):
        self.value = (self.value + 1) % len(self.FRAMES)

    def stop(self):
        self.stopped = True

    def render(self, width: int) -> str:
        out = (self.message.strip() + " ") if self.message else ""
        if not self.stopped:
            out += self.FRAMES[self.value] + " "
        return out


class Bar:
    def __init__(self, message: str, total: int, completed: int):
        self.message, self.total, self.current = message, total, completed
        self.started = time.monotonic()
        self.initial = completed
        self.stopped = completed >= total

    def set(self, value: int):
        self.current = value
        if value >= self.total:
            self.stopped = True

    def tick(self):
        pass

    def stop(self):
        pass

    def render(self, width: int) -> str:
        pct = 100.0 if self.total <= 0 else min(100.0, self.current * 100.0 / self.total)
        pre = f"{self.message} {pct:3.0f}%"
        if self.stopped:
            suf = human_bytes(self.total)
        else:
            suf = f"{human_bytes(min(self.current, self.total))}/{human_bytes(self.total)}"
            elapsed = time.monotonic() - self.started
            if elapsed > 0.5 and self.current > self.initial:
                rate = (self.current - self.initial) / elapsed
                left = math.ceil((self.total - self.current) / rate) if rate > 0 else 0
                eta = f"{left // 60}m{left % 60}s" if left >= 60 else f"{left}s"
                suf += f"{human_bytes(int(rate)) + '/s':>12}{eta:>8}"
        mid = width - len(pre) - len(suf) - 5
        fill = int(max(0, mid) * pct / 100)
        return f"{pre} ▕{'█' * fill}{' ' * max(0, mid - fill)}▏ {suf}"


class Progress:
    """Ollama's progress renderer: redraws all lines on stderr every 100 ms (ANSI, like the real one)."""

    def __init__(self, out=None):
        self.out = out or sys.stderr
        self.states: list = []
        self.keys: dict[str, object] = {}
        self.pos = 0
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def width(self) -> int:
        try:
            return os.get_terminal_size(self.out.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return 80

    def add(self, key: str, state) -> None:
        with self.lock:
            self.keys[key] = state
            self.states.append(state)

    def _loop(self):
        while not self.done.wait(PROGRESS_INTERVAL):
            with self.lock:
                for s in self.states:
                    if isinstance(s, Spinner) and not s.stopped:
                        s.tick()
                self._render()

    def _render(self):
        if not self.states:
            return
        width = self.width()
        buf = ["\033[?2026h\033[?25l"]
        buf.append("\033[A" * max(0, self.pos - 1))
        buf.append("\033[1G")
        for i, state in enumerate(self.states):
            buf.append(state.render(width) + "\033[K")
            if i < len(self.states) - 1:
                buf.append("\n")
        self.pos = len(self.states)
        buf.append("\033[?25h\033[?2026l")
        try:
            self.out.write("".join(buf))
            self.out.flush()
        except (BrokenPipeError, ValueError):
            pass

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        with self.lock:
            for s in self.states:
                s.stop()
            if self.states:
                self._render()
                try:
                    self.out.write("\n")
                    self.out.flush()
                except (BrokenPipeError, ValueError):
                    pass


def pull_with_progress(client: Client, model: str, insecure: bool = False) -> None:
    progress = Progress()
    bars: dict[str, Bar] = {}
    state = {"status": None, "spinner": None}

    def on_event(resp: dict):
        digest = resp.get("digest") or ""
        if digest:
            completed = int(resp.get("completed") or 0)
            if completed == 0:
                return
            if state["spinner"] is not None:
                state["spinner"].stop()
            bar = bars.get(digest)
            if bar is None:
                short = digest[7:19] if digest.startswith("sha256:") else digest.strip()
                bar = Bar(f"pulling {short}:", int(resp.get("total") or 0), completed)
                bars[digest] = bar
                progress.add(digest, bar)
            bar.set(completed)
        elif state["status"] != resp.get("status"):
            if state["spinner"] is not None:
                state["spinner"].stop()
            state["status"] = resp.get("status")
            spinner = Spinner(state["status"] or "")
            state["spinner"] = spinner
            progress.add(state["status"] or "", spinner)

    try:
        client.stream("/api/pull", {"model": model, "insecure": insecure, "stream": True}, on_event)
    finally:
        progress.stop()


def cli_error(message: str, usage_hint: bool = True) -> int:
    print(f"Error: {message}", file=sys.stderr)
    return 1


HELP = """Large language model runner (moat-test stand-in, not Ollama)

Usage:
  ollama [flags]
  ollama [command]

Available Commands:
  serve       Start ollama
  show        Show information for a model
  run         Run a model
  pull        Pull a model from a registry
  list        List models
  ps          List running models
  rm          Remove a model
  help        Help about any command

Flags:
  -h, --help      help for ollama
  -v, --version   Show version information

Use "ollama [command] --help" for more information about a command."""


def split_flags(args: list[str], known_bool: set[str], known_value: set[str]) -> tuple[list[str], dict]:
    positional, flags = [], {}
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            positional += args[i + 1:]
            break
        if a.startswith("-") and a != "-":
            key, eq, value = a.partition("=")
            if key in ("-h", "--help"):
                flags["help"] = True
            elif key in known_bool:
                flags[key] = True
            elif key in known_value:
                if not eq:
                    i += 1
                    if i >= len(args):
                        raise ClientError(f"flag needs an argument: {key}")
                    value = args[i]
                flags[key] = value
            else:
                raise ClientError(f"unknown flag: {key}" if key.startswith("--") else
                                  f"unknown shorthand flag: '{key[1:2]}' in {a}")
        else:
            positional.append(a)
        i += 1
    return positional, flags


def cmd_list(client: Client, args: list[str]) -> int:
    if len(args) > 1:
        return cli_error(f"accepts at most 1 arg(s), received {len(args)}")
    client.heartbeat()
    models = (client.do("GET", "/api/tags") or {}).get("models") or []
    rows = []
    for m in models:
        name = m.get("name") or m.get("model") or ""
        if args and not name.lower().startswith(args[0].lower()):
            continue
        modified = m.get("modified_at") or ""
        rows.append([name, (m.get("digest") or "")[:12], human_bytes(int(m.get("size") or 0)),
                     human_time(parse_rfc3339(modified)) if modified else "Never"])
    print_table(["NAME", "ID", "SIZE", "MODIFIED"], rows)
    return 0


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """olekukonko/tablewriter as Ollama configures it: no borders, 4-space padding."""
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(len(header))]
    pad = "    "
    head = "".join(h.ljust(w) + (pad if i < len(header) - 1 else " ")
                   for i, (h, w) in enumerate(zip(header, widths, strict=False)))
    lines = [head] + ["".join(c.ljust(w) + pad for c, w in zip(r, widths, strict=False)) for r in rows]
    sys.stdout.write("\n".join(lines) + "\n")


def parse_rfc3339(s: str) -> float:
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", s)
    if not m:
        return time.time()
    base = _dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
    tz = m.group(3) or "Z"
    offset = 0 if tz == "Z" else (1 if tz[0] == "+" else -1) * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    frac = float("0." + m.group(2)) if m.group(2) else 0.0
    return base.replace(tzinfo=_dt.UTC).timestamp() - offset + frac


def cmd_pull(client: Client, args: list[str]) -> int:
    positional, flags = split_flags(args, {"--insecure"}, set())
    if flags.get("help"):
        print("Pull a model from a registry\n\nUsage:\n  ollama pull MODEL [flags]\n\nFlags:\n"
              "  -h, --help       help for pull\n      --insecure   Use an insecure registry")
        return 0
    if len(positional) != 1:
        return cli_error(f"accepts 1 arg(s), received {len(positional)}")
    client.heartbeat()
    pull_with_progress(client, positional[0], bool(flags.get("--insecure")))
    return 0


def cmd_rm(client: Client, args: list[str]) -> int:
    positional, _flags = split_flags(args, set(), set())
    if not positional:
        return cli_error("requires at least 1 arg(s), only received 0")
    client.heartbeat()
    for name in positional:
        client.do("DELETE", "/api/delete", {"model": name})
        print(f"deleted '{name}'")
    return 0


def cmd_show(client: Client, args: list[str]) -> int:
    positional, flags = split_flags(args, {"--license", "--modelfile", "--parameters", "--system",
                                           "--template", "--verbose", "-v"}, set())
    if len(positional) != 1:
        return cli_error(f"accepts 1 arg(s), received {len(positional)}")
    client.heartbeat()
    info = client.do("POST", "/api/show", {"model": positional[0]}) or {}
    if flags.get("--modelfile"):
        print(info.get("modelfile", ""))
        return 0
    if flags.get("--template"):
        print(info.get("template", ""))
        return 0
    if flags.get("--license") or flags.get("--parameters") or flags.get("--system"):
        return 0
    d = info.get("details") or {}
    rows = [("architecture", d.get("family", "")), ("parameters", d.get("parameter_size", "")),
            ("quantization", d.get("quantization_level", ""))]
    print("  Model")
    for k, v in rows:
        print(f"    {k:<20}{v}")
    print("\n  Capabilities")
    for c in info.get("capabilities") or []:
        print(f"    {c}")
    print()
    return 0


def cmd_ps(client: Client, args: list[str]) -> int:
    client.heartbeat()
    client.do("GET", "/api/ps")
    print_table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], [])
    return 0


def cmd_run(client: Client, args: list[str]) -> int:
    positional, flags = split_flags(
        args, {"--verbose", "--insecure", "--nowordwrap", "--hidethinking", "--think"},
        {"--format", "--keepalive", "--dimensions"})
    if flags.get("help"):
        print("Run a model\n\nUsage:\n  ollama run MODEL [PROMPT] [flags]")
        return 0
    if not positional:
        return cli_error("requires at least 1 arg(s), only received 0")
    model, prompts = positional[0], positional[1:]
    interactive = not prompts
    if not sys.stdin.isatty():
        prompts = [sys.stdin.read(), *prompts]
        interactive = False
    client.heartbeat()
    try:
        client.do("POST", "/api/show", {"model": model})
    except StatusError as exc:
        if exc.status != 404:
            raise
        pull_with_progress(client, model)
    if interactive:
        return run_interactive(client, model)
    generate_to_stdout(client, model, " ".join(prompts))
    sys.stdout.write("\n\n")
    sys.stdout.flush()
    return 0


def generate_to_stdout(client: Client, model: str, prompt: str) -> None:
    def on_chunk(resp: dict):
        sys.stdout.write(resp.get("response") or "")
        sys.stdout.flush()
    client.stream("/api/generate", {"model": model, "prompt": prompt, "stream": True}, on_chunk)


def run_interactive(client: Client, model: str) -> int:
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return 0
        if line.strip() in ("/bye", "/exit"):
            return 0
        if not line.strip():
            continue
        generate_to_stdout(client, model, line)
        sys.stdout.write("\n\n")


def cmd_version(client: Client) -> int:
    try:
        server = (client.do("GET", "/api/version") or {}).get("version", "")
    except ClientError:
        server = ""
        print("Warning: could not connect to a running Ollama instance")
    if server:
        print(f"ollama version is {server}")
    if server != VERSION:
        print(f"Warning: client version is {VERSION}")
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        if len(argv) > 1 and argv[0] == "help":
            return main([argv[1], "--help"])
        print(HELP)
        return 0
    if argv[0] in ("-v", "--version"):
        return cmd_version(Client())
    command, rest = argv[0], argv[1:]
    if command in {"serve", "start"}:
        return serve(rest)
    handlers = {"list": cmd_list, "ls": cmd_list, "pull": cmd_pull, "rm": cmd_rm, "show": cmd_show,
                "ps": cmd_ps, "run": cmd_run}
    handler = handlers.get(command)
    if handler is None:
        if command.startswith("-"):
            print(f"Error: unknown flag: {command}", file=sys.stderr)
        else:
            print(f'Error: unknown command "{command}" for "ollama"\nRun \'ollama --help\' for usage.',
                  file=sys.stderr)
        return 1
    if rest and rest[0] in ("-h", "--help") and command not in {"pull", "run"}:
        print(f"Usage:\n  ollama {command} ...   (moat-test stand-in)")
        return 0
    try:
        return handler(Client(), rest)
    except ClientError as exc:
        return cli_error(str(exc))


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
