"""Helpers shared by the unit tests: parse moat.yaml text, build plans, known passwords."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pytest

from moat.catalog import load_catalog
from moat.config.load import Config, parse_config
from moat.errors import ConfigError
from moat.plan.build import RunRequest, build_plan
from moat.plan.model import Plan

CATALOG = load_catalog()
WORKSPACE = Path("/work/space")
CONFIG_FILE = WORKSPACE / "moat.yaml"

# What a generated password looks like; nothing else moat prints has this shape.
PASSWORD_SHAPE = re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9]{32}(?![A-Za-z0-9])")
# A password a user might choose, with every character a URL treats specially.
AWKWARD_PASSWORD = "p@ss:w/o rd%?#"


def parse(text: str, *, file: Path | None = CONFIG_FILE) -> Config:
    return parse_config(text, CATALOG, file=file)


def config_error(text: str, *, file: Path | None = CONFIG_FILE) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, CATALOG, file=file)
    return info.value


def only_problem(text: str) -> tuple[str, str, int | None, int | None]:
    """(dotted path, message, line, column) of the single problem ``text`` has."""
    error = config_error(text)
    assert len(error.problems) == 1, error.render()
    problem = error.problems[0]
    return problem.dotted, problem.message, problem.line, problem.column


class Passwords:
    """A password generator that hands out distinct, recognisable passwords and remembers them."""

    def __init__(self) -> None:
        self.issued: list[str] = []

    def __call__(self) -> str:
        password = f"Gen{len(self.issued):02d}" + "x" * 27
        assert len(password) == 32
        self.issued.append(password)
        return password


def plan_for(text: str, *, command: Iterable[str] = ("true",), passwords: Passwords | None = None,
             **request: object) -> Plan:
    config = parse(text)
    req = RunRequest(workspace=WORKSPACE, command=tuple(command), **request)  # type: ignore[arg-type]
    if passwords is None:
        return build_plan(config, req, CATALOG)
    return build_plan(config, req, CATALOG, new_password=passwords)


def service(plan: Plan, name: str):  # type: ignore[no-untyped-def]
    matches = [s for s in plan.services if s.name == name]
    assert len(matches) == 1, [s.name for s in plan.services]
    return matches[0]


# A realistic moat.yaml that uses every top-level key of the reference tool, with nested keys in
# every shape they come in. It loads; running it needs features moat has not built yet.
FULL_REFERENCE = """\
name: full-example
agent: claude
version: 1.10
dependencies:
  - python@3.12
  - node@22
  - go@1.24
  - git
  - curl
  - jq
  - make
  - sqlite3
  - bats
  - psql
  - mysql-client
  - redis-cli
  - pip:requests@2.32.3
  - pip:uvicorn[standard]
  - npm:typescript@5.4.5
  - npm:@scope/pkg@1.2
  - postgres@16
  - mysql@8
  - redis
  - ollama@0.18.1
  - ministack
services:
  postgres:
    env:
      POSTGRES_USER: app
      POSTGRES_DB: appdb
    memory: 512
    ready_timeout: 90
  mysql:
    env: {MYSQL_DATABASE: shop}
    wait: true
  redis:
    image: redis:7-alpine
  ollama:
    memory: 4096
    models: [llama3.2:1b, nomic-embed-text]
    provision_timeout: 3600
  ministack:
    wait: false
env:
  APP_ENV: test
  NUMERIC: 42
secrets:
  OPENAI_API_KEY: op://vault/openai/key
grants: [github, anthropic]
network:
  policy: strict
  rules:
    - pypi.org
    - api.github.com:
        - allow GET /repos/**
        - deny POST /repos/*/issues
  keep_policy: my-pack
  host: [8080]
command: [bash, -lc, "pytest -q"]
interactive: false
runtime: docker
container:
  memory: 2048
  cpus: 2.5
  dns: [1.1.1.1, 8.8.8.8]
  ulimits:
    nofile: {soft: 1024, hard: 4096}
    nproc: {soft: -1, hard: -1}
base_image: debian:bookworm
mounts:
  - ./data:/data:ro
  - ./logs:/logs
  - source: ~/.cache/pip
    target: /home/moatuser/.cache/pip
    mode: rw
    exclude: [tmp]
volumes:
  - name: cache
    target: /cache
    readonly: true
ports:
  web: 8080
hooks:
  post_build: npm ci
  post_build_root: apt-get install -y vim
  pre_run: make setup
workspace:
  mode: bind
sandbox: none
mcp:
  - context7
  - name: remote
    url: https://mcp.example.com/sse
    auth: {grant: github, header: Authorization}
snapshots:
  disabled: false
  triggers:
    disable_pre_run: true
    disable_git_commits: false
    idle_threshold_seconds: 60
  exclude:
    ignore_gitignore: true
    additional: [node_modules]
  retention:
    max_count: 5
    delete_initial: true
tracing:
  disable_exec: false
language_servers: [go, python]
devices:
  - name: arduino
    match: {usb: "2341:0043", interface: 0}
    baud: 115200
    record: events
clipboard: true
claude:
  base_url: https://proxy.example.com
  sync_logs: true
  plugins: {"linter@acme": true}
  marketplaces:
    acme:
      source: github
      repo: acme/plugins
    local:
      source: directory
      path: ./plugins
  mcp:
    files:
      command: npx
      args: [-y, "@modelcontextprotocol/server-filesystem"]
      env: {ROOT: /workspace}
  llm-gateway:
    policy: {deny: [opus], mode: enforce}
  bedrock:
    enabled: true
    region: us-east-1
    models: {sonnet: anthropic.claude-sonnet}
codex: {sync_logs: true}
copilot: {model: gpt-5, experimental: true}
gemini: {sync_logs: false}
pi:
  provider: anthropic
  model: claude-sonnet
  packages: ["npm:@acme/pi-tools"]
kiro: {sync_logs: true}
"""

# The parts of FULL_REFERENCE this moat can run today.
RUNNABLE = """\
name: runnable
dependencies:
  - python@3.12
  - git
  - pip:requests@2.32.3
  - postgres
  - mysql
  - redis
  - ollama
  - ministack
services:
  postgres:
    env: {POSTGRES_USER: app, POSTGRES_DB: appdb}
  mysql:
    env: {MYSQL_DATABASE: shop}
  redis:
    image: redis:7-alpine
  ollama:
    memory: 1024
    models: [llama3.2:1b]
env:
  APP_ENV: test
command: [bash, -lc, "pytest -q"]
container:
  memory: 2048
  cpus: 2
  dns: [1.1.1.1]
  ulimits:
    nofile: {soft: 1024, hard: 4096}
snapshots:
  disabled: true
tracing:
  disable_exec: true
network:
  policy: permissive
"""
