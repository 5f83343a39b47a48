"""A run on Kubernetes, from its objects' creation to their deletion.

    apply (Pod, then what it owns) ─► containers started ─► services ready (their own checks, by exec)
      ─► workspace copied in ─► gate opened ─► the agent's log followed ─► its exit code
      ─► workspace and network trace copied out ─► pod deleted (and with it everything it owns)

The pod is deleted whatever happens: an error, Ctrl-C (the caller raises it here), or the end.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from moat.errors import EngineError, MoatError
from moat.plan.kube.manifests import COLLECTED, CONTROL_DIR, EXIT, GO, PROXY_HOME, Manifests
from moat.plan.kube.secrets import SecretValues, exec_argv
from moat.plan.model import Plan, ServiceSpec
from moat.plan.names import kube_pod_name
from moat.proxy.paths import trace_path
from moat.runtime.kubernetes.backend import PodBackend, PodStatus

START_TIMEOUT = 300.0  # image pulls included
POLL = 0.25
# Waiting reasons that never resolve by waiting: said at once, with what to do.
STUCK = {"ErrImagePull": "the cluster cannot pull the image", "ImagePullBackOff": "the cluster cannot pull the image",
         "InvalidImageName": "the image name is invalid", "CreateContainerConfigError": "a Secret or ConfigMap is"
         " missing", "CrashLoopBackOff": "it keeps crashing"}


class PodFailed(EngineError):
    pass


@dataclass
class Timings:
    steps: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.steps[name] = round(now - since, 3)
        return now


class KubeRun:
    def __init__(self, plan: Plan, manifests: Manifests, backend: PodBackend, *, write: Callable[[bytes], None],
                 say: Callable[[str], None], record: Path, copy_workspace: bool) -> None:
        self.plan = plan
        self.manifests = manifests
        self.backend = backend
        self.pod = kube_pod_name(plan.run_id)
        self.write = write
        self.say = say
        self.record = record  # the run's directory: network.jsonl and the workspace's archive go there
        self.copy_workspace = copy_workspace
        self.timings = Timings()
        self.values = SecretValues("", plan.masker(), dict(manifests.env_secret))

    def execute(self) -> int:
        start = time.monotonic()
        try:
            self.backend.apply(self.manifests)
            at = self.timings.mark("apply", start)
            self._wait_started()
            at = self.timings.mark("started", at)
            for service in self.plan.services:
                self._wait_ready(service)
            at = self.timings.mark("ready", at)
            if self.copy_workspace:
                self._copy_in()
                at = self.timings.mark("copied_in", at)
            self._control(GO)
            code = self._follow()
            self.timings.mark("agent", at)
            return code
        finally:
            self._collect()
            self.backend.delete(self.pod)

    # -- the steps --------------------------------------------------------------------------------

    def _status(self) -> PodStatus:
        status = self.backend.status(self.pod)
        if status.phase == "Gone":
            raise PodFailed(f"the pod {self.pod} is gone (deleted, or its node was lost)",
                            hint="See `kubectl get events` in the namespace; run again.")
        if status.reason in ("Evicted", "Preempting", "NodeLost"):
            raise PodFailed(f"the pod {self.pod} was {status.reason.lower()}: {status.message}",
                            hint="The node ran short of resources or went away; run again (maybe with lower"
                                 " container.memory).")
        for init in status.init_containers:
            if init.state == "terminated" and init.exit_code not in (0, None):
                raise PodFailed(f"{self.pod}/{init.name} failed (exit {init.exit_code}): {self._tail(init.name)}",
                                hint="Under strict policy the egress init container sets the pod's iptables rules:"
                                     " the cluster must allow NET_ADMIN for it (a Pod Security level of"
                                     " privileged or baseline with that capability).")
        for container in (*status.init_containers, *status.containers):
            if container.state == "waiting" and container.reason in STUCK:
                raise PodFailed(f"{self.pod}/{container.name}: {STUCK[container.reason]} ({container.reason}:"
                                f" {container.message})",
                                hint="Check the image name and that the cluster may pull from the registry"
                                     " (kubernetes.registry, kubernetes.image_pull_secrets in MOAT_HOME/config.yaml).")
        return status

    def _wait_started(self) -> None:
        names = [c["name"] for c in self.manifests.pod["spec"]["containers"]]
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            status = self._status()
            states = {c.name: c for c in status.containers}
            stopped = [c for c in status.containers if c.state == "terminated"]
            if stopped:
                first = stopped[0]
                raise PodFailed(f"{self.pod}/{first.name} stopped while the pod started (exit {first.exit_code}"
                                f"{', ' + first.reason if first.reason else ''}): {self._tail(first.name)}")
            if all(n in states and states[n].state == "running" for n in names):
                return
            if time.monotonic() > deadline:
                raise PodFailed(f"the pod {self.pod} did not start in {START_TIMEOUT:.0f} s (phase {status.phase})",
                                hint="See `kubectl describe pod` for why (scheduling, image pulls).")
            time.sleep(POLL)

    def _wait_ready(self, service: ServiceSpec) -> None:
        container = f"svc-{service.name}"
        spec = next(c for c in self.manifests.pod["spec"]["containers"] if c["name"] == container)
        argv = exec_argv(service.probe.command, service.probe.env, spec.get("env", []), self.values)
        deadline = time.monotonic() + service.ready_timeout
        output = b""
        while time.monotonic() < deadline:
            code, output = self.backend.exec(self.pod, container, argv, timeout=10)
            if code == 0 and (service.probe.expect is None or service.probe.expect in output.decode(errors="replace")):
                return
            self._status()
            time.sleep(0.5)
        raise PodFailed(f"{service.name} was not ready in {service.ready_timeout:.0f} s: "
                        f"{self.plan.masker().text(output.decode(errors='replace').strip()[-300:])}")

    def _copy_in(self) -> None:
        """The workspace into the agent's emptyDir, as the agent's user (tar from its stdin)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(str(self.plan.workspace), arcname=".")
        data = buffer.getvalue()
        # Exactly its size is read: no stream has to be closed for tar to see its end (a cluster's exec
        # cannot close stdin on every version of its protocol).
        code, output = self.backend.exec(
            self.pod, "agent", ("sh", "-c", f"head -c {len(data)} | tar -x -m -C /workspace -f -"),
            stdin=data, timeout=600)
        if code != 0:
            raise PodFailed(f"copying the workspace into {self.pod} failed: {output.decode(errors='replace')[-300:]}")

    def _control(self, name: str) -> None:
        code, output = self.backend.exec(self.pod, "agent", ("touch", f"{CONTROL_DIR}/{name}"))
        if code != 0:
            raise PodFailed(f"{self.pod}/agent did not take moat's {name} signal: {output.decode(errors='replace')}")

    def _follow(self) -> int:
        """The agent's output as it comes; its exit code once it has one."""
        follower = threading.Thread(target=self._stream, daemon=True)
        follower.start()
        while True:
            if self.copy_workspace:
                code, output = self.backend.exec(self.pod, "agent", ("cat", f"{CONTROL_DIR}/{EXIT}"), timeout=10)
                if code == 0 and output.strip().isdigit():
                    self._copy_out()
                    self._control(COLLECTED)
                    follower.join(5)
                    return int(output.strip())
            status = self._status()
            agent = status.container("agent")
            if agent is not None and agent.state == "terminated":
                follower.join(5)
                return agent.exit_code if agent.exit_code is not None else 1
            time.sleep(1.0 if self.copy_workspace else POLL)

    def _stream(self) -> None:
        try:
            for chunk in self.backend.logs(self.pod, "agent", follow=True):
                self.write(chunk)
        except MoatError:
            pass  # the pod is going away: the end is read from its status

    def _copy_out(self) -> None:
        code, output = self.backend.exec(self.pod, "agent", ("tar", "-c", "-C", "/workspace", "."), timeout=600)
        if code == 0:
            _write_private(self.record / "workspace.tar", output)
            self.say(f"the agent's workspace: {self.record / 'workspace.tar'}")
        else:
            self.say(f"the agent's workspace could not be copied out of {self.pod}")

    def _collect(self) -> None:
        """The proxy's trace into the run's record, before the pod (and it) goes."""
        if self.plan.proxy is None:
            return
        path = trace_path(Path(PROXY_HOME), self.plan.run_id)
        try:
            code, output = self.backend.exec(self.pod, "proxy", ("cat", str(path)), timeout=10)
        except MoatError:
            return
        if code == 0:
            _write_private(self.record / "network.jsonl", output)

    def _tail(self, container: str) -> str:
        try:
            text = b"".join(self.backend.logs(self.pod, container, follow=False)).decode(errors="replace")
        except MoatError:
            return ""
        return self.plan.masker().text(text.strip()[-300:])



def _write_private(path: Path, data: bytes) -> None:
    """0600 from the first byte: what the agent wrote, what it sent (the record's own files are)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
