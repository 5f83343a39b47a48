"""A run's Pod in a cluster, through the official ``kubernetes`` client (``kubernetes.engine: cluster``).

Every API failure is translated here, once, into an ``EngineError`` that names the object, the
namespace and what to do: no cluster reachable, no permission, a quota, a name taken.

Objects go in the order that leaves nothing behind: the Secrets, the files and the NetworkPolicy first
(labelled with the run, so that ``moat clean`` finds them should moat die), then the Pod, then each of
them is given the Pod as its owner — deleting the Pod deletes them all (the cluster's garbage
collector). Should a step fail, what was created is deleted before the error is raised.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from moat.constants import LABEL_HOME, LABEL_RUN_ID
from moat.errors import EngineError
from moat.plan.kube.manifests import Manifests
from moat.runtime.kubernetes.backend import ApiRefused, ContainerStatus, PodStatus, RunPod

OWNED_KINDS = ("NetworkPolicy", "Secret", "ConfigMap")  # in the order they are created
ERROR_CHANNEL = 3  # an exec's status channel (the client's ws_client.ERROR_CHANNEL)


def _import() -> Any:
    try:
        import kubernetes  # noqa: PLC0415 — a heavy import, for runs that go to a cluster only
    except ImportError:
        raise EngineError("the kubernetes runtime needs the official Kubernetes client",
                          hint="pip install 'moat[kubernetes]' (or pip install kubernetes) where moat is"
                               " installed.") from None
    return kubernetes


class ClusterBackend:
    name = "cluster"

    def __init__(self, namespace: str, context: str | None = None, api_client: Any = None) -> None:
        """``api_client``: a configured ``kubernetes.client.ApiClient`` (tests pass one for their fake
        API server); else the kubeconfig's (``KUBECONFIG`` honoured) ``context``."""
        self.k8s = _import()
        self.namespace = namespace
        if api_client is None:
            try:
                api_client = self.k8s.config.new_client_from_config(context=context or None)
            except (self.k8s.config.ConfigException, OSError, TypeError) as exc:
                raise EngineError(f"no Kubernetes cluster is configured: {exc}",
                                  hint="Point KUBECONFIG at a kubeconfig (or create ~/.kube/config), and name"
                                       " its context in MOAT_HOME/config.yaml (kubernetes.context).") from None
        self.api = api_client
        self.core = self.k8s.client.CoreV1Api(api_client)
        self.net = self.k8s.client.NetworkingV1Api(api_client)
        self.server = str(getattr(api_client.configuration, "host", ""))

    # -- one place for the API's failures -----------------------------------------------------------

    def _call(self, what: str, call: Callable[[], Any], *, missing_ok: bool = False, exists_ok: bool = False) -> Any:
        ApiException = self.k8s.client.exceptions.ApiException
        try:
            return call()
        except ApiException as exc:
            if exc.status == 404 and missing_ok:
                return None
            if exc.status == 409 and exists_ok:
                return None
            raise self._translate(what, exc) from None
        except Exception as exc:  # urllib3's connection errors, a TLS failure, a timeout
            if type(exc).__module__.startswith(("urllib3", "ssl", "socket", "websocket")) or isinstance(exc, OSError):
                raise EngineError(f"no Kubernetes cluster answers at {self.server} ({what}): {_first_line(exc)}",
                                  hint="Check that the cluster runs and that the kubeconfig's context points at"
                                       " it (kubectl cluster-info).") from None
            raise

    def _translate(self, what: str, exc: Any) -> EngineError:
        reason = _reason(exc)
        where = f"in the namespace {self.namespace}"
        if exc.status in (401,):
            return ApiRefused(f"the cluster refused moat's credentials ({what}): {reason}",
                               hint="Log in again (your kubeconfig's token may have expired).")
        if exc.status == 403:
            return ApiRefused(f"no permission {what} {where}: {reason}",
                               hint="Ask for a Role there that may create, get, list, patch and delete pods,"
                                    " pods/exec, pods/log, secrets, configmaps, networkpolicies and"
                                    " persistentvolumeclaims; or set kubernetes.namespace to one where you may.")
        if exc.status == 404:
            return ApiRefused(f"not found {what} {where}: {reason}",
                               hint=f"Does the namespace {self.namespace} exist? (kubectl get namespace"
                                    f" {self.namespace})")
        if exc.status == 409:
            return EngineError(f"already exists {what} {where}: {reason}", hint="Run `moat clean`, then again.")
        if exc.status == 422:
            return ApiRefused(f"the cluster rejected {what}: {reason}",
                               hint="A setting in moat.yaml or MOAT_HOME/config.yaml is not valid for this cluster.")
        if exc.status == 0:
            return EngineError(f"the cluster connection broke {what}: {reason}")
        return EngineError(f"the cluster answered {exc.status} {what} {where}: {reason}")

    # -- the backend ------------------------------------------------------------------------------

    def ping(self) -> None:
        self._call("listing pods", lambda: self.core.list_namespaced_pod(self.namespace, limit=1))

    def apply(self, manifests: Manifests) -> None:
        """The Pod first, then every object it needs, each created with the Pod as its owner: there is
        no moment at which one exists that deleting the Pod would not take with it. The kubelet waits
        for a Secret a container needs; under strict policy the NetworkPolicy exists before the pod's
        Secret does, so before any of its containers can start."""
        pod = manifests.pod
        name = pod["metadata"]["name"]
        run_id = pod["metadata"]["labels"][LABEL_RUN_ID]
        for obj in manifests.objects:  # the namespace's shared cache: not the run's, made once
            if obj["kind"] == "PersistentVolumeClaim":
                self._create(obj)
        try:
            created = self._call(f"creating the pod {name}",
                                 lambda: self.core.create_namespaced_pod(self.namespace, pod))
            owner = {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": created.metadata.uid}
            owned = sorted((o for o in manifests.objects if o["kind"] in OWNED_KINDS),
                           key=lambda o: OWNED_KINDS.index(o["kind"]))
            for obj in owned:
                self._create({**obj, "metadata": {**obj["metadata"], "ownerReferences": [owner]}})
        except BaseException:
            # The error that stopped the apply is the one to tell; `moat clean` sweeps again.
            with contextlib.suppress(EngineError):
                self._sweep(run_id, name)
            raise

    def _create(self, obj: dict[str, Any]) -> None:
        kind, name = obj["kind"], obj["metadata"]["name"]
        what = f"creating the {kind} {name}"
        if kind == "Secret":
            self._call(what, lambda: self.core.create_namespaced_secret(self.namespace, obj))
        elif kind == "ConfigMap":
            self._call(what, lambda: self.core.create_namespaced_config_map(self.namespace, obj))
        elif kind == "NetworkPolicy":
            self._call(what, lambda: self.net.create_namespaced_network_policy(self.namespace, obj))
        elif kind == "PersistentVolumeClaim":  # the namespace's cache: made once, kept
            self._call(what, lambda: self.core.create_namespaced_persistent_volume_claim(self.namespace, obj),
                       exists_ok=True)
        else:
            raise EngineError(f"moat does not apply objects of kind {kind}")

    def _kinds(self) -> tuple[tuple[str, Any, Any], ...]:
        return (("NetworkPolicy", self.net.list_namespaced_network_policy, self.net.delete_namespaced_network_policy),
                ("Secret", self.core.list_namespaced_secret, self.core.delete_namespaced_secret),
                ("ConfigMap", self.core.list_namespaced_config_map, self.core.delete_namespaced_config_map))

    def _sweep(self, run_id: str, pod: str | None) -> None:
        """Everything of the run, owned or not (a failed apply, a reap): every deletion is tried, the
        first failure raised after them all."""
        selector = f"{LABEL_RUN_ID}={run_id}"
        errors: list[EngineError] = []

        def attempt(what: str, call: Callable[[], Any]) -> Any:
            try:
                return self._call(what, call, missing_ok=True)
            except EngineError as exc:
                errors.append(exc)
                return None

        if pod:
            attempt(f"deleting the pod {pod}", lambda: self.core.delete_namespaced_pod(
                pod, self.namespace, grace_period_seconds=0, propagation_policy="Background"))
        for kind, lister, deleter in self._kinds():
            found = attempt(f"listing {kind}s", partial(lister, self.namespace, label_selector=selector))
            for item in (found.items if found is not None else []):
                attempt(f"deleting the {kind} {item.metadata.name}", partial(deleter, item.metadata.name,
                                                                              self.namespace))
        if errors:
            raise errors[0]

    def remove_stray(self, kind: str, name: str) -> None:
        deleter = next(d for k, _, d in self._kinds() if k == kind)
        self._call(f"deleting the {kind} {name}", partial(deleter, name, self.namespace), missing_ok=True)

    def strays(self, home: str) -> list[tuple[str, str, str]]:
        found = []
        for kind, lister, _ in self._kinds():
            listed = self._call(f"listing {kind}s", partial(lister, self.namespace,
                                                            label_selector=f"{LABEL_RUN_ID},{LABEL_HOME}={home}"))
            for item in listed.items:
                if not item.metadata.owner_references:
                    found.append((kind, item.metadata.name, (item.metadata.labels or {}).get(LABEL_RUN_ID, "")))
        return found

    def status(self, pod: str) -> PodStatus:
        found = self._call(f"reading the pod {pod}", lambda: self.core.read_namespaced_pod(pod, self.namespace),
                           missing_ok=True)
        if found is None:
            return PodStatus("Gone")
        status = found.status
        containers = tuple(_container(c) for c in (status.container_statuses or []))
        init = tuple(_container(c) for c in (status.init_container_statuses or []))
        message = status.message or ""
        reason = status.reason or ""
        for condition in status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                reason = reason or condition.reason or ""
                message = message or condition.message or ""
        return PodStatus(status.phase or "Unknown", containers, reason, message, init)

    def exec(self, pod: str, container: str, argv: tuple[str, ...], stdin: bytes | None = None,
             timeout: float = 60) -> tuple[int, bytes]:
        from kubernetes.stream import stream  # noqa: PLC0415

        what = f"running a command in {pod}/{container}"
        client = self._exec_call(what, lambda: stream(
            self.core.connect_get_namespaced_pod_exec, pod, self.namespace, container=container,
            command=list(argv), stdin=stdin is not None, stdout=True, stderr=True, tty=False,
            _preload_content=False, binary=True))
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        try:
            if stdin:
                for start in range(0, len(stdin), 1 << 16):
                    client.write_stdin(stdin[start:start + (1 << 16)])
            while client.is_open():
                if time.monotonic() > deadline:
                    raise EngineError(f"{what}: no end after {timeout:.0f} s")
                client.update(timeout=1)
                if client.peek_stdout():
                    out += client.read_stdout()
                if client.peek_stderr():
                    err += client.read_stderr()
            out += client.read_stdout() or b""
            err += client.read_stderr() or b""
            code = _exit_code(client.read_channel(ERROR_CHANNEL))
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"{what}: the connection broke ({_first_line(exc)})") from None
        finally:
            client.close()
        return code, bytes(out) if code == 0 else bytes(out + err)

    def _exec_call(self, what: str, call: Callable[[], Any]) -> Any:
        """An exec's WebSocket: the client reports a refused upgrade as status 0 with the HTTP status
        in its text (and a KeyboardInterrupt the same way: the run's own flag tells that one)."""
        try:
            return self._call(what, call)
        except EngineError as exc:
            found = re.search(r"Handshake status (\d{3})", exc.message)
            if found is None:
                raise
            status = int(found.group(1))
            fake = type("Refused", (), {"status": status, "reason": _handshake_reason(exc.message), "body": None})()
            raise self._translate(what, fake) from None

    def logs(self, pod: str, container: str, follow: bool) -> Iterator[bytes]:
        response = self._call(f"reading the log of {pod}/{container}", lambda: self.core.read_namespaced_pod_log(
            pod, self.namespace, container=container, follow=follow, _preload_content=False))
        try:
            yield from response.stream(1 << 14)
        except Exception as exc:  # the connection ended with the pod
            if not follow:
                raise EngineError(f"reading the log of {pod}/{container}: {_first_line(exc)}") from None
        finally:
            response.release_conn()

    def delete(self, pod: str, grace: float = 10, run_id: str | None = None) -> None:
        self._call(f"deleting the pod {pod}", lambda: self.core.delete_namespaced_pod(
            pod, self.namespace, grace_period_seconds=int(grace), propagation_policy="Background"), missing_ok=True)
        if run_id:  # what the pod owns goes with it; what it never came to own goes now
            self._sweep(run_id, None)

    def pods(self, run_id: str | None = None) -> list[RunPod]:
        selector = f"{LABEL_RUN_ID}={run_id}" if run_id else LABEL_RUN_ID
        found = self._call("listing moat's pods", lambda: self.core.list_namespaced_pod(
            self.namespace, label_selector=selector))
        return [RunPod(p.metadata.name, self.namespace, (p.metadata.labels or {}).get(LABEL_RUN_ID, ""),
                       p.status.phase or "Unknown", str(p.metadata.creation_timestamp or ""),
                       (p.metadata.labels or {}).get(LABEL_HOME, "")) for p in found.items]


def current_context() -> str | None:
    """The kubeconfig's current context, as the client reads it (None when it cannot say): a run
    records it, so that stop, destroy and clean find its pod should the current context change."""
    try:
        from kubernetes import config  # noqa: PLC0415

        _, active = config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
    except Exception:
        return None
    return str(active["name"]) if active and active.get("name") else None


def _container(status: Any) -> ContainerStatus:
    state = status.state
    if state is not None and state.terminated is not None:
        t = state.terminated
        return ContainerStatus(status.name, "terminated", t.reason or "", t.exit_code, t.message or "")
    if state is not None and state.running is not None:
        return ContainerStatus(status.name, "running")
    waiting = state.waiting if state is not None else None
    return ContainerStatus(status.name, "waiting", (waiting.reason or "") if waiting else "",
                           None, (waiting.message or "") if waiting else "")


def _handshake_reason(text: str) -> str:
    """The API server's message in a refused upgrade's text (its JSON body), else its status line."""
    found = re.search(r'"message"\s*:\s*("(?:[^"\\]|\\.)*")', text)
    if found:
        try:
            return str(json.loads(found.group(1)))
        except ValueError:
            return found.group(1)
    line = re.search(r"Handshake status (\d{3} [^-]*)", text)
    return line.group(1).strip() if line else "refused"


def _exit_code(channel: Any) -> int:
    """The exit code in an exec's status channel (v4): Success, or a NonZeroExitCode cause; any other
    failure (the program not found, a container gone) is one moat says as such."""
    text = channel.decode(errors="replace") if isinstance(channel, bytes) else str(channel or "")
    if not text.strip():
        return 1
    try:
        status = json.loads(text)
    except ValueError:
        return 1
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode" and str(cause.get("message", "")).isdigit():
            return int(cause["message"])
    message = str(status.get("message") or "")
    if "executable file not found" in message or "no such file or directory" in message:
        return 127
    raise EngineError(f"the command could not run: {message or status.get('reason') or 'failed'}")


def _reason(exc: Any) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    return str(body.get("message") or exc.reason or "").strip()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
