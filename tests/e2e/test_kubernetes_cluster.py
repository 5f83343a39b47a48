"""The cluster engine through the command line, as a user runs it: a kubeconfig, its context, the
official client. Against the cluster KUBECONFIG names when the environment sets one (with
MOAT_TEST_REGISTRY, where that cluster pulls from); otherwise against the fake API server
(tests/kubefake.py), through a kubeconfig written for it — the same code path, no cluster needed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.helpers import only_run, run_moat, write_workspace
from tests.kubefake import FakeApiServer

HOST_CAS = Path("/usr/local/share/ca-certificates")
NAMESPACE = "moat-e2e"


@pytest.fixture
def cluster(moat_home: Path, tmp_path: Path) -> Iterator[tuple[dict[str, str], FakeApiServer | None]]:
    """(the environment for moat, the fake API server when no real cluster is configured)."""
    moat_home.mkdir(parents=True, exist_ok=True)
    env = {"MOAT_BUILD_CA_CERTS": str(HOST_CAS)} if any(HOST_CAS.glob("*.crt")) else {}
    if os.environ.get("KUBECONFIG"):
        registry = os.environ.get("MOAT_TEST_REGISTRY")
        if not registry:
            skip_or_fail("KUBECONFIG is set: MOAT_TEST_REGISTRY must name a registry that cluster pulls from")
        (moat_home / "config.yaml").write_text(f"kubernetes:\n  namespace: {NAMESPACE}\n  registry: {registry}\n")
        yield env, None
        return
    with FakeApiServer() as api:
        yield {**env, "KUBECONFIG": str(_fake_kubeconfig(api, moat_home, tmp_path))}, api


def _fake_kubeconfig(api: FakeApiServer, moat_home: Path, directory: Path) -> Path:
    """A kubeconfig whose context ``fake`` is the fake API server (its current context is another:
    moat must take the one MOAT_HOME/config.yaml names)."""
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "other",
        "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
        "users": [{"name": "dev", "user": {"token": "not-a-secret-fake-cluster"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "dev", "namespace": NAMESPACE}},
                     {"name": "other", "context": {"cluster": "nowhere", "user": "dev"}}]}))
    (moat_home / "config.yaml").write_text(f"kubernetes:\n  context: fake\n  namespace: {NAMESPACE}\n")
    return kubeconfig


def test_a_run_goes_to_the_cluster_and_leaves_nothing_there(
        engine: object, moat_home: Path, tmp_path: Path, cluster: tuple[dict[str, str], FakeApiServer | None]) -> None:
    env, api = cluster
    workspace = write_workspace(tmp_path / "ws", "name: on-cluster\ndependencies: [redis@7]\n"
                                "services:\n  redis:\n    image: moat-test/redis:latest\n",
                                {"hello.sh": "echo hello from the agent\n"})
    if api is not None:
        api.kubelet.agent_exit = 6
    result = run_moat(["run", "--runtime", "kubernetes", str(workspace), "--", "sh", "hello.sh"], env=env, timeout=600)
    expected = 6 if api is not None else 0
    assert result.code == expected, result.stderr
    assert "hello from the agent" in result.stdout
    metadata = only_run(moat_home)
    assert metadata["kubernetes"]["engine"] == "cluster" and metadata["kubernetes"]["namespace"] == NAMESPACE
    assert metadata["state"] == "exited" and metadata["exit_code"] == expected
    if api is not None:
        assert api.names("pods") == [] and api.names("secrets") == [] and api.names("configmaps") == []
        assert ("create", "pods") in api.requests
        # The token of the kubeconfig's user is the cluster's business: it is nowhere in moat's record.
        record = "".join(p.read_text(errors="replace") for p in (moat_home / "runs").rglob("*") if p.is_file())
        assert "not-a-secret-fake-cluster" not in record


def test_no_permission_in_the_namespace_is_a_clear_error(moat_home: Path, tmp_path: Path) -> None:
    moat_home.mkdir(parents=True, exist_ok=True)
    with FakeApiServer() as api:
        api.forbidden.add(("list", "pods"))
        env = {"KUBECONFIG": str(_fake_kubeconfig(api, moat_home, tmp_path))}
        workspace = write_workspace(tmp_path / "ws", "name: refused\n")
        result = run_moat(["run", "--runtime", "kubernetes", str(workspace), "--", "true"], env=env)
    assert result.code == 1, result.stderr
    assert f"no permission listing pods in the namespace {NAMESPACE}" in result.stderr
    assert "Role" in result.stderr and "Traceback" not in result.stderr
    assert not (moat_home / "runs").exists() or not list((moat_home / "runs").iterdir())  # nothing started
