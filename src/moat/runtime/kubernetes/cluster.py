"""A run's Pod in a cluster, through the official ``kubernetes`` client (``kubernetes.engine: cluster``).

Every API failure is translated here, once, into an ``EngineError`` that names the object, the
namespace and what to do: no cluster reachable, no permission, a quota, a name taken.

Objects go in the order that leaves nothing behind: the Secrets, the files and the NetworkPolicy first
(labelled with the run, so that ``moat clean`` finds them should moat die), then the Pod, then each of
them is given the Pod as its owner — deleting the Pod deletes them all (the cluster's garbage
collector). Should a step fail, what was created is deleted before the error is raised.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from moat.constants import LABEL_HOME, LABEL_RUN_ID
from moat.errors import EngineError
from moat.plan.kube.manifests import Manifests
from moat.runtime.kubernetes.backend import ContainerStatus, PodStatus, RunPod

OWNED_KINDS = ("Secret", "ConfigMap", "NetworkPolicy")


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
            return EngineError(f"the cluster refused moat's credentials ({what}): {reason}",
                               hint="Log in again (your kubeconfig's token may have expired).")
        if exc.status == 403:
            return EngineError(f"no permission {what} {where}: {reason}",
                               hint="Ask for a Role there that may create, get, list, patch and delete pods,"
                                    " pods/exec, pods/log, secrets, configmaps, networkpolicies and"
                                    " persistentvolumeclaims; or set kubernetes.namespace to one where you may.")
        if exc.status == 404:
            return EngineError(f"not found {what} {where}: {reason}",
                               hint=f"Does the namespace {self.namespace} exist? (kubectl get namespace"
                                    f" {self.namespace})")
        if exc.status == 409:
            return EngineError(f"already exists {what} {where}: {reason}", hint="Run `moat clean`, then again.")
        if exc.status == 422:
            return EngineError(f"the cluster rejected {what}: {reason}",
                               hint="A setting in moat.yaml or MOAT_HOME/config.yaml is not valid for this cluster.")
        if exc.status == 0:
            return EngineError(f"the cluster connection broke {what}: {reason}")
        return EngineError(f"the cluster answered {exc.status} {what} {where}: {reason}")

    # -- the backend ------------------------------------------------------------------------------

    def ping(self) -> None:
        self._call("listing pods", lambda: self.core.list_namespaced_pod(self.namespace, limit=1))

    def apply(self, manifests: Manifests) -> None:
        pod = manifests.pod
        name = pod["metadata"]["name"]
        run_id = pod["metadata"]["labels"][LABEL_RUN_ID]
        try:
            for obj in manifests.objects:
                if obj is pod:
                    continue
                self._create(obj)
            created = self._call(f"creating the pod {name}",
                                 lambda: self.core.create_namespaced_pod(self.namespace, pod))
            owner = {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": created.metadata.uid}
            for obj in manifests.objects:
                if obj["kind"] in OWNED_KINDS:
                    self._own(obj, owner)
        except BaseException:
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

    def _own(self, obj: dict[str, Any], owner: dict[str, str]) -> None:
        kind, name = obj["kind"], obj["metadata"]["name"]
        body = {"metadata": {"ownerReferences": [owner]}}
        what = f"giving the {kind} {name} to its pod"
        if kind == "Secret":
            self._call(what, lambda: self.core.patch_namespaced_secret(name, self.namespace, body))
        elif kind == "ConfigMap":
            self._call(what, lambda: self.core.patch_namespaced_config_map(name, self.namespace, body))
        else:
            self._call(what, lambda: self.net.patch_namespaced_network_policy(name, self.namespace, body))

    def _sweep(self, run_id: str, pod: str) -> None:
        """Everything of the run, whether or not its owner was set (a failed apply, a reap)."""
        selector = f"{LABEL_RUN_ID}={run_id}"
        deletions: list[tuple[str, Callable[[], Any]]] = [
            (f"deleting the pod {pod}", lambda: self.core.delete_namespaced_pod(
                pod, self.namespace, grace_period_seconds=0, propagation_policy="Background")),
        ]
        kinds: tuple[tuple[str, Any, Any], ...] = (
            ("Secret", self.core.list_namespaced_secret, self.core.delete_namespaced_secret),
            ("ConfigMap", self.core.list_namespaced_config_map, self.core.delete_namespaced_config_map),
            ("NetworkPolicy", self.net.list_namespaced_network_policy, self.net.delete_namespaced_network_policy))
        for kind, lister, deleter in kinds:
            found = self._call(f"listing {kind}s", partial(lister, self.namespace, label_selector=selector),
                               missing_ok=True)
            for item in (found.items if found is not None else []):
                deletions.append((f"deleting the {kind} {item.metadata.name}",
                                  partial(deleter, item.metadata.name, self.namespace)))
        errors = []
        for what, call in deletions:
            try:
                self._call(what, call, missing_ok=True)
            except EngineError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

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
        client = self._call(what, lambda: stream(
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
            code = client.returncode
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"{what}: the connection broke ({_first_line(exc)})") from None
        finally:
            client.close()
        return (code if code is not None else 1), bytes(out) if code == 0 else bytes(out + err)

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

    def delete(self, pod: str, grace: float = 10) -> None:
        found = self._call(f"reading the pod {pod}", lambda: self.core.read_namespaced_pod(pod, self.namespace),
                           missing_ok=True)
        run_id = found.metadata.labels.get(LABEL_RUN_ID) if found is not None and found.metadata.labels else None
        self._call(f"deleting the pod {pod}", lambda: self.core.delete_namespaced_pod(
            pod, self.namespace, grace_period_seconds=int(grace), propagation_policy="Background"), missing_ok=True)
        if run_id:
            self._sweep(run_id, pod)

    def pods(self, run_id: str | None = None) -> list[RunPod]:
        selector = f"{LABEL_RUN_ID}={run_id}" if run_id else LABEL_RUN_ID
        found = self._call("listing moat's pods", lambda: self.core.list_namespaced_pod(
            self.namespace, label_selector=selector))
        return [RunPod(p.metadata.name, self.namespace, (p.metadata.labels or {}).get(LABEL_RUN_ID, ""),
                       p.status.phase or "Unknown", str(p.metadata.creation_timestamp or ""),
                       (p.metadata.labels or {}).get(LABEL_HOME, "")) for p in found.items]


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


def _reason(exc: Any) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    return str(body.get("message") or exc.reason or "").strip()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
