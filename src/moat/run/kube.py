"""A run on Kubernetes, from its objects' creation to their deletion.

    apply (Pod, then what it owns) ─► containers started ─► services ready (their own checks, by exec)
      ─► workspace copied in ─► gate opened ─► the agent's log followed ─► its exit code
      ─► workspace and network trace copied out ─► pod deleted (and with it everything it owns)

The pod is deleted whatever happens: an error, Ctrl-C (the caller raises it here), or the end.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from moat.cache.layouts import normalize
from moat.constants import WORKSPACE_MOUNT
from moat.errors import EngineError, MoatError
from moat.plan.kube.manifests import COLLECTED, CONTROL_DIR, EXIT, GO, PROXY_HOME, UPLOAD_DIR, Manifests
from moat.plan.kube.secrets import SecretValues, exec_argv
from moat.plan.model import Plan, ServiceSpec
from moat.plan.names import kube_pod_name
from moat.plan.proxy import RELAY_PORT
from moat.proxy.paths import trace_path
from moat.run.snapshots import FINAL, Snapshots
from moat.run.store import SERVICE_LOGS_DIR
from moat.runtime.kubernetes.backend import ApiRefused, PodBackend, PodStatus
from moat.services.provision import listed

START_TIMEOUT = 300.0  # image pulls included
FOLLOW_FAILURES = 30  # execs in a row that may fail while an agent is followed (a flaky connection)
CONFIG_GRACE = 30.0  # seconds a container may wait for its Secret before that is an error
PROXY_READY_TIMEOUT = 60.0
# The proxy sidecar's own Python: listening on the pod's loopback is being ready.
PROXY_CHECK = ("python3", "-c", f"import socket; socket.create_connection(('127.0.0.1', {RELAY_PORT}), 2).close()")
POLL = 0.25
# Waiting reasons that never resolve by waiting: said at once, with what to do.
STUCK = {"ErrImagePull": "the cluster cannot pull the image", "ImagePullBackOff": "the cluster cannot pull the image",
         "InvalidImageName": "the image name is invalid", "CreateContainerConfigError": "a Secret or ConfigMap is"
         " missing", "CrashLoopBackOff": "it keeps crashing"}


class PodFailed(EngineError):
    pass


LOCK_TIMED_OUT = 75  # EX_TEMPFAIL: another run held the item's lock past the wait


def locked_pull(cache: str, key: str, timeout: float) -> str:
    """A shell script (its $0 a name, its arguments the command) that runs "$@" holding ``key``'s lock
    in the shared cache: ``mkdir`` is atomic on every filesystem a claim can have (NFS included, where
    flock may not be); a lock older than the pull's timeout is a dead puller's and is taken over."""
    lock = shlex.quote(f"{cache.rstrip('/')}/.moat-locks/{re.sub(r'[^A-Za-z0-9._-]', '_', key)}")
    minutes = max(1, int(timeout // 60) + 1)
    return (
        f"mkdir -p {shlex.quote(cache.rstrip('/') + '/.moat-locks')}\n"
        "n=0\n"
        f"until mkdir {lock} 2>/dev/null; do\n"
        f"  if [ -n \"$(find {lock} -maxdepth 0 -mmin +{minutes} 2>/dev/null)\" ]; then rmdir {lock}; continue; fi\n"
        f"  n=$((n+1)); [ $n -ge {int(timeout)} ] && exit {LOCK_TIMED_OUT}\n"
        "  sleep 1\n"
        "done\n"
        f"trap 'rmdir {lock}' EXIT\n"
        '"$@"\n'
    )


class Interrupts:
    """Ctrl-C, SIGTERM (`moat stop`), SIGHUP (a closed terminal), SIGQUIT: the first ends the run,
    wherever it lands. The official client turns a KeyboardInterrupt raised inside its WebSocket code
    into an API error, so the run also looks at the flag between its steps; once the teardown has
    begun a signal is only noted, never raised: nothing cuts the pod's deletion short."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

    def __init__(self) -> None:
        self.event = threading.Event()
        self.quiet = False

    def handler(self, _signum: int, _frame: object) -> None:
        first = not self.event.is_set()
        self.event.set()
        if first and not self.quiet:
            raise KeyboardInterrupt

    def check(self) -> None:
        if self.event.is_set() and not self.quiet:
            raise KeyboardInterrupt


@dataclass
class Timings:
    steps: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.steps[name] = round(now - since, 3)
        return now


class KubeRun:
    def __init__(self, plan: Plan, manifests: Manifests, backend: PodBackend, *, write: Callable[[bytes], None],
                 say: Callable[[str], None], record: Path, copy_workspace: bool,
                 interrupts: Interrupts | None = None) -> None:
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
        self._opened = time.monotonic()  # when the gate opened
        self.interrupts = interrupts or Interrupts()
        self.final_snapshot: str | None = None  # the agent's copied workspace, kept (copy mode)
        self._applied_at = time.monotonic()
        self._gate_open = False

    def execute(self) -> int:
        self.start()
        return self.finish()

    def start(self) -> None:
        """Up to the agent's start: the pod made, ready, the workspace in, the gate open. A failure
        deletes the pod before it is raised."""
        at = time.monotonic()
        try:
            self._applied_at = at
            self.backend.apply(self.manifests)
            at = self.timings.mark("apply", at)
            self._wait_started()
            at = self.timings.mark("started", at)
            self._wait_ready()
            at = self.timings.mark("ready", at)
            self._provision()
            if self.copy_workspace:
                self._copy_in()
                at = self.timings.mark("copied_in", at)
            self.interrupts.check()
            self._control(GO)
            self._gate_open = True
            self._opened = time.monotonic()
        except BaseException:
            self._teardown()
            raise

    def finish(self) -> int:
        """The agent followed to its exit code; then what the run keeps is kept and the pod deleted."""
        try:
            code = self._follow()
            self.timings.mark("agent", self._opened)
            return code
        finally:
            self._teardown()

    def finish_without_agent(self) -> None:
        """The run ended before anyone followed its agent (a hand-off that failed): kept, then deleted."""
        self._teardown()

    def _teardown(self) -> None:
        """What the run keeps, then the pod deleted; signals are only noted from here on."""
        self.interrupts.quiet = True
        try:
            if self.copy_workspace and self._gate_open and self.final_snapshot is None:
                self._copy_out(ended=False)  # interrupted or failed: the agent's work so far is kept
            self._collect()
        except Exception as exc:  # the pod is deleted whatever went wrong here
            self.say(f"what the run keeps could not all be kept: {exc}")
        finally:
            self._delete()

    def _delete(self) -> None:
        """The pod goes; a failure to delete it is said, never hides why the run ended."""
        try:
            self.backend.delete(self.pod, run_id=self.plan.run_id)
        except MoatError as exc:
            if sys.exc_info()[0] is None:
                raise
            self.say(f"{exc.message} — delete it yourself: kubectl delete pod {self.pod}")

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
        for container in status.containers:
            if container.name != "agent" and container.state == "terminated":
                raise PodFailed(f"{self.pod}/{container.name} stopped (exit {container.exit_code}"
                                f"{', ' + container.reason if container.reason else ''}): {self._tail(container.name)}",
                                hint="A service or the proxy ended under the agent: see its log above"
                                     " (OOMKilled: raise its memory in moat.yaml).")
        for container in (*status.init_containers, *status.containers):
            if container.reason == "CreateContainerConfigError" and \
                    time.monotonic() - self._applied_at < CONFIG_GRACE:
                continue  # its Secret is created right after the Pod (which owns it)
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
            self.interrupts.check()
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

    def _wait_ready(self) -> None:
        """The proxy listening and every service answering its own check, all polled together (they
        started together); a service with ``wait: false`` is not waited for."""
        waiting: dict[str, tuple[str, tuple[str, ...], ServiceSpec | None, float]] = {}
        if self.plan.proxy is not None:
            waiting["proxy"] = ("proxy", PROXY_CHECK, None, time.monotonic() + PROXY_READY_TIMEOUT)
        containers = {c["name"]: c for c in self.manifests.pod["spec"]["containers"]}
        for service in self.plan.services:
            if not service.wait:
                continue
            container = f"svc-{service.name}"
            try:
                argv = exec_argv(service.probe.command, service.probe.env, containers[container].get("env", []),
                                 self.values)
            except MoatError as exc:
                raise PodFailed(f"{service.name}'s readiness check cannot run: {exc.message}") from None
            waiting[service.name] = (container, argv, service, time.monotonic() + service.ready_timeout)
        last: dict[str, str] = {}
        while waiting:
            for name, (container, argv, checked, deadline) in list(waiting.items()):
                self.interrupts.check()
                try:
                    code, output = self.backend.exec(self.pod, container, argv, timeout=10)
                except ApiRefused:
                    raise  # no permission, no such pod: asking again changes nothing
                except MoatError as exc:  # a check that hangs or a broken exec: tried again
                    code, output = -1, exc.message.encode()
                text = output.decode(errors="replace")
                expect = checked.probe.expect if checked is not None else None
                if code == 0 and (expect is None or expect in text):
                    del waiting[name]
                    continue
                last[name] = text
                if checked is not None and checked.probe.refused is not None and code == checked.probe.refused:
                    raise PodFailed(f"{name} refused moat's readiness check: {self._masked(text)}")
                if time.monotonic() > deadline:
                    limit = checked.ready_timeout if checked is not None else PROXY_READY_TIMEOUT
                    raise PodFailed(f"{name} was not ready in {limit:.0f} s: {self._masked(text)}")
            if waiting:
                self._status()
                time.sleep(0.25)

    def _provision(self) -> None:
        """What the services should hold (ollama's models) into the namespace's cache, by their own
        commands, one puller per item across every run sharing the cache (a lock directory in it);
        what is there already is not fetched again."""
        for service in self.plan.services:
            provision = service.provision
            if provision is None or not provision.items:
                continue
            container = f"svc-{service.name}"
            recipe = provision.recipe
            code, output = self.backend.exec(self.pod, container, recipe.list_command, timeout=60)
            if code != 0:
                raise PodFailed(f"{service.name}: listing its {provision.noun}s failed (exit {code}):"
                                f" {self._masked(output.decode(errors='replace'))}")
            present = listed(output.decode(errors="replace"), recipe)
            for item in provision.items:
                self.interrupts.check()
                if normalize(item, recipe.default_tag) in present:
                    continue
                self.say(f"{service.name}: fetching {provision.noun} {item}")
                argv = tuple(a.replace("{item}", item) for a in provision.command)
                locked = ("sh", "-c", locked_pull(recipe.cache_path, f"{service.name}-{item}", provision.timeout),
                          "moat-provision", *argv)
                # Its lock may be waited for as long as the pull itself may take.
                code, output = self.backend.exec(self.pod, container, locked, timeout=2 * provision.timeout + 30)
                if code != 0:
                    raise PodFailed(f"{service.name} could not fetch {provision.noun} {item}"
                                    f"{' (another run held it too long)' if code == LOCK_TIMED_OUT else ''}: "
                                    f"{self._masked(output.decode(errors='replace'))}")

    def _masked(self, text: str) -> str:
        return self.plan.masker().text(text.strip()[-300:])

    def _copy_in(self) -> None:
        """The workspace (but what its mount excludes) into the agent's volume, as the agent's user."""
        excluded = next((m.excluded for m in self.plan.agent.mounts if m.target == WORKSPACE_MOUNT), ())
        try:
            data = workspace_tar(self.plan.workspace, excluded)
        except OSError as exc:
            raise PodFailed(f"the workspace cannot be read to copy it into the pod: {exc}",
                            hint="Make every file in it readable by moat, or exclude it (mounts: exclude).") from None
        # Exactly its size is read: no stream has to be closed for tar to see its end (a cluster's exec
        # cannot close stdin on every version of its protocol). The volume's root is the cluster's.
        code, output = self.backend.exec(
            self.pod, "agent", ("sh", "-c", f"head -c {len(data)} | tar -x -m --no-overwrite-dir -C {UPLOAD_DIR}"
                                            " -f -"), stdin=data, timeout=600)
        if code != 0:
            raise PodFailed(f"copying the workspace into {self.pod} failed:"
                            f" {self._masked(output.decode(errors='replace'))}")

    def _control(self, name: str) -> None:
        code, output = self.backend.exec(self.pod, "agent", ("touch", f"{CONTROL_DIR}/{name}"))
        if code != 0:
            raise PodFailed(f"{self.pod}/agent did not take moat's {name} signal: {output.decode(errors='replace')}")

    def _follow(self) -> int:
        """The agent's output as it comes; its exit code once it has one. An exec that fails (a broken
        connection in an hours-long run) is tried again; the pod's own state decides the end."""
        follower = threading.Thread(target=self._stream, daemon=True)
        follower.start()
        failures = 0
        while True:
            self.interrupts.check()
            status = self._status()
            agent = status.container("agent")
            if agent is not None and agent.state == "terminated":
                if self.copy_workspace:
                    self.say(f"the agent's container ended before moat could copy its workspace out"
                             f" (exit {agent.exit_code}{', ' + agent.reason if agent.reason else ''})")
                follower.join(5)
                return agent.exit_code if agent.exit_code is not None else 1
            if self.copy_workspace:
                try:
                    code, output = self.backend.exec(self.pod, "agent", ("cat", f"{CONTROL_DIR}/{EXIT}"), timeout=10)
                    failures = 0
                except ApiRefused:
                    raise
                except MoatError:
                    self.interrupts.check()
                    failures += 1
                    if failures >= FOLLOW_FAILURES:
                        raise
                    code, output = -1, b""
                if code == 0 and output.strip().isdigit():
                    self._copy_out(ended=True)
                    self._control(COLLECTED)
                    follower.join(5)
                    return int(output.strip())
            time.sleep(POLL)

    def _stream(self) -> None:
        try:
            for chunk in self.backend.logs(self.pod, "agent", follow=True):
                self.write(chunk)
        except MoatError:
            pass  # the pod is going away: the end is read from its status

    def _copy_out(self, *, ended: bool) -> None:
        """The agent's copy of the workspace into a snapshot of the run (`moat snapshot restore RUN
        --to DIR` brings it out): as it left it, or — interrupted, failed — as it was then."""
        try:
            code, output = self.backend.exec(self.pod, "agent", ("tar", "-c", "-C", UPLOAD_DIR, "."), timeout=600)
        except MoatError as exc:
            code, output = -1, exc.message.encode()
        if code != 0:
            self.say(f"the agent's workspace could not be copied out of {self.pod}:"
                     f" {self._masked(output.decode(errors='replace'))}")
            return
        label = "the agent's workspace at the end of the run" if ended else "the agent's workspace when the run" \
            " was stopped"
        try:
            made = Snapshots(self.record / "snapshots").create_from_tar([output], FINAL, label=label)
        except MoatError as exc:
            self.say(f"the agent's workspace could not be kept: {exc.message}")
            return
        self.final_snapshot = made.id
        self.say(f"the agent's workspace is snapshot {made.id} ({made.files} files): moat snapshot restore"
                 f" {self.plan.run_id} --to DIR")

    def _collect(self) -> None:
        """The services' logs (masked) and the proxy's trace into the run's record, before the pod goes."""
        for service in self.plan.services:
            try:
                text = b"".join(self.backend.logs(self.pod, f"svc-{service.name}", follow=False))
            except MoatError:
                continue
            directory = self.record / SERVICE_LOGS_DIR
            directory.mkdir(mode=0o700, exist_ok=True)
            _write_private(directory / f"{service.name}.log",
                           self.plan.masker().text(text.decode(errors="replace")).encode())
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



def workspace_tar(workspace: Path, excluded: tuple[str, ...]) -> bytes:
    """The workspace as a tar, what ``excluded`` names left out: walked by hand, so that a file is only
    ever looked at when it is kept (tarfile links a second name of a file to the first it saw, which
    must not be one left out)."""
    skip = {e.strip("/") for e in excluded}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(workspace), arcname=".", recursive=False)
        for root, dirs, files in os.walk(workspace):
            relative = os.path.relpath(root, workspace)
            prefix = "" if relative == "." else f"{relative}/"
            dirs[:] = sorted(d for d in dirs if f"{prefix}{d}" not in skip)
            for name in (*dirs, *sorted(files)):
                if f"{prefix}{name}" in skip:
                    continue
                tar.add(os.path.join(root, name), arcname=f"./{prefix}{name}", recursive=False)
    return buffer.getvalue()


def _write_private(path: Path, data: bytes) -> None:
    """0600 from the first byte: what the agent wrote, what it sent (the record's own files are)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
