"""The plan as Kubernetes objects: one Pod per run, its Secrets, its files, its NetworkPolicy.

Pure: the same plan and target give the same manifests (golden files hold every example's). The Pod
is the run's pod as Docker builds it — the agent, each service a sidecar on the pod's loopback (names
through ``hostAliases``), the proxy a sidecar on 127.0.0.1:RELAY_PORT with the run's grants (a Secret
only it mounts) — and under strict policy an init container lets only the proxy's user send a packet
out of the pod, with a NetworkPolicy around it. What only exists on this machine (warm templates,
the routing proxy) is not planned for the kubernetes runtime; host paths become volumes here.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from moat.constants import LABEL_ROLE, LABEL_RUN_ID, WORKSPACE_MOUNT
from moat.errors import UsageError
from moat.plan.containers import ContainerSpec
from moat.plan.kube.secrets import SecretValues, escape_expansion
from moat.plan.kube.target import PROXY_UID, KubeTarget
from moat.plan.model import Plan, ServiceSpec
from moat.plan.names import kube_pod_name
from moat.plan.proxy import CA_FILE_NAME, RELAY_PORT

CACHE_CLAIM = "moat-cache"  # the namespace's host cache, shared by every run there (never deleted by one)
LABEL_CACHE = "moat.cache"
CONTROL_DIR = "/run/moat-control"  # the agent's gate: moat writes ``go`` once the services are ready
PROXY_DIR = "/run/moat-proxy"  # the proxy's Secret, in the proxy sidecar only
PROXY_HOME = "/tmp/moat-proxy"  # noqa: S108 — its private files (CA key, trace), in its memory-backed /tmp
REGISTRATION = "registration.json"
PROXY_CA_KEY = "mitmproxy-ca.pem"  # key and certificate, as mitmproxy's confdir names it
ANNOTATION_NAME = "moat.run-name"
ANNOTATION_WORKSPACE = "moat.workspace"
COLLECT_SECONDS = 600  # how long a finished agent waits for moat to copy its workspace back
GO, EXIT, COLLECTED = "go", "exit", "collected"

# The agent's command behind the gate: it starts when moat says the services are ready, gets
# SIGTERM passed on (the shell is PID 1 and would drop it), and — with a copied workspace — waits a
# while after the command so that moat can copy the workspace back out of the container.
GATE = (
    "trap 'exit 143' TERM INT\n"
    f"until [ -e {CONTROL_DIR}/{GO} ]; do sleep 0.1; done\n"
    '"$0" "$@" </dev/null & child=$!\n'
    "trap 'kill -TERM $child 2>/dev/null' TERM INT\n"
    "while :; do wait $child; code=$?; kill -0 $child 2>/dev/null || break; done\n"
    "trap 'exit $code' TERM INT\n"  # the command is over: a SIGTERM now ends the wait below at once
    f"echo $code > {CONTROL_DIR}/{EXIT}\n"
)
COLLECT_WAIT = (f"n=0; until [ -e {CONTROL_DIR}/{COLLECTED} ] || [ $n -ge {COLLECT_SECONDS * 10} ];"
                " do sleep 0.1; n=$((n+1)); done\n")
UPLOAD_DIR = "/run/moat-upload"  # the copied workspace's volume, writable, without its excluded overlays

# Under strict policy: only loopback and the proxy's user may send; everything else is refused at
# once (REJECT, not DROP: a blocked client fails fast instead of hanging). Fails closed: no iptables,
# or IPv6 present and ip6tables missing or failing, and the pod does not start.
_RULES = (
    "  $t -w -A OUTPUT -o lo -j ACCEPT\n"
    f"  $t -w -A OUTPUT -m owner --uid-owner {PROXY_UID} -j ACCEPT\n"
    "  $t -w -A OUTPUT -j REJECT\n"
)
EGRESS_RULES = (
    "set -e\n"
    "for t in iptables ip6tables; do\n"
    "  if [ $t = ip6tables ] && [ ! -s /proc/net/if_inet6 ]; then continue; fi  # no IPv6 in this pod\n"
    "  command -v $t >/dev/null || { echo \"moat: $t is missing: strict egress cannot be set\" >&2; exit 1; }\n"
    + _RULES +
    "done\n"
)


@dataclass(frozen=True)
class Manifests:
    """What a run applies, in order (the Pod last: it owns the rest once created)."""

    objects: tuple[dict[str, Any], ...]
    env_secret: Mapping[str, str]  # the env Secret's data (the real values): exec checks read it
    pod: dict[str, Any]

    def by_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]


@dataclass
class _Volumes:
    """The Pod's volumes, each once, by a name derived from what it holds."""

    items: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, name: str, source: dict[str, Any]) -> str:
        self.items.setdefault(name, {"name": name, **source})
        return name


def render(plan: Plan, target: KubeTarget, *, ca_cert: str, ca_key_and_cert: str) -> Manifests:
    """Every object of the run. ``ca_*``: the run's own CA (``moat.proxy.ca.run_ca``), when it has a
    proxy; the key goes into the proxy's Secret only."""
    base = kube_pod_name(plan.run_id)
    labels = _labels(plan.labels)
    values = SecretValues(f"{base}-env", plan.masker())
    volumes = _Volumes()
    files: dict[str, str] = {}
    file_keys = {source: f"f{index}" for index, (source, _) in enumerate(plan.agent.files)}
    files.update({file_keys[source]: text for source, text in plan.agent.files})
    if plan.proxy is not None:
        files[CA_FILE_NAME] = ca_cert
    context = _Context(plan, target, base, volumes, file_keys, values)

    containers = [_proxy(plan, target, base, volumes)] if plan.proxy is not None else []
    containers += [_service(service, context) for service in plan.services]
    containers.append(_agent(plan, context))
    init = [_egress(target)] if plan.policy is not None and plan.policy.strict and plan.proxy is not None else []

    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # The agent gets nothing of the cluster: no service-account token, no other services' addresses.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostAliases": [{"ip": "127.0.0.1", "hostnames": [s.name for s in plan.services]}] if plan.services else [],
        "terminationGracePeriodSeconds": 10,
        **({"initContainers": init} if init else {}),
        "containers": containers,
        "volumes": list(volumes.items.values()),
        **({"imagePullSecrets": [{"name": n} for n in target.image_pull_secrets]} if target.image_pull_secrets else {}),
    }
    if not spec["hostAliases"]:
        del spec["hostAliases"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": base, "namespace": target.namespace, "labels": {**labels, LABEL_ROLE: "pod"},
                        "annotations": {ANNOTATION_NAME: plan.name, ANNOTATION_WORKSPACE: str(plan.workspace)}},
           "spec": spec}

    objects: list[dict[str, Any]] = []
    if values.data:
        objects.append(_secret(f"{base}-env", target, labels, values.data))
    if plan.proxy is not None:
        objects.append(_secret(f"{base}-proxy", target, labels, {
            REGISTRATION: _registration(plan), PROXY_CA_KEY: ca_key_and_cert}))
    if files:
        objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": f"{base}-files", "namespace": target.namespace, "labels": labels},
                        "data": files})
    if "moat-cache" in volumes.items:
        objects.append(_cache_claim(target, plan.labels))
    objects.append(_network_policy(plan, target, base, labels))
    objects.append(pod)
    return Manifests(tuple(objects), dict(values.data), pod)


@dataclass
class _Context:
    plan: Plan
    target: KubeTarget
    base: str
    volumes: _Volumes
    file_keys: Mapping[str, str]
    values: SecretValues


def _labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k in (LABEL_RUN_ID,) or k.startswith("moat.")}


def _secret(name: str, target: KubeTarget, labels: Mapping[str, str], data: Mapping[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": target.namespace, "labels": dict(labels)},
            "stringData": dict(data)}


def _registration(plan: Plan) -> str:
    assert plan.proxy is not None
    data = plan.proxy.registration.to_json()
    data["trace_file"] = None  # the pod's proxy writes its trace to its log (moat reads it back)
    data["host_ports"] = []  # no host behind a cluster's pod
    return json.dumps(data, sort_keys=True)


def _cache_claim(target: KubeTarget, labels: Mapping[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": [target.cache_access_mode],
                            "resources": {"requests": {"storage": target.cache_size}}}
    if target.storage_class:
        spec["storageClassName"] = target.storage_class
    # Not the run's: kept across runs (as the host cache is), so labelled by home and not by run.
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": CACHE_CLAIM, "namespace": target.namespace,
                         "labels": {LABEL_CACHE: "true", **{k: v for k, v in labels.items() if k == "moat.home"}}},
            "spec": spec}


def _network_policy(plan: Plan, target: KubeTarget, base: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """Nothing may connect to a run's pod. Under strict policy its egress is DNS and the web's ports
    (the proxy's, enforced per user inside the pod by the init container); permissive: any."""
    strict = plan.policy is not None and plan.policy.strict
    spec: dict[str, Any] = {"podSelector": {"matchLabels": {LABEL_RUN_ID: plan.run_id}},
                            "policyTypes": ["Ingress", "Egress"] if strict else ["Ingress"],
                            "ingress": []}
    if strict:
        spec["egress"] = [{"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53},
                                     {"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 443}]}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": base, "namespace": target.namespace, "labels": dict(labels)}, "spec": spec}


def _security(spec: ContainerSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if spec.user:
        uid, _, gid = spec.user.partition(":")
        if uid.isdigit():
            out["runAsUser"] = int(uid)
        if gid.isdigit():
            out["runAsGroup"] = int(gid)
    if spec.cap_drop:
        out["capabilities"] = {"drop": list(spec.cap_drop)}
    if spec.no_new_privileges:
        out["allowPrivilegeEscalation"] = False
    return out


def _resources(spec: ContainerSpec) -> dict[str, Any]:
    limits: dict[str, str] = {}
    if spec.memory_mb:
        limits["memory"] = f"{spec.memory_mb}Mi"
    if spec.cpus:
        limits["cpu"] = f"{round(spec.cpus * 1000)}m"
    return {"limits": limits} if limits else {}


def _volume_name(prefix: str, path: str) -> str:
    return f"{prefix}-{hashlib.sha256(path.encode()).hexdigest()[:10]}"


def _mounts(spec: ContainerSpec, context: _Context, container: str) -> list[dict[str, Any]]:
    plan, volumes = context.plan, context.volumes
    out: list[dict[str, Any]] = []
    cache_root = str(plan.home / "cache")
    for mount in spec.mounts:
        entry: dict[str, Any] = {"mountPath": mount.target}
        if mount.read_only:
            entry["readOnly"] = True
        if mount.source in context.file_keys:
            entry |= {"name": volumes.add("moat-files", {"configMap": {"name": f"{context.base}-files"}}),
                      "subPath": context.file_keys[mount.source]}
        elif plan.proxy is not None and mount.source == plan.proxy.ca_file:
            entry |= {"name": volumes.add("moat-files", {"configMap": {"name": f"{context.base}-files"}}),
                      "subPath": CA_FILE_NAME}
        elif mount.source.startswith(cache_root + "/"):
            entry |= {"name": volumes.add("moat-cache", {"persistentVolumeClaim": {"claimName": CACHE_CLAIM}}),
                      "subPath": posixpath.relpath(mount.source, cache_root)}
        elif mount.source == str(plan.workspace) and mount.target == WORKSPACE_MOUNT:
            entry["name"] = volumes.add("workspace", _workspace_source(plan, context.target))
        elif mount.create:  # a directory moat keeps on the host (an agent's sessions): the pod's own
            entry["name"] = volumes.add(_volume_name("state", f"{container}:{mount.target}"), {"emptyDir": {}})
        elif context.target.workspace == "host" and not mount.volume and not mount.workspace_copy:
            entry["name"] = volumes.add(_volume_name("host", mount.source),
                                        {"hostPath": {"path": mount.source}})
        else:
            raise UsageError(
                f"{mount.source} cannot be mounted at {mount.target} in a Kubernetes pod: the cluster's nodes"
                " do not have this machine's files",
                hint="Remove the mount (moat.yaml's mounts or volumes, --mount) for this run, or set"
                     " kubernetes.workspace: host in MOAT_HOME/config.yaml when the node is this machine.")
        out.append(entry)
        for excluded in mount.excluded:  # an empty directory in front of what the mount leaves out
            target = posixpath.join(mount.target, excluded)
            out.append({"mountPath": target,
                        "name": volumes.add(_volume_name("excluded", f"{container}:{target}"), {"emptyDir": {}})})
    for path in spec.tmpfs:
        target = path.partition(":")[0]
        out.append({"mountPath": target, "name": volumes.add(_volume_name("tmpfs", f"{container}:{target}"),
                                                             {"emptyDir": {"medium": "Memory"}})})
    return out


def _workspace_source(plan: Plan, target: KubeTarget) -> dict[str, Any]:
    if target.workspace == "host":
        return {"hostPath": {"path": str(plan.workspace), "type": "Directory"}}
    return {"emptyDir": {}}  # moat copies the workspace in before the agent's gate opens


def _container(spec: ContainerSpec, name: str, image: str, context: _Context) -> dict[str, Any]:
    env = context.values.env(name, spec.env)
    out: dict[str, Any] = {"name": name, "image": image}
    if spec.entrypoint is not None:
        out["command"] = context.values.args(name, spec.entrypoint, env)
    if spec.command is not None:
        out["args"] = context.values.args(name, spec.command, env)
    if env:
        out["env"] = env
    if spec.working_dir:
        out["workingDir"] = spec.working_dir
    mounts = _mounts(spec, context, name)
    if mounts:
        out["volumeMounts"] = mounts
    security = _security(spec)
    if security:
        out["securityContext"] = security
    resources = _resources(spec)
    if resources:
        out["resources"] = resources
    return out


def _service(service: ServiceSpec, context: _Context) -> dict[str, Any]:
    return _container(service.container, f"svc-{service.name}", service.image, context)


def _agent(plan: Plan, context: _Context) -> dict[str, Any]:
    spec = plan.agent
    if plan.proxy is not None:  # the proxy's address is fixed in a pod: the sidecar's port on loopback
        spec = replace(spec, env={**spec.env, **plan.proxy.proxy_env(None)})
    if spec.groups:
        raise UsageError("docker:host hands this machine's Docker engine to the agent; a Kubernetes pod has none",
                         hint="Remove docker:host from the dependencies for runs on Kubernetes.")
    script = GATE + (COLLECT_WAIT if context.target.workspace == "copy" else "") + "exit $code\n"
    # The command runs as the gate's "$0" "$@": arguments pass through untouched by any shell.
    container = _container(spec, "agent", context.target.agent_image, context)
    args = container.get("args", [escape_expansion(a) for a in plan.command])
    container["command"] = ["/bin/sh", "-c", script]
    container["args"] = args
    mounts = container.setdefault("volumeMounts", [])
    mounts.append({"name": context.volumes.add("moat-control", {"emptyDir": {}}), "mountPath": CONTROL_DIR})
    if context.target.workspace == "copy" and "workspace" in context.volumes.items:
        mounts.append({"name": "workspace", "mountPath": UPLOAD_DIR})  # where moat copies in and out
    return container


def _proxy(plan: Plan, target: KubeTarget, base: str, volumes: _Volumes) -> dict[str, Any]:
    """moat's proxy for this run alone, on the pod's loopback where the agent's proxy URL points."""
    # Readable by any user of the one container that mounts it: the kubelet writes it as root, and the
    # proxy runs as PROXY_UID.
    name = volumes.add("moat-proxy", {"secret": {"secretName": f"{base}-proxy", "defaultMode": 0o444}})
    scratch = volumes.add("proxy-tmp", {"emptyDir": {"medium": "Memory"}})
    return {
        "name": "proxy",
        "image": target.proxy_image,
        "args": ["python3", "-m", "moat.proxy.pod", "--secret-dir", PROXY_DIR, "--listen", f"127.0.0.1:{RELAY_PORT}"],
        "env": [{"name": "HOME", "value": "/tmp"},  # noqa: S108 — the sidecar's own memory-backed /tmp
                {"name": "MOAT_POD_PROXY_HOME", "value": PROXY_HOME}],
        "volumeMounts": [{"name": name, "mountPath": PROXY_DIR, "readOnly": True},
                         {"name": scratch, "mountPath": "/tmp"}],  # noqa: S108
        "securityContext": {"runAsUser": PROXY_UID, "runAsGroup": PROXY_UID, "runAsNonRoot": True,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        # Ready once it listens: the agent's gate opens only after the controller has seen it.
        "readinessProbe": {"tcpSocket": {"port": RELAY_PORT}, "periodSeconds": 1},
    }


def _egress(target: KubeTarget) -> dict[str, Any]:
    return {
        "name": "egress",
        "image": target.proxy_image,
        "command": ["/bin/sh", "-c", EGRESS_RULES],
        "securityContext": {"runAsUser": 0, "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}},
    }
