"""The Kubernetes renderer: every example's manifests against a golden file, and the promises they
keep whatever the input — no secret outside a Secret, the gate, strict egress, ownership labels.

Regenerate the golden files after an intended change: MOAT_UPDATE_GOLDEN=1 pytest tests/unit/test_kube_manifests.py
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from moat.catalog import load_catalog
from moat.config.load import parse_config
from moat.credentials.rules import GrantRules, HeaderInjection
from moat.errors import UsageError
from moat.plan.build import RunRequest, build_plan
from moat.plan.kube import dump, render
from moat.plan.kube.manifests import CONTROL_DIR, Manifests
from moat.plan.kube.target import KubeTarget, pushed
from moat.plan.model import Plan
from moat.plan.proxy import ResolvedGrant
from tests.unit.support import Passwords

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").iterdir() if (p / "moat.yaml").is_file())
GOLDEN = Path(__file__).parent / "golden" / "kube"
CATALOG = load_catalog()
KEY = "sk-golden-0123456789abcdef0123"
TOKEN = "t" * 64
API_GRANT = ResolvedGrant("example-api", GrantRules("example-api", injections=(
    HeaderInjection(("api.example.test",), (("Authorization", f"Bearer {KEY}"),)),), values=(KEY,)),
    env={"EXAMPLE_API_KEY": "moat-proxy-injected-example-api"})
TARGET = KubeTarget("agents", "registry.test/team/moat-agent:0123456789abcdef", "registry.test/team/moat-proxy:1",
                    "copy", "fast", "20Gi", ("pull-secret",))
CA_KEY = "-----BEGIN PRIVATE KEY-----\nRUNCAKEY\n-----END PRIVATE KEY-----\n"


def example_plan(name: str, *, runtime: str = "kubernetes", extra: str = "",
                 workspace: Path = Path("/work/space")) -> Plan:
    directory = ROOT / "examples" / name
    text = (directory / "moat.yaml").read_text() + extra
    config = parse_config(text, CATALOG, file=directory / "moat.yaml")
    grants = (API_GRANT,) if "grants:" in text else ()
    request = RunRequest(workspace=workspace, command=(), runtime=runtime, home=Path("/home/u/.moat"),
                         scratch_root=Path("/tmp"), grants=grants,
                         proxy_ca=Path("/home/u/.moat/proxy/ca/moat-ca.crt"), host_env={})
    return build_plan(config, request, CATALOG, run_id="run_0123456789ab", new_password=Passwords(),
                      new_token=lambda: TOKEN)


def manifests_of(plan: Plan, target: KubeTarget = TARGET) -> Manifests:
    return render(plan, target, ca_cert="RUN CA CERT", ca_key_and_cert=CA_KEY)


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_renders_as_its_golden_file(name: str) -> None:
    plan = example_plan(name)
    text = dump(manifests_of(plan), plan.masker())
    golden = GOLDEN / f"{name}.yaml"
    if os.environ.get("MOAT_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.is_file(), f"no golden file for {name}: run with MOAT_UPDATE_GOLDEN=1"
    assert text == golden.read_text()


def _outside_secrets(manifests: Manifests) -> str:
    return json.dumps([o for o in manifests.objects if o["kind"] != "Secret"])


@pytest.mark.parametrize("name", EXAMPLES)
def test_no_secret_is_written_outside_the_runs_secrets(name: str) -> None:
    has_network = "\nnetwork:" in (ROOT / "examples" / name / "moat.yaml").read_text()
    plan = example_plan(name, extra="" if has_network else "network:\n  policy: strict\n  rules: [example.com]\n")
    manifests = manifests_of(plan)
    text = _outside_secrets(manifests)
    assert plan.secrets, "every example has a password or a token"
    assert plan.masker().text(text) == text  # not a secret in any form the masker knows
    assert "RUNCAKEY" not in text and "RUNCAKEY" not in dump(manifests, plan.masker())
    shown = dump(manifests, plan.masker())
    assert [s for s in plan.secrets if s in shown] == []


def test_a_secret_inside_an_argument_reaches_the_container_as_a_variable() -> None:
    plan = example_plan("service-redis", extra="env:\n  DSN: 'redis://:$(notavar)@x'\n")
    manifests = manifests_of(plan)
    agent = _container(manifests.pod, "agent")
    dsn = next(e for e in agent["env"] if e["name"] == "DSN")
    assert dsn["value"] == "redis://:$$(notavar)@x"  # taken literally by the kubelet


def test_the_agent_waits_at_the_gate_and_keeps_nothing_of_the_cluster() -> None:
    plan = example_plan("multi-service")
    pod = manifests_of(plan).pod
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec["hostAliases"] == [{"ip": "127.0.0.1", "hostnames": ["postgres", "mysql", "redis"]}]
    agent = _container(pod, "agent")
    assert agent["command"][:2] == ["/bin/sh", "-c"] and f"{CONTROL_DIR}/go" in agent["command"][2]
    assert agent["args"] == ["bash", "demo.sh"]
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert agent["securityContext"]["allowPrivilegeEscalation"] is False
    assert [c["name"] for c in spec["containers"]] == ["svc-postgres", "svc-mysql", "svc-redis", "agent"]
    assert pod["metadata"]["labels"]["moat.run-id"] == "run_0123456789ab"


def test_strict_policy_adds_the_egress_init_container_and_a_policy_on_egress() -> None:
    plan = example_plan("service-redis", extra="network:\n  policy: strict\n  rules: [example.com]\n")
    manifests = manifests_of(plan)
    init = manifests.pod["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["egress"]
    assert "--uid-owner 65532" in init[0]["command"][2]
    assert init[0]["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    policy = manifests.by_kind("NetworkPolicy")[0]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"] and policy["ingress"] == []
    proxy = _container(manifests.pod, "proxy")
    assert proxy["securityContext"]["runAsUser"] == 65532
    env = {e["name"]: e for e in _container(manifests.pod, "agent")["env"]}
    assert "secretKeyRef" in env["HTTPS_PROXY"]["valueFrom"]  # its URL holds the run's token
    permissive = manifests_of(example_plan("service-redis"))
    assert "initContainers" not in permissive.pod["spec"]
    assert permissive.by_kind("NetworkPolicy")[0]["spec"]["policyTypes"] == ["Ingress"]


def test_the_proxy_secret_holds_the_registration_and_only_the_proxy_mounts_it() -> None:
    plan = example_plan("grants")
    manifests = manifests_of(plan)
    secret = next(o for o in manifests.by_kind("Secret") if o["metadata"]["name"].endswith("-proxy"))
    registration = json.loads(secret["stringData"]["registration.json"])
    assert registration["token"] == TOKEN and registration["trace_file"] is None
    assert KEY in json.dumps(registration)
    mounting = [c["name"] for c in manifests.pod["spec"]["containers"]
                if any(m["name"] == "moat-proxy" for m in c.get("volumeMounts", []))]
    assert mounting == ["proxy"]


def test_a_host_mount_is_refused_unless_the_node_is_this_machine(tmp_path: Path) -> None:
    plan = example_plan("service-redis", extra="mounts:\n  - /etc/hostname:/data/hostname:ro\n")
    with pytest.raises(UsageError, match="cannot be mounted"):
        manifests_of(plan)
    host = KubeTarget("agents", "a", "p", "host", None, "1Gi")
    manifests = manifests_of(plan, host)
    volumes = {v["name"]: v for v in manifests.pod["spec"]["volumes"]}
    assert volumes["workspace"] == {"name": "workspace", "hostPath": {"path": "/work/space", "type": "Directory"}}
    assert any(v.get("hostPath", {}).get("path") == "/etc/hostname" for v in volumes.values())


def test_images_keep_their_content_hash_in_the_registry() -> None:
    assert pushed("registry.test/team/", "moat/run:0123456789abcdef", "moat-agent") == \
        "registry.test/team/moat-agent:0123456789abcdef"
    assert pushed(None, "moat/run:0123456789abcdef", "moat-agent") == "moat/run:0123456789abcdef"


def test_ports_are_not_published_from_a_pod_and_the_user_is_told() -> None:
    plan = example_plan("service-redis", extra="ports:\n  web: 8080\n")
    assert plan.endpoints is None
    assert any("kubectl port-forward" in note for note in plan.notes)
    assert not any(k.startswith("MOAT_URL_") for k in plan.env)


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in pod["spec"]["containers"] if c["name"] == name)
    return found


def test_an_argument_holding_an_encoded_secret_is_passed_whole_by_reference() -> None:
    extra = ("services:\n  postgres:\n    env:\n      POSTGRES_PASSWORD: 'p@ss:w/o rd%?#'\n")
    plan = example_plan("multi-service", extra=extra)
    url = "postgresql://postgres:p%40ss%3Aw%2Fo%20rd%25%3F%23@postgres/postgres"
    plan = replace(plan, agent=replace(plan.agent, command=("psql", url)), command=("psql", url))
    manifests = manifests_of(plan)
    text = _outside_secrets(manifests)
    assert "p%40ss" not in text and plan.masker().text(text) == text
    agent = _container(manifests.pod, "agent")
    assert agent["args"][1].startswith("$(MOAT_SECRET_")
    assert url in manifests.env_secret.values()


def test_the_proxy_can_read_its_secret_as_its_own_user() -> None:
    manifests = manifests_of(example_plan("grants"))
    volume = next(v for v in manifests.pod["spec"]["volumes"] if v["name"] == "moat-proxy")
    assert volume["secret"]["defaultMode"] == 0o444  # the kubelet writes it as root; only the proxy mounts it


def test_a_read_only_copied_workspace_still_has_a_way_in(tmp_path: Path) -> None:
    plan = example_plan("service-redis", workspace=tmp_path,
                        extra="mounts:\n  - source: .\n    target: /workspace\n    mode: ro\n")
    agent = _container(manifests_of(plan).pod, "agent")
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts["/workspace"].get("readOnly") is True
    assert mounts["/run/moat-upload"]["name"] == "workspace" and not mounts["/run/moat-upload"].get("readOnly")
