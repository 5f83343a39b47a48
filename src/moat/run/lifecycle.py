"""Executing a Plan: the run's phases, and the teardown that always follows them.

    network ─┬─ agent image (build if missing) ───────────────┐
             └─ each service: image → create → start → ready ──┴─► agent ─► teardown

Services start in parallel with each other and with the image build. The first failure stops the
others (``abort``); SIGINT/SIGTERM become ``Interrupted``; in every case teardown saves each sidecar's
log and removes every container and network the run created, then sweeps by label for stragglers.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from moat.constants import (
    AGENT_CONTAINER_PREFIX,
    LABEL_ROLE,
    LABEL_RUN_ID,
    LABEL_SERVICE,
    ROLE_AGENT,
    ROLE_IMAGE,
    ROLE_NETWORK,
    ROLE_SERVICE,
    WORKSPACE_MOUNT,
)
from moat.errors import EngineError, MoatError
from moat.files import now_iso
from moat.ownership import owner_labels, owner_metadata
from moat.plan.model import Plan, ServiceSpec
from moat.run import reaper
from moat.run.output import relay
from moat.run.registry import Registry
from moat.run.report import Reporter
from moat.run.signals import Interrupted, interrupts_raise
from moat.run.store import RunRecord, RunStore
from moat.run.teardown import teardown
from moat.runtime.base import ContainerSpec, Runtime
from moat.services.cache import HostCache
from moat.services.provision import Provisioner
from moat.services.readiness import Aborted, wait_ready

# Waits for one line on stdin, then runs the agent's command with stdin from /dev/null (as a
# container without -i has it). No line (stdin closed) means the run ended before the agent's turn.
HOLD_WRAPPER = ("sh", "-c", 'read -r _ || exit 125; exec "$0" "$@" </dev/null')


@dataclass
class Options:
    keep: bool = False  # keep the agent container after it exits
    rebuild: bool = False


@dataclass
class _Created:
    """What exists so far: exactly what teardown must remove."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    services: dict[str, str] = field(default_factory=dict)  # service name → container id
    agent: str | None = None
    network: str | None = None


class RunExecution:
    def __init__(self, plan: Plan, runtime: Runtime, store: RunStore, reporter: Reporter,
                 options: Options | None = None) -> None:
        self.plan = plan
        self.runtime = runtime
        self.store = store
        self.report = reporter
        self.options = options or Options()
        self.masker = plan.masker()
        self.abort = threading.Event()
        self.created = _Created()
        self.record: RunRecord | None = None
        self.started = time.monotonic()
        self.timings: dict[str, float] = {}
        self.workers: ThreadPoolExecutor | None = None
        self.cache = HostCache(store.home)
        # Shared "in use" locks on host caches, held until teardown has removed the sidecars.
        self.cache_holds = contextlib.ExitStack()
        self.handed_off = False  # a supervisor owns the run now (detached): no teardown here
        self.reaper: threading.Thread | None = None
        self.agent_held = False  # its container runs, waiting for the go line (see create_agent)
        self.agent_released = False  # the agent's command has been let run
        self._services_started = threading.Event()  # every service's container is started
        self._started_by: set[str] = set()  # worker threads whose service has been counted

    # --- the whole run -----------------------------------------------------------------------------

    def execute(self, *, detach: bool = False) -> int:
        """Run the plan; returns the agent's exit code (or 128+signal). Raises MoatError on failure.

        With ``detach``, returns 0 once a supervisor process has started the agent and owns the run.
        """
        plan = self.plan
        self.record = record = self.store.create(
            plan.run_id, self.masker,
            name=plan.name, workspace=str(plan.workspace), runtime=plan.runtime,
            config_file=str(plan.config_file) if plan.config_file else None,
            image=plan.image.tag, network=plan.network, command=list(plan.command),
            services=[{"name": s.name, "image": s.image, "container_name": s.container_name}
                      for s in plan.services],
            agent={"container_name": self.agent_name()}, detached=detach,
        )
        record.write_file("Dockerfile", plan.image.dockerfile)
        self._event(f"run {plan.run_id} ({plan.name}) in {plan.workspace}")
        self.report.info(f"run {plan.name} ({plan.run_id})")

        def body() -> int:
            record.update(state="starting")
            self._prepare()
            if detach:
                from moat.run.detach import hand_off  # noqa: PLC0415 — only detached runs need it

                hand_off(self)
                self.handed_off = True
                return 0
            return self._run_agent()

        return self._guarded(body)

    def supervise(self, acknowledge: Callable[[], None]) -> int:
        """In the supervisor of a detached run: start the agent, record it, then tear the run down."""
        record = self.record_()
        record.update(**owner_metadata())
        with self.created.lock:
            for spec in self.plan.services:
                if spec.cache_path:
                    self.cache_holds.enter_context(self.cache.in_use(spec.name))

        def body() -> int:
            return self._start_agent(self.create_agent(), echo=False, started=acknowledge)

        return self._guarded(body)

    def _guarded(self, body: Callable[[], int]) -> int:
        """Run ``body`` with signals as exceptions, record how it ended, and always tear down."""
        record = self.record_()
        outcome: BaseException | None = None
        try:
            with interrupts_raise():
                code = body()
            if not self.handed_off:
                record.update(state="exited", exit_code=code)
            return code
        except Interrupted as exc:
            outcome = exc
            self._event(f"interrupted by {exc}: tearing down")
            record.update(state="interrupted", exit_code=exc.exit_code)
            return exc.exit_code
        except MoatError as exc:
            outcome = exc
            record.update(state="failed", error=exc.message)
            raise
        finally:
            if not self.handed_off:
                self._teardown(outcome)
                record.update(ended_at=now_iso(), timings={k: round(v, 3) for k, v in self.timings.items()})
            record.close()

    # --- phase 1: network, image and services, in parallel -----------------------------------------

    def _prepare(self) -> None:
        plan = self.plan
        self.runtime.ping()
        # What crashed runs left behind is reaped alongside this run's start, never delaying it.
        self.reaper = threading.Thread(target=self._reap_orphans, name="reaper", daemon=True)
        self.reaper.start()
        self.created.network = self.runtime.create_network(plan.network, self._labels(ROLE_NETWORK))
        self.workers = ThreadPoolExecutor(max_workers=len(plan.services) + 1, thread_name_prefix="moat")
        futures: list[Future[None]] = [self.workers.submit(self._prepare_agent)]
        if not plan.services:
            self._services_started.set()
        futures += [self.workers.submit(self._start_service, s) for s in plan.services]
        pending = set(futures)
        while pending:
            # A short timeout keeps the main thread responsive to signals.
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                if error is not None and not isinstance(error, Aborted):
                    self.abort.set()
                    raise error
        self.timings["services_ready"] = time.monotonic() - self.started

    def _reap_orphans(self) -> None:
        try:
            problems = reaper.reap_orphans(self.runtime, Registry(self.store))
        except MoatError as exc:
            problems = [exc.message]
        for problem in problems:
            self._event(f"reaping an orphaned run's leftovers: {problem}")

    def _prepare_agent(self) -> None:
        """The agent's image; then, where starting a container is slow, the agent held started."""
        self._ensure_agent_image()
        if not self.runtime.can_hold or self.plan.interactive:
            return  # created when its turn comes (in a detached run, by the supervisor)
        # The engine starts containers one network operation at a time: the services go first.
        while not self._services_started.wait(0.1):
            if self.abort.is_set():
                raise Aborted
        self.create_agent()

    def _ensure_agent_image(self) -> None:
        image = self.plan.image
        if not self.options.rebuild and self.runtime.image_exists(image.tag):
            self._event(f"agent image {image.tag} is up to date")
            return
        started = time.monotonic()
        key = "image"
        self.report.task(key, f"building agent image {image.tag}")
        lines: list[str] = []

        def on_line(line: str) -> None:
            if self.abort.is_set():
                raise Aborted
            lines.append(line)
            self.report.update(key, line)

        try:
            self._abortable(lambda: self.runtime.build_image(image, {LABEL_ROLE: ROLE_IMAGE}, on_line,
                                                             no_cache=self.options.rebuild))
        except MoatError as exc:
            self.report.finish(key, f"building agent image {image.tag}", ok=False)
            raise exc
        finally:
            assert self.record is not None
            self.record.write_file("build.log", "\n".join(lines) + "\n")
        self.timings["image_build"] = time.monotonic() - started
        self.report.finish(key, f"built agent image {image.tag} in {time.monotonic() - started:.1f}s")
        self._event(f"built agent image {image.tag}")

    def _abortable(self, work: Callable[[], None]) -> None:
        """Do ``work`` in a daemon thread and wait for it, or for the run to be aborted.

        A build can be silent for minutes (one long apt-get): teardown must not wait for its next
        line, nor the process's exit for its end. The engine cancels a build whose client is gone.
        """
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
        while not done.wait(0.1):
            if self.abort.is_set():
                raise Aborted
        if errors:
            raise errors[0]

    def _start_service(self, spec: ServiceSpec) -> None:
        """One service, start to finish: image, container, readiness, then its provisioning."""
        try:
            try:
                container_id = self._bring_up(spec)
            finally:
                self._service_container_started()
            if container_id and spec.provision:
                started = time.monotonic()
                Provisioner(self.runtime, container_id, spec, self.cache, self.report, self.record_(),
                            self.abort, self.masker).run()
                self.timings[f"provision:{spec.name}"] = time.monotonic() - started
        except Aborted:
            return  # another step failed first; its error is the one to report

    def _service_container_started(self) -> None:
        """Counts each service once (the first call for it wins; later ones are no-ops)."""
        with self.created.lock:
            name = threading.current_thread().name
            if name in self._started_by:
                return
            self._started_by.add(name)
            if len(self._started_by) >= len(self.plan.services):
                self._services_started.set()

    def _bring_up(self, spec: ServiceSpec) -> str | None:
        """Start the service and wait until it answers; its container id, once it is ready."""
        started = time.monotonic()
        key = f"service:{spec.name}"
        self.report.task(key, f"{spec.name}")
        try:
            self._ensure_service_image(spec, key)
            if self.abort.is_set():
                raise Aborted
            self.report.update(key, "starting")
            if spec.cache_path:
                with self.created.lock:
                    self.cache_holds.enter_context(self.cache.in_use(spec.name))
            container_id = self.runtime.create_container(self._service_container(spec))
            with self.created.lock:
                self.created.services[spec.name] = container_id
            self.record_().update_service(spec.name, container_id=container_id)
            if self.abort.is_set():
                raise Aborted
            self.runtime.start_container(container_id)
            self._service_container_started()
            if not spec.wait:
                self.report.finish(key, f"{spec.name} started (not waiting: wait: false)")
                return None
            self.report.update(key, "waiting until it answers")
            ready = wait_ready(self.runtime, container_id, spec, self.plan.network, self.abort, self.masker)
        except Aborted:
            self.report.finish(key, f"{spec.name}: stopped (another step failed)", ok=False)
            raise
        except MoatError:
            self.report.finish(key, f"{spec.name} did not become ready", ok=False)
            raise
        total = time.monotonic() - started
        self.timings[f"ready:{spec.name}"] = total
        self.record_().update_service(spec.name, ready_seconds=round(total, 3), probes=ready.probes)
        self.report.finish(key, f"{spec.name} ready in {total:.2f}s")
        self._event(f"{spec.name} ready in {total:.3f}s after {ready.probes} checks")
        return container_id

    def record_(self) -> RunRecord:
        assert self.record is not None, "the run is recorded before anything starts"
        return self.record

    def _ensure_service_image(self, spec: ServiceSpec, key: str) -> None:
        if self.runtime.image_exists(spec.image):
            return
        self.report.update(key, f"pulling {spec.image}")

        def progress(text: str) -> None:
            if self.abort.is_set():
                raise Aborted
            self.report.update(key, f"pulling {spec.image}: {text}")

        try:
            self.runtime.pull_image(spec.image, progress)
        except EngineError as exc:
            raise EngineError(
                f"{spec.name}: {exc.message}",
                hint=f"Check the image name and your registry access, or set services.{spec.name}.image"
                     " in moat.yaml to an image you have.",
            ) from None

    def _service_container(self, spec: ServiceSpec) -> ContainerSpec:
        return ContainerSpec(
            name=spec.container_name,
            image=spec.image,
            labels={**self._labels(ROLE_SERVICE), LABEL_SERVICE: spec.name},
            network=self.plan.network,
            command=spec.command,
            env=spec.env,
            hostname=spec.name,
            aliases=(spec.name,),
            memory_mb=spec.memory_mb,
            tmpfs=spec.tmpfs,
            binds={str(self.cache.service_dir(spec.name)): (spec.cache_path, "rw")} if spec.cache_path else {},
        )

    # --- phase 2: the agent ------------------------------------------------------------------------

    def agent_name(self) -> str:
        return f"{AGENT_CONTAINER_PREFIX}{self.plan.run_id}"

    def _run_agent(self) -> int:
        container_id = self.create_agent()
        self.report.pause()
        if self.plan.interactive:
            code = self._run_interactive(container_id)
        else:
            code = self._start_agent(container_id, echo=True)
        return code

    def create_agent(self) -> str:
        if self.created.agent is not None:
            return self.created.agent  # created ahead, while the services started
        plan = self.plan
        tty = plan.interactive and sys.stdin.isatty() and sys.stdout.isatty()
        # A held agent is started while the services start, blocked on one line of stdin: starting a
        # container costs a few hundred milliseconds, which are then off the run's critical path.
        held = self.runtime.can_hold and not plan.interactive
        spec = ContainerSpec(
            name=self.agent_name(),
            image=plan.image.tag,
            labels=self._labels(ROLE_AGENT),
            network=plan.network,
            command=(*HOLD_WRAPPER, *plan.command) if held else plan.command,
            env=plan.env,
            working_dir=WORKSPACE_MOUNT,
            binds={str(plan.workspace): (WORKSPACE_MOUNT, "rw")},
            memory_mb=plan.limits.memory_mb,
            cpus=plan.limits.cpus,
            dns=plan.limits.dns,
            ulimits=plan.limits.ulimits,
            tty=tty,
            stdin_open=plan.interactive or held,
            init=True,
        )
        container_id = self.runtime.create_container(spec)
        self.created.agent = container_id
        self.record_().update(agent={"container_name": spec.name, "container_id": container_id})
        if held:
            self.runtime.start_container(container_id)
            self.agent_held = True
        return container_id

    def _start_agent(self, container_id: str, *, echo: bool, started: Callable[[], None] | None = None) -> int:
        """Start the agent, relay its output until it exits, and return its exit code."""
        record = self.record_()
        self._event(f"agent starting: {' '.join(self.plan.command)}")
        chunks = self.runtime.attach(container_id)  # attached before start: no line is missed
        self.agent_released = True
        if self.agent_held:
            self.runtime.release(container_id)
        else:
            self.runtime.start_container(container_id)
        record.update(state="running", started_at=now_iso())
        self.timings["agent_started"] = time.monotonic() - self.started
        if started is not None:
            started()
        relay(chunks, record, self._first_output, echo=echo)
        code = self.runtime.wait(container_id)
        self.timings["agent_exited"] = time.monotonic() - self.started
        self._event(f"agent exited with code {code}")
        return code

    def _first_output(self, at: float) -> None:
        self.timings.setdefault("first_output", at - self.started)

    def _run_interactive(self, container_id: str) -> int:
        """The terminal belongs to the agent; its log is read from the runtime afterwards."""
        record = self.record_()
        self.agent_released = True
        record.update(state="running", started_at=now_iso())
        self.timings["agent_started"] = time.monotonic() - self.started
        code = self.runtime.attach_terminal(container_id)
        for line in self.runtime.logs(container_id, timestamps=True).splitlines():
            stamp, _, text = line.partition(" ")
            record.log("tty", text, ts=stamp)
        return code

    # --- teardown ----------------------------------------------------------------------------------

    def _teardown(self, outcome: BaseException | None) -> None:
        teardown(self, outcome)

    # --- helpers -----------------------------------------------------------------------------------

    def _labels(self, role: str) -> dict[str, str]:
        return {LABEL_RUN_ID: self.plan.run_id, LABEL_ROLE: role, **owner_labels(self.store.home)}

    def _event(self, message: str) -> None:
        if self.record is not None:
            self.record.log("moat", message)

