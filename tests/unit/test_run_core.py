"""The run core against a fake runtime: phases, one scope, one signal machine, teardown that always
finishes. No engine, no socket: every fault is injected."""

from __future__ import annotations

import errno
import json
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from moat.errors import EngineError, MoatError
from moat.plan.model import Plan
from moat.run.execution import Options, Outcome, Run
from moat.run.report import PlainReporter
from moat.run.startup import AgentExitedEarly
from moat.run.store import RunStore
from moat.runtime.base import EngineGone, OutputChunk
from tests.unit.fakes import FakeRuntime, wait_until
from tests.unit.support import plan_for

REDIS_PG = ("dependencies: [redis, postgres]\nservices:\n  redis:\n    image: moat-test/redis:latest\n"
            "  postgres:\n    image: moat-test/postgres:latest\n")


def make_plan(home: Path, text: str = REDIS_PG, command: tuple[str, ...] = ("sh", "-c", "echo hi"),
              **request: Any) -> Plan:
    return plan_for(text, command=command, home=home, scratch_root=home / "scratch", **request)


def execute(plan: Plan, runtime: FakeRuntime, home: Path, *, options: Options | None = None,
            during: Any = None) -> tuple[Outcome | None, BaseException | None, dict[str, Any], str]:
    """Run the plan; ``during(run)`` runs in a thread once the run exists. Returns (outcome, error,
    metadata, what the reporter said)."""
    lines: list[str] = []

    class Stream:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return False

    run = Run(plan, runtime, RunStore(home), PlainReporter(Stream()), options)  # type: ignore[arg-type]
    if during is not None:
        threading.Thread(target=during, args=(run,), daemon=True).start()
    outcome: Outcome | None = None
    error: BaseException | None = None
    try:
        outcome = run.execute()
    except MoatError as exc:
        error = exc
    metadata = json.loads((home / "runs" / plan.run_id / "metadata.json").read_text())
    return outcome, error, metadata, "".join(lines)


def records(home: Path, plan: Plan) -> list[dict[str, Any]]:
    path = home / "runs" / plan.run_id / "logs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the ordinary run ----------------------------------------------------------------------------


def test_a_run_starts_everything_relays_the_agent_and_removes_everything(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.agent.chunks = [OutputChunk("stdout", b"hello\r\nworld\n"), OutputChunk("stderr", b"oops")]
    runtime.agent.exit_code = 7
    plan = make_plan(tmp_path)
    outcome, error, meta, _ = execute(plan, runtime, tmp_path)
    assert error is None and outcome is not None
    assert (outcome.state, outcome.exit_code) == ("exited", 7)
    assert (meta["state"], meta["exit_code"]) == ("exited", 7) and meta["ended_at"]
    assert runtime.left() == []
    logged = records(tmp_path, plan)
    assert [(r["stream"], r["line"]) for r in logged if r["stream"] != "moat"] == [
        ("stdout", "hello"), ("stdout", "world"), ("stderr", "oops")]
    exits = [r for r in logged if r["line"].startswith("agent exited with code")]
    assert len(exits) == 1  # said once, not twice
    # The agent was held: created and started while the services started, released at its turn.
    [agent] = [c for op, c in runtime.calls if op == "release"]
    assert agent.startswith("agent-")
    for key in ("network", "services_ready", "agent_started", "first_output", "agent_exited"):
        assert key in meta["timings"]


def test_service_logs_are_saved_before_their_containers_go(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.on_create = lambda c: setattr(c, "log", f"{c.spec.service} says hello\n")
    plan = make_plan(tmp_path)
    execute(plan, runtime, tmp_path)
    for service in ("redis", "postgres"):
        saved = tmp_path / "runs" / plan.run_id / "services" / f"{service}.log"
        assert saved.read_text() == f"{service} says hello\n"
    makers = runtime.warm_makers()
    order = [op for op, object_id in runtime.calls
             if op in ("logs", "remove_container", "remove_network") and object_id not in makers]
    last_container = max(i for i, op in enumerate(order) if op == "remove_container")
    assert order.index("remove_network") > last_container


# --- teardown runs every step ---------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["record", "engine"])
def test_a_failing_log_save_does_not_stop_the_teardown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       fault: str) -> None:
    runtime = FakeRuntime()
    if fault == "engine":
        runtime.fault("logs", EngineError("reading container logs failed"))
    else:
        from moat.run.store import RecordError, RunRecord

        def full(self: RunRecord, relative: str, text: str) -> Path:
            if relative.startswith("services/"):
                raise RecordError(f"could not write {relative}: No space left on device")
            return self.dir / relative

        monkeypatch.setattr(RunRecord, "write_file", full)
    plan = make_plan(tmp_path)
    _, _, meta, said = execute(plan, runtime, tmp_path)
    assert runtime.left() == []  # every container and the network went anyway
    assert meta["ended_at"]
    assert any("could not save" in p and "redis" in p for p in meta["teardown_notes"])
    assert "teardown_problems" not in meta and "moat clean" not in said  # nothing was left behind


def test_a_failing_removal_is_reported_and_the_rest_still_goes(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.fault("remove_container", EngineError("engine says no"), only=lambda cid: "redis" in cid)
    plan = make_plan(tmp_path)
    _, _, meta, said = execute(plan, runtime, tmp_path)
    left = runtime.left()
    assert [c for c in left if "postgres" in c or "agent" in c] == []
    assert any("engine says no" in p for p in meta["teardown_problems"])
    assert "moat clean" in said
    assert meta["ended_at"]


def test_a_record_that_cannot_be_written_does_not_stop_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = FakeRuntime()
    runtime.agent.chunks = [OutputChunk("stdout", b"line\n" * 3)]
    plan = make_plan(tmp_path)
    from moat.run import store

    real = store.RunRecord.log

    def full(self: store.RunRecord, stream: str, line: str, ts: str | None = None, **extra: object) -> None:
        if stream == "stdout":
            self._failed("log", OSError(errno.ENOSPC, "No space left on device"))
            return
        real(self, stream, line, ts, **extra)

    monkeypatch.setattr(store.RunRecord, "log", full)
    outcome, _error, meta, said = execute(plan, runtime, tmp_path)
    assert outcome is not None and outcome.exit_code == 0
    assert "No space left on device" in meta["record_problem"]
    assert said.count("No space left on device") == 1  # said once, not per line
    assert runtime.left() == []


# --- cancelled, failing, interrupted --------------------------------------------------------------


def test_a_signal_during_startup_cancels_and_tears_down(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    from moat.runtime.base import ExecResult

    runtime.probe_results["postgres"] = [ExecResult(2, "not yet")]  # never ready

    def interrupt(run: Run) -> None:
        wait_until(lambda: runtime.by_role("service"))
        run.signals.deliver(signal.SIGTERM)

    outcome, _error, meta, _ = execute(make_plan(tmp_path), runtime, tmp_path, during=interrupt)
    assert outcome is not None and (outcome.state, outcome.exit_code) == ("interrupted", 143)
    assert meta["state"] == "interrupted" and meta["exit_code"] == 143
    assert runtime.left() == []
    assert not [op for op, _ in runtime.calls if op == "release"]  # the agent never got its turn


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGQUIT])
def test_sighup_and_sigquit_also_cancel(tmp_path: Path, signum: int) -> None:
    runtime = FakeRuntime()
    from moat.runtime.base import ExecResult

    runtime.probe_results["redis"] = [ExecResult(1, "loading")]

    def interrupt(run: Run) -> None:
        wait_until(lambda: runtime.by_role("service"))
        run.signals.deliver(signum)

    outcome, _, _, _ = execute(make_plan(tmp_path), runtime, tmp_path, during=interrupt)
    assert outcome is not None and outcome.exit_code == 128 + signum
    assert runtime.left() == []


def test_signals_during_the_agent_are_forwarded_then_stop_it(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.agent.until_signal = True
    runtime.agent.ignore = (signal.SIGINT,)  # it traps Ctrl-C and goes on

    def interrupt(run: Run) -> None:
        agent = wait_until(lambda: [c for c in runtime.by_role("agent") if c.released])[0]
        run.signals.deliver(signal.SIGINT)
        wait_until(lambda: agent.signals == [signal.SIGINT])
        run.signals.deliver(signal.SIGINT)  # a second Ctrl-C: stopped

    outcome, _, meta, said = execute(make_plan(tmp_path), runtime, tmp_path, during=interrupt)
    assert outcome is not None and outcome.state == "interrupted" and outcome.exit_code == 137
    assert "SIGINT again: stopping the agent" in said
    assert meta["state"] == "interrupted"
    assert runtime.left() == []


def test_a_forwarded_sigterm_is_the_agents_to_answer(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.agent.until_signal = True

    def interrupt(run: Run) -> None:
        wait_until(lambda: [c for c in runtime.by_role("agent") if c.released])
        run.signals.deliver(signal.SIGTERM)

    outcome, _, _meta, _ = execute(make_plan(tmp_path), runtime, tmp_path, during=interrupt)
    assert outcome is not None and (outcome.state, outcome.exit_code) == ("interrupted", 143)
    [agent_signals] = [c for op, c in runtime.calls if op == "signal"]
    assert agent_signals.startswith("agent-")


def test_engine_lost_while_streaming_is_a_clear_error_and_a_recorded_failure(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    runtime.agent.until_signal = True
    runtime.agent.stream_error = EngineGone("reading the agent's output failed: the engine stopped answering")
    runtime.fault("wait", EngineGone("waiting for the agent failed: the engine stopped answering"))
    _outcome, error, meta, _ = execute(make_plan(tmp_path), runtime, tmp_path)
    assert isinstance(error, EngineGone)
    assert meta["state"] == "failed" and "stopped answering" in meta["error"]
    assert meta["ended_at"]


def test_a_held_agent_that_dies_before_its_turn_ends_the_run(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    from moat.runtime.base import ExecResult

    runtime.probe_results["postgres"] = [ExecResult(2, "starting")] * 5 + [ExecResult(0, "1")]

    def kill_the_held_agent(container: Any) -> None:
        if container.spec.role == "agent":
            threading.Timer(0.1, runtime._exit, (container, 137)).start()

    runtime.on_create = kill_the_held_agent
    _outcome, error, meta, _ = execute(make_plan(tmp_path), runtime, tmp_path)
    assert isinstance(error, AgentExitedEarly), error
    assert "before its turn" in error.message
    assert meta["state"] == "failed"
    assert runtime.left() == []


def test_a_container_created_after_teardown_began_is_removed_at_once(tmp_path: Path) -> None:
    from moat.run.scope import Resource, Scope

    removed: list[str] = []
    scope = Scope(remove=lambda r: removed.append(r.id))
    network = scope.add(Resource("network", "n"))
    scope.add(Resource("container", "a"), [network])
    assert scope.close() == []
    assert removed == ["a", "n"]
    scope.add(Resource("container", "late"), [network])  # its creation finished after the close
    assert removed == ["a", "n", "late"]


def test_scope_removes_children_first_runs_every_step_and_hands_over(tmp_path: Path) -> None:
    from moat.run.scope import Resource, Scope

    order: list[str] = []

    def remove(resource: Resource) -> None:
        order.append(resource.id)
        if resource.id == "c1":
            raise EngineError("c1 would not go")

    scope = Scope(remove=remove)
    sweep = scope.add(Resource("sweep", "s"))
    net = scope.add(Resource("network", "n"), [sweep])
    hold = scope.add(Resource("cache-hold", "h", local=True), [sweep])
    scope.add(Resource("container", "c1"), [sweep, net, hold])
    scope.add(Resource("container", "c2"), [sweep, net])
    records = scope.records()
    assert [r["resource"]["id"] for r in records] == ["s", "n", "c1", "c2"]  # the lock stays here
    problems = scope.close()
    assert [p.message for p in problems] == ["c1 would not go"]
    assert set(order[:2]) == {"c1", "c2"}
    assert order.index("h") > order.index("c1") and order.index("n") > order.index("c2")
    assert order[-1] == "s"
    adopted: list[str] = []
    other = Scope(remove=lambda r: adopted.append(r.id))
    other.adopt(records)
    other.close()
    assert adopted[-1] == "s" and set(adopted[:2]) == {"c1", "c2"} and "h" not in adopted


def test_keep_keeps_an_agent_that_ran_and_only_that(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    plan = make_plan(tmp_path)
    execute(plan, runtime, tmp_path, options=Options(keep=True))
    kept = runtime.by_role("agent")
    # Kept (for a look: logs, files, `docker commit`); its pod's holder and network are gone.
    assert len(kept) == 1 and kept[0].status == "exited"
    assert runtime.networks == {} and not runtime.by_role("holder") and not runtime.by_role("service")
    assert not [c for c in runtime.calls if c[0] == "disconnect"]  # in a pod there is nothing to leave
    runtime2 = FakeRuntime()
    from moat.runtime.base import ExecResult

    runtime2.probe_results["redis"] = [ExecResult(1, "never")]
    plan2 = make_plan(tmp_path / "2", text=REDIS_PG.replace("  postgres:\n", "  postgres:\n    ready_timeout: 0.3\n"))
    runtime2.probe_results["postgres"] = [ExecResult(1, "never")]
    _, error, _, _ = execute(plan2, runtime2, tmp_path / "2", options=Options(keep=True))
    assert error is not None and runtime2.left() == []  # an agent that never ran is not kept


def test_errors_and_records_never_show_a_users_password(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    from moat.runtime.base import ExecResult

    secret = "user-chosen-pw-42"
    runtime.probe_results["mysql"] = [ExecResult(1, f"Access denied (using password {secret})")]
    text = ("dependencies: [mysql]\nservices:\n  mysql:\n    ready_timeout: 0.3\n    env:\n"
            f"      MYSQL_USER: bob\n      MYSQL_PASSWORD: {secret}\n")
    runtime.images_present.add("mysql:8")
    runtime.on_create = lambda c: setattr(c, "log", f"init with {secret}\n")
    plan = make_plan(tmp_path, text=text)
    _, error, meta, said = execute(plan, runtime, tmp_path)
    assert error is not None

    assert secret not in error.render() and "Access denied" in error.render()
    assert secret not in said and secret not in json.dumps(meta)
    assert secret not in (tmp_path / "runs" / plan.run_id / "services" / "mysql.log").read_text()
    assert secret not in (tmp_path / "runs" / plan.run_id / "logs.jsonl").read_text()
