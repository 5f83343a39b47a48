"""Phase 1 of a run: the pod's network, then the agent's image and every service, in parallel.

    network ─┬─ agent image (build if missing) ─ (held agent: created and started, waiting) ─┐
             ├─ the proxy (grants): daemon → listener → registration ──┘ (before the agent)   │
             └─ each service: image → container → start → ready → provision ─────────────────┴─► agent

The first failure stops the others; a cancel (a signal) stops everything at the next safe point.
Each worker checks the abort flag before every engine call that creates something, and whatever it
creates is in the run's scope the moment it exists.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace

from moat.agents import plugins
from moat.cache import HostCache, LockAborted, LockTimeout
from moat.cache.warm import Template, WarmCache
from moat.constants import LABEL_HOME, LABEL_ROLE, LABEL_WORKSPACE_OF, ROLE_IMAGE
from moat.errors import EngineError, MoatError
from moat.masking import Masker
from moat.plan.containers import ContainerSpec
from moat.plan.model import ImageSpec, Plan, ServiceSpec
from moat.plan.pod import NO_NETWORK, RELAY_LISTENING, holder_image
from moat.run.events import RunEvents
from moat.run.pod import Pod
from moat.run.proxyuse import ProxyClient
from moat.run.scope import Resource
from moat.run.signals import RunSignals
from moat.run.timeline import Timeline
from moat.runtime.base import EngineGone, Runtime
from moat.services import warm
from moat.services.provision import Provisioner
from moat.services.readiness import Aborted, CheckRefused, ReadinessError, Ready, wait_ready

POLL = 0.1  # seconds: how often the main thread looks at signals and the held agent
SETTLE_LIMIT = 180.0  # seconds teardown waits for start-up's engine calls (each has its own timeout)
AGENT_WATCH = 0.5  # seconds between looks at a held agent's state
RELAY_TIMEOUT = 10.0  # seconds for the sandbox's relay to the proxy to listen
RELAY_POLL = 0.02


class _Slow(MoatError):
    """A warm start that was not ready in time while its server ran: not the template's fault."""

    def __init__(self, error: ReadinessError) -> None:
        super().__init__(error.message, hint=error.hint)
        self.error = error


class AgentExitedEarly(EngineError):
    """The held agent's container stopped before its turn."""


def still_waiting(runtime: Runtime, agent: str, masker: Masker) -> None:
    """A held agent must still be waiting for its go line (a bad ulimit, `docker kill`, an init that
    cannot start would otherwise leave the run waiting for an agent that is gone)."""
    state = runtime.state(agent)
    if state.running:
        return
    tail = runtime.logs(agent, tail=10).strip()
    shown = "\n".join(f"    | {masker.text(line)}" for line in tail.splitlines()) or "    (no output)"
    raise AgentExitedEarly(
        f"the agent's container stopped (exit {state.exit_code}) before its turn; its output:\n{shown}",
        hint="Check container.ulimits, container.memory and the command in moat.yaml.")


@dataclass
class Started:
    services: dict[str, str] = field(default_factory=dict)  # service name → container id
    agent: str | None = None  # the held agent's container, when the plan holds it
    holder: str | None = None  # the pod's holder container (strict: its relay is the way to the proxy)
    agent_env: dict[str, str] = field(default_factory=dict)  # known once started: the proxy's address

    def agent_spec(self, plan: Plan) -> ContainerSpec:
        """The agent's container as planned, with what start-up learnt."""
        if not self.agent_env:
            return plan.agent
        return replace(plan.agent, env={**plan.agent.env, **self.agent_env})


class Startup:
    def __init__(self, plan: Plan, pod: Pod, events: RunEvents, signals: RunSignals, cache: HostCache,
                 timeline: Timeline, masker: Masker, rebuild: bool = False,
                 proxy: ProxyClient | None = None,
                 snapshot: Callable[[threading.Event], None] | None = None) -> None:
        self.plan = plan
        self.proxy = proxy
        self.pod = pod
        self.runtime: Runtime = pod.runtime
        self.events = events
        self.signals = signals
        self.cache = cache
        self.timeline = timeline
        self.masker = masker
        self.rebuild = rebuild
        self.snapshot = snapshot  # the pre-run snapshot of the workspace, taken while the rest starts
        self.abort = threading.Event()
        self.started = Started()
        self._lock = threading.Lock()
        self._containers_started = threading.Event()  # every service's container has been started
        self._proxy_ready = threading.Event()  # the run's grants are in the proxy (or it has none)
        self._counted: set[str] = set()
        self.warm_cache = WarmCache(plan.warm_cache)

    def run(self) -> Started:
        """Everything up and ready, or an error (``Interrupted`` when cancelled). Whatever exists is
        in the scope either way: the caller's teardown removes it."""
        self.signals.checkpoint()
        self._cancellable(self.runtime.ping)
        self._cancellable(self._create_pod)
        self.timeline.mark("network")
        if not self.plan.services:
            self._containers_started.set()
        workers = ThreadPoolExecutor(max_workers=len(self.plan.services) + 3, thread_name_prefix="moat-start")
        futures: list[Future[None]] = [workers.submit(self._agent), workers.submit(self._proxy)]
        futures += [workers.submit(self._service, spec) for spec in self.plan.services]
        if self.snapshot is not None:
            futures.append(workers.submit(self.snapshot, self.abort))
        try:
            self._wait(futures)
        finally:
            self.abort.set()  # no-op on success; on failure, stops what is still running
            workers.shutdown(wait=False, cancel_futures=True)
            self._settle(futures)
        self.timeline.mark("services_ready")
        return self.started

    def _create_pod(self) -> None:
        """The run's network, then its pod's holder (see plan.pod): a strict pod has no network."""
        holder = self.plan.holder
        if holder is None or holder.network != NO_NETWORK:
            self.pod.create_network()
        if holder is None:
            return
        self._ensure_holder_image(holder.image)
        if self.abort.is_set():
            raise Aborted
        self.started.holder = self.pod.create_holder(holder)

    def _ensure_holder_image(self, ref: str) -> None:
        """Strict mode's own image (socat) is built here; a permissive holder's base image is pulled."""
        if self.runtime.image_exists(ref):
            return
        image = holder_image()
        if ref == image.tag:
            self._build(image, "moat's pod image (socat: strict mode's relay)", key="pod-image", log="pod-build.log")
            return
        self.events.task("pod-image", f"pulling {ref} (the pod's holder)")
        try:
            self._pull(ref, "pod-image")
        except EngineError:
            self.events.finish("pod-image", f"pulling {ref}", ok=False)
            raise
        self.events.finish("pod-image", f"pulled {ref}")

    def _cancellable(self, call: Callable[[], None]) -> None:
        """An engine call in the main thread's stead, so that a cancel is heard while it is under way
        (an engine that stopped answering takes its client's timeout to say so)."""
        try:
            self._abortable(call, self.signals.cancel)
        except Aborted:
            # The call goes on in its thread (a build, the pod's holder): it stops at its next look
            # at the abort flag, before it creates anything more.
            self.abort.set()
            self.signals.checkpoint()  # the cancel: Interrupted
            raise

    def _settle(self, futures: list[Future[None]]) -> None:
        """Every creation under way finishes (and is in the scope) before teardown starts: workers stop
        at their next check of the abort flag. Only an engine that stopped answering (their calls do
        not return) and a user who insists (``escape``) end the wait; what such a call still creates
        is in the scope, which removes it at once, or carries this run's labels for the sweep."""
        deadline = time.monotonic() + SETTLE_LIMIT
        while not all(f.done() for f in futures):
            if self.signals.escape.is_set() or time.monotonic() >= deadline:
                return
            wait(futures, timeout=POLL)

    def _wait(self, futures: list[Future[None]]) -> None:
        pending = set(futures)
        next_watch = time.monotonic() + AGENT_WATCH
        while pending:
            done, pending = wait(pending, timeout=POLL, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                if error is not None and not isinstance(error, Aborted):
                    raise error
            if self.signals.cancel.is_set():
                self.abort.set()
                self.signals.checkpoint()
            if self.started.agent and time.monotonic() >= next_watch:
                next_watch = time.monotonic() + AGENT_WATCH
                self.check_agent()

    def check_agent(self) -> None:
        """A held agent that stopped before its turn (a bad ulimit, `docker kill`) ends the run now."""
        if self.started.agent is not None:
            still_waiting(self.runtime, self.started.agent, self.masker)

    # --- the agent's image, and the agent held ready -----------------------------------------------

    def _agent(self) -> None:
        self._ensure_agent_image()
        if self.plan.workspace_copy is not None:
            self._copy_workspace()
        if self.plan.forwarder is not None:  # the sandbox's published ports
            self._start_relay(self.plan.forwarder, "the relay of the published ports")
        if not self.plan.agent.held:
            return  # created when its turn comes (in a detached run, by the supervisor)
        # The engine starts containers one network operation at a time: the services go first. The
        # agent's environment names the proxy's address: known once the proxy listens.
        for ready in (self._containers_started, self._proxy_ready):
            while not ready.wait(POLL):
                if self.abort.is_set():
                    raise Aborted
        if self.abort.is_set():
            raise Aborted
        agent = self.pod.create_container(self.started.agent_spec(self.plan))
        self.events.record.update(agent={"container_name": self.plan.agent.name, "container_id": agent})
        if self.abort.is_set():
            raise Aborted
        self.runtime.start_container(agent)
        self.started.agent = agent
        self.timeline.mark("agent_held")

    def _copy_workspace(self) -> None:
        """workspace.mode: volume: the workspace's tree (without its excludes, .git whole) written as a
        tar in the run's scratch directory, unpacked into the run's new volume, owned by the agent's
        user. The volume is the run's work: it stays until `moat destroy`, not in the run's scope."""
        from moat.run.snapshots import copy_archive  # noqa: PLC0415 — only volume workspaces need it

        copy = self.plan.workspace_copy
        assert copy is not None
        key = "workspace"
        self.events.task(key, f"copying the workspace into volume {copy.volume}")
        labels = {LABEL_WORKSPACE_OF: self.plan.run_id, LABEL_HOME: self.plan.labels.get(LABEL_HOME, "")}
        try:
            with copy_archive(copy, self.plan.identity, self.plan.scratch, self.abort) as (archive, files):
                if self.abort.is_set():
                    raise Aborted
                self.runtime.fill_volume(copy.volume, self.plan.image.tag, labels, archive)
        except BaseException:
            self.events.finish(key, "copying the workspace", ok=False)
            raise
        self.events.finish(key, f"copied the workspace into volume {copy.volume} ({files} files)")
        self.timeline.mark("workspace_copied")

    # --- the proxy: the run's grants registered, the agent told where it listens ---------------------

    def _proxy(self) -> None:
        spec = self.plan.proxy
        if spec is None:
            self._proxy_ready.set()
            return
        if self.proxy is None:
            raise MoatError("this run has grants but no proxy to give them to (a bug in moat)")
        key = "proxy"
        self.events.task(key, "proxy")
        try:
            self._abortable(self.proxy.ensure_running)
            if self.abort.is_set():
                raise Aborted
            # Registered first: a proxy with a run registered never idles out, so the listener asked
            # for next is the same daemon's.
            self.pod.register_proxy(self.proxy, spec.registration)
            port = None
            if spec.route == "gateway":
                port = self.proxy.listen(self.runtime.host_gateway())
            if self.plan.relay is not None:
                self._start_relay(self.plan.relay)
            elif spec.route == "relay" and self.started.holder is not None:  # a strict pod's holder relays
                self._await_relay(self.started.holder, RELAY_LISTENING)
        except Aborted:
            self.events.finish(key, "proxy: not waited for any more (the run is ending)", ok=None)
            raise
        except MoatError:
            self.events.finish(key, "proxy: not ready", ok=False)
            raise
        self.started.agent_env = spec.proxy_env(port)
        self.timeline.mark("proxy_ready")
        grants = ", ".join(spec.grants) or "no grants"
        self.events.finish(key, f"proxy ready ({grants})")
        self._proxy_ready.set()

    def _start_relay(self, relay: ContainerSpec, what: str = "the relay to moat's proxy") -> None:
        """The relay listens inside the run's network before the agent may use it."""
        container_id = self.pod.create_container(relay)
        if self.abort.is_set():
            raise Aborted
        self.runtime.start_container(container_id)
        self._await_relay(container_id, "ready", what)

    def _await_relay(self, container_id: str, listening: str, what: str = "the relay to moat's proxy") -> None:
        """Until the relay says it listens: the agent's way out is open (and the only one it has)."""
        deadline = time.monotonic() + RELAY_TIMEOUT
        while listening not in self.runtime.logs(container_id):
            state = self.runtime.state(container_id)
            if not state.running:
                output = self.masker.text(self.runtime.logs(container_id, tail=10).strip()) or "(no output)"
                raise EngineError(f"{what} stopped (exit {state.exit_code}): {output}")
            if time.monotonic() >= deadline:
                raise EngineError(f"{what} did not listen within {RELAY_TIMEOUT:g}s")
            if self.abort.wait(RELAY_POLL):
                raise Aborted

    def _ensure_agent_image(self) -> None:
        image = self.plan.image
        if not self.rebuild and self.runtime.image_exists(image.tag):
            self.events.log(f"agent image {image.tag} is up to date")
            return
        if image.claude_plugins is not None and image.claude_plugins.marketplaces:
            # Only now, and only for a build: the clones are the build's input, not the tag's.
            self.events.log("fetching Claude Code's plugin marketplaces")
            fetched: dict[str, bytes] = {}
            wanted = image.claude_plugins
            workspace = self.plan.workspace
            # A clone can hang on the network: it is stopped with the run.
            self._abortable(lambda: fetched.update(plugins.fetch(wanted, workspace, abort=self.abort)))
            image = replace(image, fetched=fetched)
        self._build(image, "agent image", no_cache=self.rebuild)
        self.timeline.mark("image_built")

    def _build(self, image: ImageSpec, what: str, no_cache: bool = False, key: str = "image",
               log: str = "build.log") -> None:
        started = time.monotonic()
        self.events.task(key, f"building {what} {image.tag}")
        lines: list[str] = []

        def on_line(line: str) -> None:
            if self.abort.is_set():
                raise Aborted
            lines.append(line)
            self.events.update(key, line)

        try:
            self._abortable(lambda: self.runtime.build_image(
                image, {**self.plan.labels, LABEL_ROLE: ROLE_IMAGE}, on_line, no_cache=no_cache))
        except MoatError:
            self.events.finish(key, f"building {what} {image.tag}", ok=False)
            raise
        except Aborted:
            self.events.finish(key, f"building {what} {image.tag}: stopped (the run is ending)", ok=None)
            raise
        finally:
            try:
                self.events.record.write_file(log, "\n".join(lines) + "\n")
            except MoatError as exc:
                self.events.log(f"could not save the build log: {exc.message}")
        self.events.finish(key, f"built {what} {image.tag} in {time.monotonic() - started:.1f}s")
        self.events.log(f"built {what} {image.tag}")

    def _abortable(self, work: Callable[[], None], abort: threading.Event | None = None) -> None:
        """Do ``work`` in a daemon thread and wait for it, or for the run to be aborted.

        A build can be silent for minutes (one long apt-get), a pull too: teardown must not wait for
        their next line, nor the process's exit for their end. The engine cancels a build or a pull
        whose client is gone.
        """
        abort = abort or self.abort
        done = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                work()
            except BaseException as exc:  # handed to the waiting thread
                errors.append(exc)
            finally:
                done.set()

        threading.Thread(target=run, name="abortable", daemon=True).start()
        while not done.wait(POLL):
            if abort.is_set():
                raise Aborted
        if errors:
            raise errors[0]

    # --- services ----------------------------------------------------------------------------------

    def _service(self, spec: ServiceSpec) -> None:
        """One service, start to finish: image, container, readiness, then its provisioning."""
        try:
            try:
                container_id = self._bring_up(spec)
            finally:
                self._count_started(spec.name)
            if container_id and spec.provision:
                started = time.monotonic()
                Provisioner(self.runtime, container_id, spec, self.cache, self.events, self.abort,
                            self.masker).run()
                self.timeline.add(f"provision:{spec.name}", time.monotonic() - started)
        except (Aborted, LockAborted):
            return  # another step failed first (or the run was cancelled); its error is the one to report

    def _count_started(self, name: str) -> None:
        with self._lock:
            self._counted.add(name)
            if len(self._counted) >= len(self.plan.services):
                self._containers_started.set()

    def _bring_up(self, spec: ServiceSpec) -> str | None:
        """Start the service and wait until it answers; its container id, once it is ready."""
        started = time.monotonic()
        key = f"service:{spec.name}"
        self.events.task(key, f"{spec.name}")
        try:
            self._ensure_service_image(spec, key)
            if self.abort.is_set():
                raise Aborted
            self.events.update(key, "starting")
            inside: tuple[Resource, ...] = ()
            if spec.cache_path:
                try:
                    inside = (self.pod.hold_cache(spec.name, self.abort),)
                except LockTimeout:
                    raise MoatError(f"{spec.name}: its host cache is being cleaned (`moat cache clean`)",
                                    hint="Wait for the cleaning to finish, then run again.") from None
            ready: Ready | None = None
            failed: MoatError | None = None
            with contextlib.ExitStack() as holding:
                # Held until the service answers: the template is read while the sidecar starts.
                template, container = self._template(spec, holding)
                if template is None:
                    container_id = self._start(spec, container, inside)
                    if container_id is None:
                        self.events.finish(key, f"{spec.name} started (not waiting: wait: false)")
                        return None
                else:
                    try:
                        ready = self._warm_start(spec, template, container, inside, key)
                    except MoatError as exc:
                        failed = exc
            if template is not None and failed is not None:
                container_id = self._start_afresh(spec, template, failed, inside)
                template = None
            else:
                container_id = self.started.services[spec.name]
            if ready is None:
                self.events.update(key, "waiting until it answers")
                ready = self._wait_ready(spec, container_id)
        except (Aborted, LockAborted):
            self.events.finish(key, f"{spec.name}: not waited for any more (the run is ending)", ok=None)
            raise
        except MoatError:
            self.events.finish(key, f"{spec.name} did not become ready", ok=False)
            raise
        total = time.monotonic() - started
        self.timeline.add(f"ready:{spec.name}", total)
        self.events.record.update_service(spec.name, ready_seconds=round(total, 3), probes=ready.probes,
                                          **({"warm": template is not None} if spec.warm is not None else {}))
        how = " (warm)" if template is not None else ""
        self.events.finish(key, f"{spec.name} ready in {total:.2f}s{how}")
        self.events.log(f"{spec.name} ready in {total:.3f}s after {ready.probes} checks{how}")
        return container_id

    def _template(self, spec: ServiceSpec, holding: contextlib.ExitStack) -> tuple[Template | None, ContainerSpec]:
        """The warm template to start from, held for the block (None: start afresh), and the sidecar."""
        if spec.warm is None:
            if spec.cold_reason:
                self.events.log(f"{spec.name} starts afresh: {spec.cold_reason}")
            return None, spec.container
        image = self.runtime.image_config(spec.image)
        service, key = spec.warm.service, warm.key_of(spec.warm, image)
        try:
            if self.warm_cache.broken(service, key):
                self.events.log(f"{spec.name} starts afresh: its warm template failed twice with these settings"
                                f" (`moat cache clean {service}` lets moat try again)")
                return None, spec.container
            template = holding.enter_context(self.warm_cache.using(service, key))
        except OSError as exc:  # MOAT_WARM_CACHE unusable: the run does not need it
            self.events.warn_and_log(f"{spec.name} starts afresh: its warm templates cannot be used"
                                     f" ({exc.strerror or exc}: {exc.filename or self.warm_cache.root})")
            return None, spec.container
        if template is None:
            self.events.log(f"{spec.name} starts afresh: no warm template yet (made after a run whose agent finishes)"
                            " or it is being made or removed")
            return None, spec.container
        return template, warm.seeded(spec, template, image)

    def _start(self, spec: ServiceSpec, container: ContainerSpec, inside: tuple[Resource, ...]) -> str | None:
        """Create and start the sidecar; its id, or None when the run does not wait for it."""
        if self.abort.is_set():
            raise Aborted
        container_id = self.pod.create_container(container, inside)
        with self._lock:
            self.started.services[spec.name] = container_id
        self.events.record.update_service(spec.name, container_id=container_id)
        if self.abort.is_set():
            raise Aborted
        self.runtime.start_container(container_id)
        self._count_started(spec.name)
        return container_id if spec.wait else None

    def _warm_start(self, spec: ServiceSpec, template: Template, container: ContainerSpec,
                    inside: tuple[Resource, ...], key: str) -> Ready:
        """The sidecar seeded from ``template``, the run's credentials set, its check passed. A
        service that is merely slow fails the run as a cold one would; any other failure is raised
        for ``_start_afresh``."""
        self.masker.add([template.password])
        container_id = self._start(spec, container, inside)
        assert container_id is not None  # a warm start waits for its service
        self.events.update(key, "waiting until it answers")
        try:
            ready = self._wait_ready(warm.rekey_spec(spec, template), container_id)
        except CheckRefused:
            raise
        except ReadinessError as exc:
            if self.runtime.state(container_id).running:
                raise _Slow(exc) from None  # its ready_timeout passed: starting afresh would not be faster
            raise
        self.warm_cache.succeeded(template.service, template.key)
        return ready

    def _start_afresh(self, spec: ServiceSpec, template: Template, failed: MoatError,
                      inside: tuple[Resource, ...]) -> str:
        """After a warm start that failed: the template is blamed (dropped, once no other run holds it;
        after a second failure of its key, not made again until `moat cache clean`), the sidecar
        discarded, and the service started afresh; the run goes on."""
        if isinstance(failed, _Slow):
            raise failed.error
        if isinstance(failed, EngineGone):
            raise failed  # the engine, not the template: a fresh start would fail the same way
        first_line = failed.message.splitlines()[0]
        self.events.warn_and_log(f"{spec.name} did not start from its warm template, which is removed;"
                                 f" starting it afresh ({first_line})")
        with contextlib.suppress(MoatError):
            self.events.record.write_file(f"warm-{spec.name}.log", self.masker.text(failed.message) + "\n")
        with contextlib.suppress(OSError):
            self.warm_cache.failed(template.service, template.key)
        container_id = self.started.services.get(spec.name)
        if container_id is not None:
            self.pod.discard(container_id)
        if self.abort.is_set():
            raise Aborted
        started = self._start(spec, spec.container, inside)
        assert started is not None  # a warm start waits for its service
        return started

    def _wait_ready(self, spec: ServiceSpec, container_id: str) -> Ready:
        # A pod's services answer at its holder's address (none in a strict pod: the probe alone).
        return wait_ready(self.runtime, container_id, spec, self.plan.network, self.abort, self.masker,
                          address_of=self.started.holder)

    def _ensure_service_image(self, spec: ServiceSpec, key: str) -> None:
        if self.runtime.image_exists(spec.image):
            return
        try:
            self._pull(spec.image, key)
        except EngineError as exc:
            raise EngineError(
                f"{spec.name}: {exc.message}",
                hint=f"Check the image name and your registry access, or set services.{spec.name}.image"
                     " in moat.yaml to an image you have.",
            ) from None

    def _pull(self, ref: str, key: str) -> None:
        self.events.update(key, f"pulling {ref}")

        def progress(text: str) -> None:
            if self.abort.is_set():
                raise Aborted
            self.events.update(key, f"pulling {ref}: {text}")

        self._abortable(lambda: self.runtime.pull_image(ref, progress))
