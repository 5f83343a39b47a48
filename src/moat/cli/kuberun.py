"""``moat run --runtime kubernetes``: the plan rendered into a Pod and its objects, printed (``--dry-run``)
or run through the configured engine (``kubernetes.engine`` in MOAT_HOME/config.yaml)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from moat.config.home import KubernetesSettings, load_home_config
from moat.constants import MASK
from moat.errors import MoatError, UsageError
from moat.files import now_iso
from moat.interrupts import EARLY_SIGINT
from moat.ownership import owner_metadata
from moat.plan.kube import dump, masked, render, target_for
from moat.plan.kube.manifests import Manifests
from moat.plan.kube.proxyimage import proxy_image
from moat.plan.kube.target import AGENT_REPOSITORY, PROXY_REPOSITORY, pushed
from moat.plan.model import ImageSpec, Plan
from moat.run.store import RunRecord

if TYPE_CHECKING:
    from moat.run.kube import Interrupts, KubeRun
from moat.runtime.kubernetes import backend_for

DRY_RUN_CA = f"<the run's own CA, made when it starts: {MASK}>"


def manifests_for(plan: Plan, settings: KubernetesSettings, *, real_ca: bool) -> tuple[Manifests, ImageSpec]:
    proxy = proxy_image(os.environ)
    target = target_for(settings, plan.image.tag, proxy.tag)
    if real_ca and plan.proxy is not None:
        from moat.proxy.ca import run_ca

        key_and_cert, cert = run_ca()
    else:
        key_and_cert, cert = DRY_RUN_CA, DRY_RUN_CA
    return render(plan, target, ca_cert=cert, ca_key_and_cert=key_and_cert), proxy


def print_manifests(plan: Plan, home: Path, as_json: bool) -> int:
    settings = load_home_config(home).kubernetes
    manifests, _ = manifests_for(plan, settings, real_ca=False)
    mask = plan.masker()
    if as_json:
        click.echo(json.dumps({"plan": plan.to_dict(), "manifests": [masked(o, mask) for o in manifests.objects]},
                              indent=2))
    else:
        click.echo(dump(manifests, mask), nl=False)
    return 0


def run_on_kubernetes(plan: Plan, home: Path, *, detach: bool, rebuild: bool) -> int:
    from moat import masking
    from moat.run.kube import Interrupts, KubeRun
    from moat.run.store import RunStore

    masking.register(plan.masker())
    settings = load_home_config(home).kubernetes
    if plan.interactive:
        raise UsageError("an interactive run is not built for the kubernetes runtime yet",
                         hint="Give a command (moat run --runtime kubernetes . -- CMD) or set interactive: false.")
    interrupts = Interrupts()
    with _handled(interrupts):
        backend = backend_for(settings, home)
        backend.ping()  # before anything is built: no cluster, no permission, said at once
        manifests, proxy = manifests_for(plan, settings, real_ca=True)
        _images(plan, proxy, settings, rebuild)
        # Pinned: should the kubeconfig's current context change, stop/destroy/clean still find the pod.
        if settings.context or settings.engine != "cluster":
            context = settings.context
        else:
            from moat.runtime.kubernetes.cluster import current_context

            context = current_context()
        where = {"engine": settings.engine, "namespace": settings.namespace, "context": context,
                 "pod": manifests.pod["metadata"]["name"]}
        services = [{"name": s.name, "image": s.image} for s in plan.services]
        copy = settings.workspace == "copy"
        record = RunStore(home).create(plan.run_id, plan.masker(), runtime="kubernetes", name=plan.name,
                                       workspace=str(plan.workspace), command=list(plan.command), kubernetes=where,
                                       services=services, workspace_in_pod=copy, detached=detach)
        output = _Output(record)
        run = KubeRun(plan, manifests, backend, write=output, say=_say, record=record.dir, copy_workspace=copy,
                      interrupts=interrupts)
        outcome: dict[str, Any] = {"state": "failed", "exit_code": None}
        record.update(state="running", started_at=now_iso())
        try:
            run.start()
            if detach:
                _hand_off(plan, run, record, output, outcome)
                return 0
            outcome["exit_code"] = run.finish()
            outcome["state"] = "exited"
            return int(outcome["exit_code"])
        except KeyboardInterrupt:
            outcome["state"] = "interrupted"
            return 130
        except MoatError as exc:
            if interrupts.event.is_set():  # the client turned the interrupt into an API error
                outcome["state"] = "interrupted"
                return 130
            outcome["error"] = exc.message
            raise
        finally:
            if not outcome.get("handed_off"):
                _settle(record, output, run, outcome)


def _settle(record: RunRecord, output: _Output, run: KubeRun, outcome: dict[str, Any]) -> None:
    output.flush()
    kept = {"workspace_copied": True, "final_snapshot": run.final_snapshot} if run.final_snapshot else {}
    record.update(**{k: v for k, v in outcome.items() if k != "handed_off"}, **kept, timings=run.timings.steps,
                  ended_at=now_iso())
    record.close()


def _hand_off(plan: Plan, run: KubeRun, record: RunRecord, output: _Output, outcome: dict[str, Any]) -> None:
    """``-d``: the agent runs; a child of this process, in a session of its own, follows it to its end
    (log, exit code, what the run keeps, the pod deleted) while this one prints the run's id and
    returns. Nothing crosses a file: the child is this process, secrets and all, forked. Signals are
    held around the fork: no Ctrl-C can land in the child before it has left the terminal's session."""
    ready_read, ready_write = os.pipe()
    held = set(run.interrupts.SIGNALS)
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    pid = os.fork()
    if pid > 0:  # the foreground: the child owns the run once it says so
        os.close(ready_write)
        try:
            with os.fdopen(ready_read, "rb") as ready:
                said = ready.read(1)
            if said != b"1":
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                run.finish_without_agent()
                raise MoatError(f"the process that was to follow run {plan.run_id} ended at once; the run was"
                                " ended and its pod deleted")
            outcome["handed_off"] = True
            click.echo(f"{plan.run_id} {plan.name}")  # as `moat run -d` says it on every runtime
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
        return
    # The child: no terminal, no signals of the shell's; what it would say goes into the run's log.
    code = 1
    try:
        os.close(ready_read)
        os.setsid()
        for signum in held:  # its own: `moat stop` (SIGTERM) ends the run; the rest were the terminal's
            signal.signal(signum, run.interrupts.handler if signum == signal.SIGTERM else signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        output.echo = False
        run.say = lambda text: record.log("moat", text)
        record.update(**owner_metadata())
        os.write(ready_write, b"1")
        os.close(ready_write)
        try:
            outcome["exit_code"] = run.finish()
            outcome["state"] = "exited"
        except KeyboardInterrupt:
            outcome["state"] = "interrupted"
        except Exception as exc:
            outcome["state"] = "interrupted" if run.interrupts.event.is_set() else "failed"
            outcome["error"] = exc.message if isinstance(exc, MoatError) else f"{type(exc).__name__}: {exc}"
        _settle(record, output, run, outcome)
        code = 0
    finally:
        os._exit(code)  # never back into the foreground's stack (its click, its finally blocks)


def _images(plan: Plan, proxy: ImageSpec, settings: KubernetesSettings, rebuild: bool) -> None:
    """The agent's and the proxy's images built here (unless prebuilt ones are named) and pushed where
    the cluster pulls from; with the podman engine, the services' images are fetched here too."""
    from moat.runtime.docker import DockerRuntime

    docker = DockerRuntime()
    wanted = ((plan.image, not settings.image, AGENT_REPOSITORY),
              (proxy, plan.proxy is not None and not settings.proxy_image, PROXY_REPOSITORY))
    for image, ours, repository in wanted:
        if not ours:
            continue
        if rebuild or not docker.image_exists(image.tag):
            _say(f"building {image.tag}")
            docker.build_image(image, {"moat.role": "image"}, lambda _line: None, no_cache=rebuild)
        if settings.engine == "cluster" and settings.registry:
            remote = pushed(settings.registry, image.tag, repository)
            if docker.push_image(image.tag, remote, lambda _line: None, force=rebuild):
                _say(f"pushed {remote}")
    if settings.engine == "cluster" and not settings.registry and not settings.image:
        _say("no kubernetes.registry: the cluster must find the agent's image itself (a single-node cluster on"
             " this machine's engine)")
    if settings.engine == "podman":
        for service in plan.services:
            if not docker.image_exists(service.image):
                _say(f"pulling {service.image}")
                docker.pull_image(service.image, lambda _line: None)


@contextmanager
def _handled(interrupts: Interrupts) -> Iterator[None]:
    """The run's signals (see run.kube.Interrupts) for as long as it lasts here."""
    previous = {s: signal.signal(s, interrupts.handler) for s in interrupts.SIGNALS}
    try:
        if EARLY_SIGINT.is_set():
            interrupts.event.set()
            raise KeyboardInterrupt
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Output:
    """The agent's output, to this terminal as it comes and line by line into the run's log."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record
        self.pending = b""
        self.echo = True  # a detached run's output goes into its log only

    def __call__(self, data: bytes) -> None:
        if self.echo:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            self.record.log("stdout", line.decode(errors="replace"))

    def flush(self) -> None:
        if self.pending:
            self.record.log("stdout", self.pending.decode(errors="replace"))
            self.pending = b""


def _say(text: str) -> None:
    click.echo(f"moat: {text}", err=True)
