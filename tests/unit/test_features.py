"""moat.config.features: keys for unbuilt features load, but a run refuses to start with them."""

from __future__ import annotations

from pathlib import Path

import pytest

from moat.config.features import require_supported, unsupported
from moat.config.load import load_config
from moat.errors import EXIT_USAGE, MoatError, UnsupportedFeatureError
from tests.unit.support import CATALOG, FULL_REFERENCE, RUNNABLE, parse

UNSUPPORTED = [
    ("mcp: [context7]\n", "mcp"),
    ("network:\n  keep_policy: my-pack\n", "network.keep_policy"),
    ("tracing: {disable_exec: false}\n", "tracing"),
    ("devices: [{name: board}]\n", "devices"),
    ("clipboard: true\n", "clipboard"),
    ("runtime: apple\n", "runtime"),
    ("kiro: {sync_logs: true}\n", "kiro"),
    ("pi: {packages: ['npm:x']}\n", "pi.packages"),
    ("codex: {shared_sessions: true}\n", "codex.shared_sessions"),
    ("dependencies: [redis]\nservices:\n  redis:\n    env: {REDIS_PASSWORD: op://vault/redis/pw}\n",
     "services.redis.env.REDIS_PASSWORD"),
]


@pytest.mark.parametrize(("text", "key"), UNSUPPORTED, ids=[f"{k}-{i}" for i, (_, k) in enumerate(UNSUPPORTED)])
def test_unbuilt_features_load_but_do_not_run(text: str, key: str) -> None:
    config = parse(text)  # loading succeeds
    with pytest.raises(UnsupportedFeatureError) as info:
        require_supported(config)
    error = info.value
    assert isinstance(error, MoatError)
    assert error.exit_code == EXIT_USAGE
    assert error.message.startswith(f"not supported yet: {key}")
    assert error.hint and "nothing was started" in error.hint


SUPPORTED = [
    "",
    "snapshots: {disabled: true}\n",
    "snapshots: {retention: {max_count: 3}}\n",
    "snapshots: {disabled: false, triggers: {disable_pre_run: true}}\n",
    "tracing: {disable_exec: true}\n",
    "snapshots: {disabled: true}\ntracing: {disable_exec: true}\n",
    "network: {policy: permissive}\n",
    "network: {rules: []}\n",
    "network:\n  policy: strict\n  rules: [api.github.com, {'*.npmjs.org': ['allow GET /**']}]\n",
    "clipboard: false\n",
    "runtime: docker\n",
    "runtime: sandbox\n",
    "workspace: {mode: bind}\n",
    "workspace: {mode: volume}\n",
    "language_servers: [python, typescript]\n",
    "ports: {web: 3000, api-v2: 8080}\n",
    "grants: []\nsecrets: {}\nmounts: []\n",
    "mounts: [./data:/data, {source: ., target: /workspace, exclude: [node_modules]}]\n",
    "name: agent\nvolumes: [{name: cache, target: /cache}, {name: state, target: /s, type: volume}]\n",
    "claude: {}\n",
    "copilot: {model: gpt-5, context: long_context, reasoning_effort: high}\n",
    "pi: {provider: anthropic, model: m}\n",
    "claude: {sync_logs: false, mcp: {x: {command: y}}}\ncodex: {sync_logs: false}\n",
    "claude: {sync_logs: true}\n",
    "codex: {sync_logs: true}\ngemini: {sync_logs: true}\n",
    "interactive: true\nsandbox: none\nagent: claude\nversion: '1'\n",
    "container: {memory: 512, cpus: 1, dns: [1.1.1.1], ulimits: {nofile: {soft: 1, hard: 2}}}\n",
    "base_image: ubuntu:24.04\n",
    "hooks: {pre_run: make setup, post_build: make tools, post_build_root: apt-get install -y jq}\n",
]


@pytest.mark.parametrize("text", SUPPORTED)
def test_supported_configs_pass(text: str) -> None:
    config = parse(text)
    assert unsupported(config) == []
    require_supported(config)  # must not raise


def test_runnable_reference_passes() -> None:
    require_supported(parse(RUNNABLE))


def test_every_unsupported_key_is_listed_at_once() -> None:
    with pytest.raises(UnsupportedFeatureError) as info:
        require_supported(parse(FULL_REFERENCE))
    head = info.value.message.splitlines()[0]
    listed = head.removeprefix("not supported yet: ").split(", ")
    assert listed == [
        "network.keep_policy", "mcp", "tracing", "devices", "clipboard",
        "claude.bedrock",
        "pi.packages", "kiro",
    ]


def test_each_feature_says_where_and_why(workspace: Path) -> None:
    (workspace / "moat.yaml").write_text("name: x\nnetwork:\n  keep_policy: my-pack\nmcp: [context7]\n")
    config = load_config(workspace, CATALOG)
    with pytest.raises(UnsupportedFeatureError) as info:
        require_supported(config)
    message = info.value.message
    assert "not supported yet: network.keep_policy, mcp" in message
    assert "network.keep_policy (moat.yaml:3):" in message
    assert "mcp (moat.yaml:4):" in message
    assert "keep policies are not enforced" in message  # a security setting is never silently ignored


def test_no_config_file_is_supported(workspace: Path) -> None:
    require_supported(load_config(workspace, CATALOG))
