"""MOAT_HOME/config.yaml, the kubelet's expansion as the podman engine does it, and what podman plays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moat.config.home import load_home_config, parse_home_config
from moat.errors import ConfigError
from moat.plan.kube.secrets import escape_expansion
from moat.runtime.kubernetes.podman import expand, playable
from tests.unit.test_kube_manifests import example_plan, manifests_of


def test_a_missing_home_config_is_the_default(tmp_path: Path) -> None:
    config = load_home_config(tmp_path)
    assert config.file is None and config.kubernetes.namespace == "default" and config.kubernetes.engine == "cluster"


def test_home_config_typos_are_located_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        parse_home_config("kubernetes:\n  namespce: agents\n  workspace: nfs\n", Path("/h/config.yaml"))
    text = info.value.render() if hasattr(info.value, "render") else str(info.value)
    assert "config.yaml:2" in text and "namespace" in text
    assert "config.yaml:3" in text


def test_home_config_refuses_names_kubernetes_would() -> None:
    with pytest.raises(ConfigError, match="namespace"):
        parse_home_config("kubernetes:\n  namespace: Agents_1\n")
    settings = parse_home_config("kubernetes:\n  namespace: agents\n  registry: registry.test:5000/team\n"
                                 "  engine: podman\n").settings.kubernetes
    assert settings.registry == "registry.test:5000/team" and settings.engine == "podman"


@pytest.mark.parametrize("text", ["plain", "$(HOME)", "$$(x)", "a$$b", "$(", "$$$(A)", "cost $5"])
def test_an_escaped_argument_expands_back_to_itself(text: str) -> None:
    assert expand(escape_expansion(text), {"HOME": "/root", "A": "x"}) == text


def test_expansion_takes_defined_variables_only() -> None:
    assert expand("--requirepass $(PW) $(UNSET)", {"PW": "s3cret"}) == "--requirepass s3cret $(UNSET)"


def test_podman_plays_the_pod_with_files_for_its_secrets_and_hosts_for_its_aliases(tmp_path: Path) -> None:
    plan = example_plan("grants")
    pod = playable(manifests_of(plan), tmp_path, tmp_path / "cache")
    text = json.dumps(pod)
    assert "secretKeyRef" not in text and "configMap" not in text and "hostAliases" not in text
    proxy = next(c for c in pod["spec"]["containers"] if c["name"] == "proxy")
    mount = next(m["name"] for m in proxy["volumeMounts"] if m["mountPath"] == "/run/moat-proxy")
    secret_dir = next(v["hostPath"]["path"] for v in pod["spec"]["volumes"] if v["name"] == mount)
    assert (Path(secret_dir) / "registration.json").stat().st_mode & 0o777 == 0o400
    assert all(any(m["mountPath"] == "/etc/hosts" for m in c["volumeMounts"]) for c in pod["spec"]["containers"])


@pytest.mark.parametrize(("text", "wrong"), [
    ("kubernetes:\n  registry: registry.test/team:v1\n", "registry"),
    ("kubernetes:\n  cache_size: '0'\n", "cache_size"),
    ("kubernetes:\n  cache_size: 20GB\n", "cache_size"),
    ("kubernetes:\n  context: ''\n", "context"),
    ("kubernetes:\n  engine: kind\n", "engine"),
])
def test_home_config_values_kubernetes_would_refuse_are_refused(text: str, wrong: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_home_config(text, Path("/h/config.yaml"))
    assert f"kubernetes.{wrong}" in str(info.value)


def test_an_empty_kubernetes_block_is_every_default() -> None:
    settings = parse_home_config("kubernetes:\n").kubernetes
    assert settings.namespace == "default" and settings.cache_access_mode == "ReadWriteMany"
    assert parse_home_config("kubernetes:\n  cache_size: 500Mi\n").kubernetes.cache_size == "500Mi"
    registry = parse_home_config("kubernetes:\n  registry: localhost:5000/a/b\n").kubernetes.registry
    assert registry == "localhost:5000/a/b"


def test_podman_plays_a_pod_whose_workspace_path_is_long(tmp_path: Path) -> None:
    workspace = tmp_path / ("a-rather-long-directory-name-" * 4)
    workspace.mkdir()
    pod = playable(manifests_of(example_plan("service-redis", workspace=workspace)), tmp_path, tmp_path / "c")
    assert all(len(v) <= 63 for v in pod["metadata"]["annotations"].values())
    assert pod["metadata"]["annotations"] == {"moat.run-name": "service-redis"}
