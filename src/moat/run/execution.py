"""A run from its record's creation to its last cleanup: the phases in order, one signal machine, one
scope, and a teardown that always runs.

    record ─► startup (network, image, services) ─► agent (or hand-off to a supervisor) ─► teardown

Each phase gets only what it needs; what they share is the plan (data), the pod (what exists, in
the scope), the events (what is said) and the signal machine (what the user asked for).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moat import masking
from moat.cache import HostCache
from moat.errors import MoatError
from moat.files import now_iso
from moat.masking import Masker
from moat.ownership import owner_labels
from moat.plan.model import Plan
from moat.plan.policy import plan_caveats
from moat.run import reaper
from moat.run.agent import AgentRun
from moat.run.events import RunEvents
from moat.run.pod import AgentState, CacheHolds, Pod, Remover
from moat.run.proxyuse import DaemonProxy, ProxyClient
from moat.run.registry import Registry
from moat.run.report import Reporter
from moat.run.scope import Scope
from moat.run.signals import DONE, TEARDOWN, Interrupted, RunSignals
from moat.run.startup import Started, Startup
from moat.run.store import RunRecord, RunStore
from moat.run.teardown import close
from moat.run.timeline import Timeline
from moat.runtime.base import Runtime

REAPER_GRACE = 10.0  # seconds teardown waits for the orphan reaper


@dataclass(frozen=True)
class Options:
    keep: bool = False  # keep the agent container after it exits
    rebuild: bool = False


@dataclass
class Outcome:
    """How the run ended, as recorded."""

    state: str  # exited | interrupted | failed
    exit_code: int | None = None
    error: str | None = None
    handed_off: bool = False


class Run:
    """One run, executed in this process (``execute``) or adopted by a supervisor (``supervisor.py``)."""

    def __init__(self, plan: Plan, runtime: Runtime, store: RunStore, reporter: Reporter,
                 options: Options | None = None, signals: RunSignals | None = None,
                 proxy: ProxyClient | None = None) -> None:
        """``signals``: a machine the caller installed already (the CLI does, before anything slow,
        so that not even a Ctrl-C in moat's first moments is lost); it stays installed after the run.
        ``proxy``: how the run talks to moat's credential proxy (the shared daemon by default)."""
        self.plan = plan
        self.proxy: ProxyClient = proxy or DaemonProxy(plan.home)
        self.runtime = runtime
        self.store = store
        self.reporter = reporter
        self.options = options or Options()
        self.masker = Masker(plan.secrets)
        masking.register(self.masker)
        self._owns_signals = signals is None
        self.signals = signals or RunSignals()
        self.signals.on_notice = self._notice
        self.signals.on_abandon = self._abandon
        self.timeline = Timeline()
        self.agent_state = AgentState(keep=self.options.keep)
        self.holds = CacheHolds(HostCache(plan.home))
        self._record: RunRecord | None = None
        self._events: RunEvents | None = None
        self._scope: Scope | None = None
        self._pod: Pod | None = None
        self._reaper: threading.Thread | None = None
        self.handed_off = False  # a supervisor owns the run (from the hand-off's commit on)

    # --- the whole run ---------------------------------------------------------------------------

    def execute(self, *, detach: bool = False) -> Outcome:
        """Run the plan. Returns how it ended (the agent's exit code, or 128+signal); raises
        ``MoatError`` on failure, after teardown."""
        if self._owns_signals:
            self.signals.install()
        try:
            record = self._create_record(detach)
            self.open(record)
            return self.guarded(lambda: self._body(detach))
        finally:
            if self._owns_signals:
                self.signals.uninstall()
            else:
                self.signals.enter(DONE)
            self.reporter.pause()

    def _create_record(self, detach: bool) -> RunRecord:
        plan = self.plan
        record = self.store.create(
            plan.run_id, self.masker, on_failure=self.record_failed,
            name=plan.name, workspace=str(plan.workspace), runtime=plan.runtime,
            config_file=str(plan.config_file) if plan.config_file else None,
            image=plan.image.tag, network=plan.network, command=list(plan.command),
            services=[{"name": s.name, "image": s.image, "container_name": s.container_name}
                      for s in plan.services],
            agent={"container_name": plan.agent.name}, detached=detach,
            identity={"uid": plan.identity.uid, "gid": plan.identity.gid},
            proxy=plan.proxy is not None, grants=list(plan.proxy.grants) if plan.proxy else [],
            scratch=str(plan.scratch),  # for `moat clean` to remove, should the run's teardown never come
            snapshots=plan.snapshots.to_dict() if plan.snapshots is not None else None,  # for `moat snapshot`
            workspace_mode="bind" if plan.workspace_copy is None else "volume",
            volume_scopes=_volume_scopes(plan),  # for `moat volumes rm`: never an active run's
            snapshot_source=str(snapshot_source(plan)),  # the tree at /workspace (a mount may replace it)
            **({"workspace_volume": plan.workspace_copy.volume} if plan.workspace_copy is not None else {}),
            **({"agent_cli": plan.agent_cli, "agent_settings": dict(plan.agent_settings)} if plan.agent_cli else {}),
        )
        try:
            record.write_file("Dockerfile", plan.image.dockerfile)
        except MoatError as exc:
            self.record_failed(exc.message)
        return record

    def open(self, record: RunRecord) -> None:
        """The run's record, events, scope and pod (a supervisor calls it with the record it reopened)."""
        self._record = record
        self._events = RunEvents(self.reporter, record, self.masker)
        self._remover = Remover(self.plan, self.runtime, record, self.holds, self.agent_state, self.proxy)
        self._scope = Scope(remove=self._remover)
        self._pod = Pod(self.plan, self.runtime, self._scope, owner_labels(self.plan.home), self.holds)

    def _body(self, detach: bool) -> Outcome:
        plan, events = self.plan, self.events
        events.log(f"run {plan.run_id} ({plan.name}) in {plan.workspace}")
        events.info(f"run {plan.name} ({plan.run_id})")
        for caveat in [*self.runtime.caveats(plan), *plan_caveats(plan)]:
            events.warn_and_log(caveat)
        self.record.update(state="starting")
        if plan.endpoints is not None:
            self._publish()
        self._reap_orphans()
        snapshot = self._pre_run_snapshot if plan.snapshots is not None and plan.snapshots.pre_run else None
        started = Startup(plan, self.pod, events, self.signals, self.holds.cache, self.timeline, self.masker,
                          rebuild=self.options.rebuild, proxy=self.proxy, snapshot=snapshot).run()
        self.signals.checkpoint()
        if detach:
            from moat.run.handoff import hand_off  # noqa: PLC0415 — only detached runs need it

            hand_off(self, started)
            return Outcome("handed-off", handed_off=True)
        return self.run_agent(started, echo=True)

    def _publish(self) -> None:
        """moat.yaml's ports: the run's route in the routing proxy's table (a host name another active
        run has is refused), and the routing proxy running. Removed at teardown."""
        from moat.run import router  # noqa: PLC0415 — only runs that publish ports need it
        from moat.run.routes import Route, RouteTable  # noqa: PLC0415

        endpoints = self.plan.endpoints
        assert endpoints is not None
        RouteTable(self.plan.home).add(Route(
            self.plan.run_id, endpoints.host, self.plan.name,
            {name: (port, str(endpoints.socket(name))) for name, port in endpoints.ports.items()}))
        router.ensure_running(self.plan.home, endpoints.port)
        for name in sorted(endpoints.ports):
            self.events.info(f"endpoint {name}: {endpoints.url(name)}")

    def _pre_run_snapshot(self, abort: threading.Event) -> None:
        """The workspace as it was before the agent (snapshots' pre-run trigger), taken while the
        services start; the agent waits for it. Best effort, as in the Go tool: a workspace that
        cannot be snapshotted is said so, and the run goes on."""
        from moat.run.snapshots import PRE_RUN, SnapshotError, Snapshots, selection_of  # noqa: PLC0415

        policy = self.plan.snapshots
        assert policy is not None
        started = time.monotonic()
        try:
            snapshot = Snapshots(self.record.dir / "snapshots").create(
                snapshot_source(self.plan), PRE_RUN, selection_of(policy), max_count=policy.max_count,
                keep_initial=not policy.delete_initial, abort=abort)
        except (SnapshotError, OSError) as exc:
            if abort.is_set():
                return
            message = exc.message if isinstance(exc, SnapshotError) else str(exc)
            self.events.warn_and_log(f"no pre-run snapshot of the workspace: {message}")
            return
        self.events.log(f"pre-run snapshot {snapshot.id}: {snapshot.files} files, {snapshot.size_bytes} bytes"
                        f" in {time.monotonic() - started:.2f} s")
        self.timeline.mark("pre_run_snapshot")

    def run_agent(self, started: Started, *, echo: bool, on_started: Any = None) -> Outcome:
        events = self.events
        if echo:
            events.pause()
        result = AgentRun(self.plan, self.pod, events, self.signals, self.agent_state, self.timeline,
                          self.masker, spec=started.agent_spec(self.plan)).run(started.agent, echo=echo,
                                                                                started=on_started)
        if result.signals:
            names = ", ".join(signal.Signals(s).name for s in result.signals)
            events.log(f"the agent was sent {names} and exited with code {result.exit_code}")
            return Outcome("interrupted", result.exit_code)
        return Outcome("exited", result.exit_code)

    def guarded(self, body: Callable[[], Outcome]) -> Outcome:
        """Run ``body``; record how it ended; always tear down (unless a supervisor owns the run now)."""
        record = self.record
        outcome = Outcome("failed")
        try:
            outcome = body()
            return outcome
        except Interrupted as exc:
            self.events.log(f"interrupted by {exc}: tearing down")
            self.events.info(f"interrupted by {exc}: removing what the run started")
            outcome = Outcome("interrupted", exc.exit_code)
            return outcome
        except MoatError as exc:
            outcome = Outcome("failed", error=self.masker.text(exc.message))
            raise
        except BaseException as exc:  # a bug: still tear down, and say what happened
            outcome = Outcome("failed", error=f"internal error: {type(exc).__name__}: {exc}")
            raise
        finally:
            if self.handed_off and self._reaper is not None:
                self._reaper.join(REAPER_GRACE)  # let it finish what it started
            if not self.handed_off:  # after the commit the record and the teardown are the supervisor's
                fields: dict[str, Any] = {"state": outcome.state}
                if outcome.exit_code is not None:
                    fields["exit_code"] = outcome.exit_code
                if outcome.error is not None:
                    fields["error"] = outcome.error
                record.update(**fields)
                # A run whose agent finished leaves its services' warm templates for the next ones.
                self.teardown(make_templates=outcome.state == "exited")
            record.close()

    def teardown(self, make_templates: bool = False) -> None:
        """Remove everything the run created; every step runs; what failed is said and recorded."""
        self.signals.enter(TEARDOWN)
        events, record = self.events, self.record
        events.pause()
        problems = close(self.scope, events)
        notes = self._remover.notes
        for note in notes:
            events.warn(note)
            events.log(f"teardown: {note}")
        self.holds.release_all()
        if self.plan.endpoints is not None:
            from moat.run.routes import RouteTable  # noqa: PLC0415

            RouteTable(self.plan.home).remove(self.plan.run_id)
        if make_templates and any(s.warm is not None for s in self.plan.services):
            self._make_templates()
        if self._reaper is not None:
            self._reaper.join(REAPER_GRACE)  # let it finish what it started
        fields: dict[str, Any] = {"ended_at": now_iso(), "timings": self.timeline.marks()}
        if notes:
            fields["teardown_notes"] = [self.masker.text(n) for n in notes]
        if problems:
            fields["teardown_problems"] = [self.masker.text(p) for p in problems]
            events.warn(f"run {self.plan.run_id} left things behind; `moat clean` removes them")
        if record.failure is not None:
            fields["record_problem"] = record.failure
        record.update(**fields)

    def _make_templates(self) -> None:
        """The warm templates the run's services lack, made now that the run's own are gone; a signal
        stops it at once (a template half-made is never kept)."""
        from moat.cache.warm import WarmCache  # noqa: PLC0415 — only runs with a warm-capable service
        from moat.services.warm import make_missing  # noqa: PLC0415

        events, abort = self.events, threading.Event()

        def work() -> None:
            try:
                # The run's own scratch directory is gone: the template's network (a sandbox's) has one beside it.
                scratch = self.plan.scratch.with_name(f"{self.plan.scratch.name}-warm")
                make_missing(self.runtime, self.plan.services, WarmCache(self.plan.warm_cache), self.pod.owner_labels,
                             scratch, abort, self.masker, events.info, events.warn_and_log)
            except MoatError as exc:  # the engine went away: the next run tries again
                events.log(f"warm templates not made: {exc.message}")
            except Exception as exc:  # a bug there must not fail a run that is over
                events.log(f"warm templates not made: internal error: {type(exc).__name__}: {exc}")

        maker = threading.Thread(target=work, name="warm-templates", daemon=True)
        maker.start()
        while maker.is_alive():
            maker.join(0.1)
            if self.signals.teardown_signalled.is_set() or self.signals.escape.is_set():
                abort.set()
        self.timeline.mark("templates_made")

    def _reap_orphans(self) -> None:
        """What crashed runs left behind is reaped alongside this run's start, never delaying it."""
        runtime, registry, events = self.runtime, Registry(self.store), self.events

        def reap() -> None:
            try:
                problems = reaper.reap_orphans(runtime, registry)
            except MoatError as exc:
                problems = [exc.message]
            except Exception as exc:  # a bug there must not show as a thread's traceback in this run
                problems = [f"internal error: {type(exc).__name__}: {exc}"]
            for problem in problems:
                events.log(f"reaping an orphaned run's leftovers: {problem}")

        self._reaper = threading.Thread(target=reap, name="reaper", daemon=True)
        self._reaper.start()

    # --- helpers -----------------------------------------------------------------------------------

    def _notice(self, message: str) -> None:
        if self._events is not None:
            self._events.warn(message)
        else:
            self.reporter.warn(message)

    def _abandon(self) -> None:
        """The user insists on leaving during a teardown that does not finish (an engine that stopped
        answering): go now; the run is orphaned, and `moat clean` finishes its teardown later."""
        sys.stderr.write(f"moat: leaving without finishing the teardown of {self.plan.run_id};"
                         " `moat clean` removes what is left\n")
        sys.stderr.flush()
        os._exit(130)

    def record_failed(self, message: str) -> None:
        self.reporter.warn(self.masker.text(message))

    # The run's parts, once ``open`` (they exist from the record's creation to the run's end).

    @property
    def record(self) -> RunRecord:
        assert self._record is not None, "the run is recorded before anything starts"
        return self._record

    @property
    def events(self) -> RunEvents:
        assert self._events is not None
        return self._events

    @property
    def scope(self) -> Scope:
        assert self._scope is not None
        return self._scope

    @property
    def pod(self) -> Pod:
        assert self._pod is not None
        return self._pod


def _volume_scopes(plan: Plan) -> list[str]:
    """The run names whose kept volumes the run mounts (moat.yaml's name, not the run's own)."""
    from moat.plan.storage import VOLUMES_DIR  # noqa: PLC0415

    scopes = {m.volume.split("/")[0] for m in plan.agent.mounts if m.volume}
    root = plan.home / VOLUMES_DIR
    scopes |= {Path(m.source).parent.name for m in plan.agent.mounts
               if m.create and Path(m.source).parent.parent == root}
    return sorted(scopes)


def snapshot_source(plan: Plan) -> Path:
    """The host tree the agent sees at /workspace: the workspace, or the mount that replaces it."""
    from moat.constants import WORKSPACE_MOUNT  # noqa: PLC0415

    return next((Path(m.source) for m in plan.agent.mounts
                 if m.target == WORKSPACE_MOUNT and not m.volume and not m.workspace_copy), plan.workspace)
