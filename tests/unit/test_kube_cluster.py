"""The cluster engine and the run's controller against a fake API server (tests/kubefake.py), through
the official client: objects created and owned, the gate, the log, the exit code, the workspace both
ways, and every failure a clear error with nothing left in the namespace."""

from __future__ import annotations

import io
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from moat.errors import EngineError
from moat.plan.kube.target import KubeTarget
from moat.plan.model import Plan
from moat.run.kube import KubeRun, workspace_tar
from moat.run.snapshots import Snapshots
from moat.runtime.kubernetes.cluster import ClusterBackend
from tests.kubefake import FakeApiServer
from tests.unit.test_kube_manifests import example_plan, manifests_of

NS = "agents"


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


def _target(workspace: str = "host") -> KubeTarget:
    return KubeTarget(NS, "moat/run:x", "moat/proxy:x", workspace, None, "1Gi")


def _run(api: FakeApiServer, plan: Plan, tmp_path: Path, workspace: str = "host") -> tuple[KubeRun, bytearray]:
    out = bytearray()
    backend = ClusterBackend(NS, api_client=api.api_client())
    run = KubeRun(plan, manifests_of(plan, _target(workspace)), backend, write=out.extend, say=lambda _: None,
                  record=tmp_path, copy_workspace=workspace == "copy")
    return run, out


def _left(api: FakeApiServer) -> list[str]:
    return [f"{plural}/{name}" for (plural, _, name) in api.objects if plural != "persistentvolumeclaims"]


def test_a_run_creates_owned_objects_follows_the_agent_and_deletes_everything(api: FakeApiServer,
                                                                              tmp_path: Path) -> None:
    api.kubelet.agent_exit = 3
    plan = example_plan("multi-service", extra="network:\n  policy: strict\n  rules: [example.com]\n")
    run, out = _run(api, plan, tmp_path)
    seen: dict[str, list[str]] = {}
    original = api.create

    def watching(plural: str, ns: str, body: dict) -> tuple[int, dict]:  # type: ignore[type-arg]
        seen.setdefault("order", []).append(plural)
        return original(plural, ns, body)

    api.create = watching  # type: ignore[method-assign]
    assert run.execute() == 3
    assert bytes(out) == b"hello from the agent\n"
    # The pod first, then what it owns, each created owned (nothing dangles should moat die in between);
    # the policy before the Secrets, without which no container of the pod can start.
    assert seen["order"] == ["pods", "networkpolicies", "secrets", "secrets", "configmaps"]
    assert _left(api) == []
    # Every service's readiness was checked in its own container, no secret on an exec's command line.
    checked = {container for _, container, _, _ in api.kubelet.execs if container.startswith("svc-")}
    assert checked == {"svc-postgres", "svc-mysql", "svc-redis"}
    for _, _, argv, _ in api.kubelet.execs:
        assert not [s for s in plan.secrets if any(s in a for a in argv)]
    gate = [argv for _, c, argv, _ in api.kubelet.execs if c == "agent"]
    assert gate[0] == ("touch", "/run/moat-control/go")


def test_the_pod_owns_the_objects_it_needs(api: FakeApiServer, tmp_path: Path) -> None:
    plan = example_plan("grants")
    backend = ClusterBackend(NS, api_client=api.api_client())
    manifests = manifests_of(plan, _target())
    backend.apply(manifests)
    pod_uid = api.objects[("pods", NS, manifests.pod["metadata"]["name"])]["metadata"]["uid"]
    owned = [o for (p, _, _), o in api.objects.items() if p in ("secrets", "configmaps", "networkpolicies")]
    assert len(owned) == 4  # env and proxy Secrets, files, policy
    assert all(o["metadata"]["ownerReferences"][0]["uid"] == pod_uid for o in owned)
    api.delete("pods", NS, manifests.pod["metadata"]["name"])  # the cluster's cascade takes them with it
    assert _left(api) == []


def test_a_copied_workspace_goes_in_before_the_gate_and_comes_back(api: FakeApiServer, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("from the host\n")
    plan = example_plan("service-redis", workspace=workspace)
    record = tmp_path / "record"
    record.mkdir()
    run, _ = _run(api, plan, record, workspace="copy")
    api.kubelet.agent_exit = 5
    assert run.execute() == 5
    agent_execs = [argv for _, c, argv, _ in api.kubelet.execs if c == "agent"]
    copy_in = next(i for i, a in enumerate(agent_execs) if "tar -x" in " ".join(a))
    assert copy_in < agent_execs.index(("touch", "/run/moat-control/go"))
    snapshots = Snapshots(record / "snapshots")
    final = snapshots.get(None)
    assert final.type == "final"
    assert snapshots.archive(final).stat().st_mode & 0o077 == 0
    snapshots.restore_to(final, tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "from the host\n"
    assert _left(api) == []


def test_an_image_the_cluster_cannot_pull_is_said_and_nothing_is_left(api: FakeApiServer, tmp_path: Path) -> None:
    api.kubelet.unpullable.add("moat/run:x")
    run, _ = _run(api, example_plan("service-redis"), tmp_path)
    with pytest.raises(EngineError, match="cannot pull the image") as info:
        run.execute()
    assert "image_pull_secrets" in (info.value.hint or "")
    assert _left(api) == []


def test_no_permission_for_secrets_names_the_object_and_leaves_nothing(api: FakeApiServer, tmp_path: Path) -> None:
    api.forbidden.add(("create", "configmaps"))
    run, _ = _run(api, example_plan("grants"), tmp_path)
    with pytest.raises(EngineError, match="no permission creating the ConfigMap moat-run-0123456789ab-files in"
                                          " the namespace agents") as info:
        run.execute()
    assert "Role" in (info.value.hint or "")
    assert _left(api) == []  # the Secrets made before it are gone again


def test_a_failed_egress_init_container_stops_the_run(api: FakeApiServer, tmp_path: Path) -> None:
    api.kubelet.init_exit = 1
    plan = example_plan("service-redis", extra="network:\n  policy: strict\n  rules: [example.com]\n")
    run, _ = _run(api, plan, tmp_path)
    with pytest.raises(EngineError, match="egress failed") as info:
        run.execute()
    assert "NET_ADMIN" in (info.value.hint or "")
    assert _left(api) == []


def test_a_pod_deleted_under_the_run_is_said(api: FakeApiServer, tmp_path: Path) -> None:
    run, _ = _run(api, example_plan("service-redis"), tmp_path)
    original = api.kubelet.exec

    def evicting(pod: str, container: str, argv: tuple[str, ...], stdin: bytes) -> tuple[int, bytes, bytes]:
        if argv[:1] == ("touch",):
            api.delete("pods", NS, pod)  # the node is lost as the agent starts
            return 1, b"", b"pod gone"
        return original(pod, container, argv, stdin)

    api.kubelet.exec = evicting  # type: ignore[method-assign]
    with pytest.raises(EngineError):
        run.execute()
    assert _left(api) == []


def test_no_cluster_answering_is_a_clear_error() -> None:
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = "http://127.0.0.1:9"  # discard: nothing listens
    configuration.retries = 0
    backend = ClusterBackend(NS, api_client=client.ApiClient(configuration))
    with pytest.raises(EngineError, match=r"no Kubernetes cluster answers at http://127\.0\.0\.1:9"):
        backend.ping()


def test_listing_finds_the_runs_pods_by_label(api: FakeApiServer) -> None:
    backend = ClusterBackend(NS, api_client=api.api_client())
    backend.apply(manifests_of(example_plan("service-redis"), _target()))
    pods = backend.pods()
    assert [(p.name, p.run_id, p.phase) for p in pods] == [("moat-run-0123456789ab", "run_0123456789ab", "Running")]
    assert backend.pods("run_other") == []
    backend.delete("moat-run-0123456789ab", grace=0)
    assert backend.pods() == [] and _left(api) == []


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_password_a_readiness_check_also_uses_as_a_word_is_read_from_the_container(api: FakeApiServer,
                                                                                     tmp_path: Path) -> None:
    extra = "services:\n  postgres:\n    env:\n      POSTGRES_PASSWORD: postgres\n"
    plan = example_plan("multi-service", extra=extra)
    run, _ = _run(api, plan, tmp_path)
    assert run.execute() == 0
    probe = next(argv for _, c, argv, _ in api.kubelet.execs if c == "svc-postgres")
    # The password is also the user's, the database's and the host's name here: each is read from a
    # variable of the container that holds that very value, none is written on the command line.
    assert probe[:2] == ("sh", "-c") and "exec psql" in probe[2]
    assert "postgres" not in re.sub(r'"\$POSTGRES_[A-Z]+"', "", probe[2])


def test_the_proxy_is_ready_before_the_gate_opens(api: FakeApiServer, tmp_path: Path) -> None:
    run, _ = _run(api, example_plan("grants"), tmp_path)
    assert run.execute() == 0
    order = [(c, argv[0]) for _, c, argv, _ in api.kubelet.execs]
    assert order.index(("proxy", "python3")) < order.index(("agent", "touch"))


def test_a_service_not_waited_for_and_one_that_refuses(api: FakeApiServer, tmp_path: Path) -> None:
    plan = example_plan("service-redis", extra="services:\n  redis:\n    wait: false\n")
    run, _ = _run(api, plan, tmp_path)
    assert run.execute() == 0
    assert not [c for _, c, _, _ in api.kubelet.execs if c.startswith("svc-")]


def test_a_service_that_stops_under_the_run_is_said_with_its_log(api: FakeApiServer, tmp_path: Path) -> None:
    original = api.kubelet.exec

    def crashing(pod: str, container: str, argv: tuple[str, ...], stdin: bytes) -> tuple[int, bytes, bytes]:
        if container == "svc-redis":
            life = api.kubelet.pods[pod]
            life.log["svc-redis"] += b"Fatal error, can't open config file\n"
            life.terminated["svc-redis"] = 1
            return 1, b"", b"container not running"
        return original(pod, container, argv, stdin)

    api.kubelet.exec = crashing  # type: ignore[method-assign]
    run, _ = _run(api, example_plan("service-redis"), tmp_path)
    with pytest.raises(EngineError, match=r"svc-redis stopped \(exit 1.*can't open config file"):
        run.execute()
    assert _left(api) == []


def test_excluded_paths_are_not_copied_into_the_pod(api: FakeApiServer, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "node_modules" / "x").mkdir(parents=True)
    (workspace / "node_modules" / "x" / "big.js").write_text("x")
    (workspace / "keep.txt").write_text("k")
    plan = example_plan("service-redis", workspace=workspace,
                        extra="mounts:\n  - source: .\n    target: /workspace\n    exclude: [node_modules]\n")
    run, _ = _run(api, plan, tmp_path, workspace="copy")
    assert run.execute() == 0
    with tarfile.open(fileobj=io.BytesIO(api.kubelet.pods["moat-run-0123456789ab"].files["/workspace.tar"])) as tar:
        names = tar.getnames()
    assert "./keep.txt" in names and not [n for n in names if "node_modules" in n]


def test_a_failed_delete_does_not_hide_why_the_run_failed(api: FakeApiServer, tmp_path: Path) -> None:
    api.kubelet.unpullable.add("moat/run:x")
    api.forbidden.add(("delete", "pods"))
    said: list[str] = []
    backend = ClusterBackend(NS, api_client=api.api_client())
    plan = example_plan("service-redis")
    run = KubeRun(plan, manifests_of(plan, _target()), backend, write=lambda _: None, say=said.append,
                  record=tmp_path, copy_workspace=False)
    with pytest.raises(EngineError, match="cannot pull the image"):
        run.execute()
    assert any("kubectl delete pod moat-run-0123456789ab" in s for s in said)
    api.forbidden.clear()
    backend.delete("moat-run-0123456789ab", grace=0)


def test_an_evicted_pod_is_said_with_the_nodes_reason(api: FakeApiServer, tmp_path: Path) -> None:
    original = api.kubelet.exec

    def evicting(pod: str, container: str, argv: tuple[str, ...], stdin: bytes) -> tuple[int, bytes, bytes]:
        if argv == ("touch", "/run/moat-control/go"):
            api.kubelet.evicted.add(pod)  # the node runs short of memory as the agent starts
            return 0, b"", b""
        return original(pod, container, argv, stdin)

    api.kubelet.exec = evicting  # type: ignore[method-assign]
    run, _ = _run(api, example_plan("service-redis"), tmp_path)
    with pytest.raises(EngineError, match="was evicted: The node was low on resource: memory") as info:
        run.execute()
    assert "container.memory" in (info.value.hint or "")
    assert _left(api) == []


def test_exec_refused_by_the_api_server_is_a_permission_error(api: FakeApiServer, tmp_path: Path) -> None:
    api.forbidden.add(("create", "pods/exec"))
    run, _ = _run(api, example_plan("service-redis"), tmp_path)
    with pytest.raises(EngineError, match=r"no permission running a command in moat-run-0123456789ab/svc-redis in"
                                          r" the namespace agents") as info:
        run.execute()
    assert "pods/exec" in (info.value.hint or "")
    assert _left(api) == []


def test_a_signal_the_client_swallowed_still_ends_the_run_and_deletes_the_pod(api: FakeApiServer,
                                                                             tmp_path: Path) -> None:
    run, _ = _run(api, example_plan("service-redis"), tmp_path)
    original = api.kubelet.exec

    def interrupted(pod: str, container: str, argv: tuple[str, ...], stdin: bytes) -> tuple[int, bytes, bytes]:
        run.interrupts.event.set()  # a Ctrl-C while the client had the connection: it reports an API error
        return original(pod, container, argv, stdin)

    api.kubelet.exec = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        run.execute()
    assert _left(api) == []


def test_an_interrupted_run_keeps_the_agents_copied_work(api: FakeApiServer, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "a.txt").write_text("a")
    record = tmp_path / "record"
    record.mkdir()
    run, _ = _run(api, example_plan("service-redis", workspace=workspace), record, workspace="copy")
    original = api.kubelet.exec

    def stop_while_running(pod: str, container: str, argv: tuple[str, ...], stdin: bytes) -> tuple[int, bytes, bytes]:
        if argv[:1] == ("cat",):  # the agent is running: `moat stop` arrives
            run.interrupts.event.set()
            return 1, b"", b"no exit yet"
        return original(pod, container, argv, stdin)

    api.kubelet.agent_exit = 0
    api.kubelet.exec = stop_while_running  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        run.execute()
    assert run.final_snapshot is not None
    snapshot = Snapshots(record / "snapshots").get(None)
    assert snapshot.label == "the agent's workspace when the run was stopped"
    assert _left(api) == []


def test_objects_no_pod_owns_are_found_and_removed(api: FakeApiServer, tmp_path: Path) -> None:
    plan = example_plan("grants")
    manifests = manifests_of(plan, _target())
    for obj in manifests.objects:  # a moat killed before its Pod existed left these
        if obj["kind"] == "Secret":
            api.create("secrets", NS, obj)
    backend = ClusterBackend(NS, api_client=api.api_client())
    home = plan.labels["moat.home"]
    strays = backend.strays(home)
    assert sorted(kind for kind, _, _ in strays) == ["Secret", "Secret"]
    assert {run_id for _, _, run_id in strays} == {plan.run_id}
    assert backend.strays("another-home") == []
    backend.delete("moat-run-0123456789ab", grace=0, run_id=plan.run_id)  # the pod is gone; its Secrets too
    assert _left(api) == []


def test_a_hard_link_to_an_excluded_file_does_not_break_the_copy(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "cache").mkdir(parents=True)
    (workspace / "cache" / "big").write_text("x")
    os.link(workspace / "cache" / "big", workspace / "kept")
    with tarfile.open(fileobj=io.BytesIO(workspace_tar(workspace, ("cache",)))) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert "./cache" not in members and "./cache/big" not in members
    assert members["./kept"].isreg()  # its own data, not a link to a name that is not there
