"""The dependency catalog: runtimes, tools and services exactly as the specification lists them."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from pydantic import ValidationError

from moat.catalog import Runtime, Service, Tool, load_catalog
from moat.catalog.describe import all_summaries, details
from moat.catalog.model import CatalogData
from moat.errors import UsageError
from moat.plan import dockerfile
from moat.plan.buildca import mirrors
from tests.unit.support import CATALOG, only_problem, parse


def test_catalog_is_loaded_once() -> None:
    assert load_catalog() is load_catalog()


def test_names_are_sorted_and_cover_every_kind() -> None:
    names = CATALOG.names()
    assert names == sorted(names)
    assert set(names) == {
        "python", "node", "go",
        "git", "curl", "jq", "make", "sqlite3", "bats", "psql", "mysql-client", "redis-cli", "fd", "bat",
        "postgres", "mysql", "redis", "ollama", "ministack",
        "typescript", "prettier", "eslint", "claude-code", "codex-cli", "copilot-cli", "gemini-cli", "pi-cli",
        "graphite-cli", "npm", "yarn", "pnpm",
        "gh", "ripgrep", "fzf", "uv", "bun", "golangci-lint", "sqlc", "task", "goreleaser", "buf", "act", "lazygit",
        "opentofu", "terragrunt", "kubectl", "helm", "terraform", "rust", "playwright",
        "ruff", "black", "mypy", "pytest",
        "gopls", "govulncheck", "mockgen", "gofumpt", "yq", "air",
        "node-dev", "python-dev", "cli-essentials", "go-extras", "k8s",
        "aws", "gcloud", "delta", "protoc", "protoc-gen-go", "protoc-gen-go-grpc", "protoc-gen-connect-go",
        "protoc-gen-grpc-gateway", "protoc-gen-openapiv2", "protoc-gen-grpc-gateway-ts", "protoc-gen-validate",
        "protoc-gen-doc", "protoc-gen-es", "protoc-gen-connect-es", "protobuf", "protobuf-es", "protobuf-grpc-gateway",
    }
    assert CATALOG.service_names() == ["ministack", "mysql", "ollama", "postgres", "redis"]


@pytest.mark.parametrize(
    ("name", "versions", "default", "base_image"),
    [
        ("python", ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14"), "3.11", "python:{version}-slim"),
        ("node", ("18", "20", "22", "24"), "22", "node:{version}-slim"),
        ("go", (), "1.25", "golang:{version}"),  # no allow-list: any well-formed version
    ],
)
def test_runtimes(name: str, versions: tuple[str, ...], default: str, base_image: str) -> None:
    entry = CATALOG.get(name)
    assert isinstance(entry, Runtime)
    assert entry.versions == versions
    assert entry.default == default
    assert entry.base_image == base_image
    assert entry.install, "a runtime must say how to install it on a shared base"


@pytest.mark.parametrize(
    ("name", "apt"),
    [
        ("git", "git"),
        ("curl", "curl"),
        ("jq", "jq"),
        ("make", "make"),
        ("sqlite3", "sqlite3"),
        ("bats", "bats"),
        ("psql", "postgresql-client"),
        ("mysql-client", "default-mysql-client"),
        ("redis-cli", "redis-tools"),
    ],
)
def test_tools_map_to_debian_packages(name: str, apt: str) -> None:
    entry = CATALOG.get(name)
    assert isinstance(entry, Tool)
    assert entry.apt == apt


SERVICES = {
    # name: (image, versions, default, port, injected variables, url template)
    "postgres": ("postgres", ("15", "16", "17"), "17", 5432, ("HOST", "PORT", "USER", "DB", "PASSWORD", "URL"),
                 "postgresql://{user}:{password}@{host}:{port}/{db}"),
    "mysql": ("mysql", ("8", "9"), "8", 3306, ("HOST", "PORT", "USER", "DB", "PASSWORD", "URL"),
              "mysql://{user}:{password}@{host}:{port}/{db}"),
    "redis": ("redis", ("6", "7"), "7", 6379, ("HOST", "PORT", "PASSWORD", "URL"),
              "redis://default:{password}@{host}:{port}"),
    "ollama": ("ollama/ollama", ("0.16.3", "0.17.7", "0.18.0", "0.18.1"), "0.18.1", 11434,
               ("HOST", "PORT", "URL"), "http://{host}:{port}"),
    "ministack": ("ministackorg/ministack", (), "1.3", 4566, ("HOST", "PORT", "URL"), "http://{host}:{port}"),
}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_services_table(name: str) -> None:
    image, versions, default, port, inject, url = SERVICES[name]
    entry = CATALOG.service(name)
    assert isinstance(entry, Service)
    assert entry.image == image
    assert entry.versions == versions
    assert entry.default == default
    assert entry.port == port
    assert set(entry.inject) == set(inject)
    assert entry.url == url
    assert entry.env_prefix == name.upper()


@pytest.mark.parametrize(("name", "authenticated"), [
    ("postgres", True), ("mysql", True), ("redis", True), ("ollama", False), ("ministack", False),
])
def test_only_authenticated_services_generate_a_password(name: str, authenticated: bool) -> None:
    entry = CATALOG.service(name)
    assert entry is not None
    generated = [k for k, c in entry.credentials.items() if c.generate]
    assert generated == (["password"] if authenticated else [])


def test_service_credential_defaults() -> None:
    postgres = CATALOG.service("postgres")
    mysql = CATALOG.service("mysql")
    redis = CATALOG.service("redis")
    assert postgres and mysql and redis
    assert postgres.credentials["user"].default == "postgres"
    assert postgres.credentials["user"].env == "POSTGRES_USER"
    assert postgres.credentials["db"].env == "POSTGRES_DB"
    assert postgres.credentials["password"].env == "POSTGRES_PASSWORD"
    assert mysql.credentials["user"].default == "root"
    assert mysql.credentials["db"].default == "moat"
    assert mysql.credentials["db"].env == "MYSQL_DATABASE"
    assert mysql.credentials["password"].env == "MYSQL_ROOT_PASSWORD"
    assert redis.credentials["password"].env == "REDIS_PASSWORD"


def test_ollama_provisions_models_with_ollama_pull() -> None:
    ollama = CATALOG.service("ollama")
    assert ollama is not None and ollama.provisions is not None
    assert ollama.provisions.key == "models"
    assert ollama.provisions.command == ("ollama", "pull", "{item}")
    assert ollama.provisions.cache_path == "/root/.ollama"
    for name in ("postgres", "mysql", "redis", "ministack"):
        entry = CATALOG.service(name)
        assert entry is not None and entry.provisions is None


@pytest.mark.parametrize(("name", "program"), [("postgres", "psql"), ("mysql", "mysql"), ("redis", "redis-cli")])
def test_readiness_probes_use_real_clients(name: str, program: str) -> None:
    entry = CATALOG.service(name)
    assert entry is not None
    assert entry.readiness.command[0] == program
    assert "{password}" not in " ".join(entry.readiness.command), "passwords go in the probe's env, not argv"
    assert any("{password}" in v for v in entry.readiness.env.values())


def test_dynamic_prefixes_require_their_runtime() -> None:
    pip = CATALOG.dynamic("pip")
    npm = CATALOG.dynamic("npm")
    assert pip is not None and pip.requires == "python"
    assert npm is not None and npm.requires == "node"
    assert {prefix: d.requires for prefix, d in CATALOG.data.dynamic.items()} == {
        "pip": "python", "npm": "node", "go": "go", "cargo": "rust", "uv": "uv"}
    assert CATALOG.dynamic("brew") is None


def test_aliases_point_at_real_entries() -> None:
    assert CATALOG.alias_for("nodejs") == "node"
    assert CATALOG.alias_for("PostgreSQL") == "postgres"
    assert CATALOG.alias_for("golang") == "go"
    for wrong, right in CATALOG.data.aliases.items():
        assert CATALOG.get(right) is not None, (wrong, right)


def test_catalog_rejects_a_default_outside_its_versions() -> None:
    with pytest.raises(ValidationError, match="default"):
        Runtime(description="x", versions=("1", "2"), default="3", base_image="x:{version}", install=("RUN x",),
                binary="x", package="x")


def test_catalog_rejects_a_name_in_two_sections() -> None:
    data = CATALOG.data.model_dump()
    data["tools"]["postgres"] = {"description": "clash", "apt": "postgresql"}
    with pytest.raises(ValidationError, match="postgres"):
        CatalogData.model_validate(data)


def test_describe_details_for_a_service() -> None:
    entry = CATALOG.service("postgres")
    assert entry is not None
    data = details("postgres", entry)
    assert data["image"] == "postgres"
    assert data["port"] == 5432
    assert data["versions"] == ["15", "16", "17"]
    assert data["variables"] == [f"MOAT_POSTGRES_{v}" for v in ("HOST", "PORT", "USER", "DB", "PASSWORD", "URL")]
    assert data["provisions"] is None
    assert data["credentials"]["password"]["generated"] is True


def test_describe_lists_every_entry_and_prefix() -> None:
    rows = all_summaries(CATALOG)
    names = [r["name"] for r in rows]
    assert names == [*CATALOG.names(), "cargo:", "go:", "npm:", "pip:", "uv:", "docker:host"]
    assert {r["type"] for r in rows} == {"runtime", "tool", "npm", "github-binary", "download", "custom", "uv-tool",
                                         "go-install", "service", "meta", "dynamic", "docker"}



# --- npm tools and bundles (issue 13's first kinds) ---------------------------------------------------


def test_an_npm_tool_is_installed_by_package_after_the_runtimes_and_before_the_packages() -> None:
    from moat.catalog.deps import resolve_dependencies
    from moat.plan import dockerfile

    deps, problems = resolve_dependencies(["node@22", "codex-cli", "typescript", "npm:left-pad@1.3.0", "git"],
                                          CATALOG)
    assert problems == {}
    text = dockerfile.render(dockerfile.ImageInputs("debian:bookworm-slim", tuple(deps), 1000, 1000), CATALOG)
    lines = text.splitlines()
    [tools] = [i for i, line in enumerate(lines) if line.startswith("RUN npm install --global --no-fund")
               and "@openai" in line]
    # The catalog's pin (the Go tool's) and npm's latest for the rest; quoted words, sorted by name.
    assert lines[tools].endswith("--no-update-notifier @openai/codex@0.146.0 typescript")
    [packages] = [i for i, line in enumerate(lines) if "left-pad" in line]
    assert tools < packages and lines.index("USER 1000:1000") > packages


def test_an_npm_tool_needs_node_declared_beside_it() -> None:
    from moat.catalog.deps import resolve_dependencies

    _, problems = resolve_dependencies(["git", "gemini-cli"], CATALOG)
    assert problems == {1: "gemini-cli (@google/gemini-cli) is installed with npm, which needs the node"
                           " runtime: add 'node' to dependencies"}


def test_a_bundle_names_its_members_and_a_member_named_again_keeps_its_version() -> None:
    from moat.catalog.deps import resolve_dependencies

    deps, problems = resolve_dependencies(["node", "node-dev", "prettier@3.3.3"], CATALOG)
    assert problems == {}
    assert [d.spec for d in deps] == ["node@22", "typescript", "prettier@3.3.3", "eslint"]
    deps, problems = resolve_dependencies(["node", "prettier@3.3.3", "node-dev"], CATALOG)  # either order
    assert problems == {} and [d.spec for d in deps] == ["node@22", "prettier@3.3.3", "typescript", "eslint"]
    _, problems = resolve_dependencies(["node", "node-dev@1"], CATALOG)
    assert "node-dev is a bundle (typescript, prettier, eslint) and takes no version" in problems[1]


def test_deps_info_shows_an_npm_tool_and_a_bundle() -> None:
    from moat.catalog.describe import details

    codex = details("codex-cli", CATALOG.get("codex-cli"))  # type: ignore[arg-type]
    assert (codex["type"], codex["npm_package"], codex["default"], codex["requires"]) == \
        ("npm", "@openai/codex", "0.146.0", ["node"])
    bundle = details("node-dev", CATALOG.get("node-dev"))  # type: ignore[arg-type]
    assert (bundle["type"], bundle["members"]) == ("meta", ["typescript", "prettier", "eslint"])


def test_the_sandbox_says_how_to_install_a_missing_npm_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from moat.errors import EngineError
    from moat.plan.model import ImageSpec
    from moat.runtime.sandbox import hostinfo

    monkeypatch.setattr(shutil, "which", lambda program, *a, **k: None if program in ("gemini", "jq") else "/x")
    image = ImageSpec("moat/run:x", "debian", "", ("gemini-cli", "jq", "node@22"), 1000, 1000)
    with pytest.raises(EngineError) as info:
        hostinfo.check_tools(image, lambda line: None)
    assert "`jq` (Debian package jq), `gemini` (npm package @google/gemini-cli)" in info.value.message
    assert info.value.hint == ("Install them (sudo apt-get install jq; npm install --global @google/gemini-cli),"
                               " or use --runtime docker.")


# --- every installer's Dockerfile lines (issue 13) ------------------------------------------------------


def _render(text: str, **inputs: object) -> list[str]:
    deps = tuple(parse(text).dependencies)
    image = dockerfile.ImageInputs("debian:bookworm-slim", deps, 1000, 1000, **inputs)  # type: ignore[arg-type]
    return dockerfile.render(image, CATALOG).splitlines()


def test_release_binaries_are_fetched_verified_one_layer_each_after_the_runtimes() -> None:
    lines = _render("dependencies: [git, gh, ripgrep@14.0.0, sqlc, node]\n")
    installs = [line for line in lines if "fetch-release" in line and line.startswith("RUN /")]
    assert [line.split()[2] for line in installs] == ["name=gh", "name=ripgrep", "name=sqlc"]  # sorted
    gh, rg, sqlc = (shlex.split(line) for line in installs)
    assert "tag=v2.40.0" in gh and "asset.amd64=gh_2.40.0_linux_amd64.tar.gz" in gh
    assert "bin.arm64=gh_2.40.0_linux_arm64/bin/gh" in gh and "sums.amd64=gh_2.40.0_checksums.txt" in gh
    assert "tag=14.0.0" in rg and "command=rg" in rg  # no tag prefix; installed as rg
    assert "sums.amd64=ripgrep-14.0.0-x86_64-unknown-linux-musl.tar.gz.sha256" in rg
    assert f"sha256.amd64={'b34efb1729469c87d314783116c3de9789222de986aca1c60ba4890c0e86b42f'}" in sqlc
    assert not any(arg.startswith("sums.") for arg in sqlc)  # pinned: no checksum file needed
    apt = next(line for line in lines if "apt-get install" in line)
    assert "curl" in apt and "unzip" in apt
    assert lines.index("COPY fetch-release /usr/local/lib/moat/fetch-release") < lines.index(installs[0])
    context = dockerfile.build_context(dockerfile.ImageInputs("x", tuple(parse("dependencies: [gh, git]\n")
                                                                             .dependencies), 1, 1))
    assert context["fetch-release"].startswith("#!/bin/sh")


def test_a_release_mirror_reaches_the_installer_and_a_bad_one_is_refused() -> None:
    lines = _render("dependencies: [git, gh]\n", github_base="https://mirror.example.test/github")
    [install] = [line for line in lines if "name=gh" in line]
    assert install.endswith(" base=https://mirror.example.test/github")
    assert mirrors({"MOAT_GITHUB_DOWNLOAD_BASE": "https://m.example.test/gh/"}) == {
        "github_base": "https://m.example.test/gh"}
    assert mirrors({"MOAT_GOPROXY": "https://proxy.example.test,direct"}) == {
        "goproxy": "https://proxy.example.test,direct"}
    for bad in ("ftp://x", "https://x; rm -rf /", "https://x y", "http://mirror.example.test"):
        with pytest.raises(UsageError, match="must be an https:// URL"):
            mirrors({"MOAT_GITHUB_DOWNLOAD_BASE": bad})
    assert mirrors({"MOAT_GITHUB_DOWNLOAD_BASE": "http://127.0.0.1:8080"}) == {"github_base": "http://127.0.0.1:8080"}
    assert mirrors({"MOAT_GOPROXY": "https://a.test|file:///srv/mods,off"})["goproxy"] == (
        "https://a.test|file:///srv/mods,off")
    with pytest.raises(UsageError, match="GOPROXY's list"):
        mirrors({"MOAT_GOPROXY": "https://a.test,$(id)"})
    # A setting the image does not use is not read: a run without release binaries ignores it.
    assert mirrors({"MOAT_GITHUB_DOWNLOAD_BASE": "ftp://x", "MOAT_GOPROXY": "x"}, releases=False, go=False) == {}


def test_uv_and_go_tools_install_in_one_layer_each_with_their_versions() -> None:
    lines = _render("dependencies: [python, go, uv, ruff@0.6.9, black, gofumpt, gopls]\n", goproxy="https://gp.test")
    [uv] = [line for line in lines if "uv tool install" in line]
    assert uv == "RUN uv tool install black && uv tool install ruff==0.6.9 && uv cache clean"
    assert "ENV UV_PYTHON_DOWNLOADS=never UV_TOOL_BIN_DIR=/usr/local/bin UV_TOOL_DIR=/opt/uv-tools" in lines
    [go] = [line for line in lines if "go install" in line]
    assert go == ("RUN GOBIN=/usr/local/bin go install mvdan.cc/gofumpt@v0.9.2"
                  " && GOBIN=/usr/local/bin go install golang.org/x/tools/gopls@latest"
                  " && go clean -cache -modcache")
    assert lines.index("ENV GOPROXY=https://gp.test") < lines.index(go)
    assert lines.index(next(line for line in lines if "fetch-release name=uv" in line)) < lines.index(uv)


def test_debian_tools_under_their_usual_names_and_the_bundles() -> None:
    apt = "\n".join(_render("dependencies: [cli-essentials]\n"))
    assert "bat" in apt and "fd-find" in apt and "jq" in apt
    assert "ln -sf /usr/bin/batcat /usr/local/bin/bat" in apt and "ln -sf /usr/bin/fdfind /usr/local/bin/fd" in apt
    specs = {d.spec for d in parse("dependencies: [python, python-dev, go, go-extras]\n").dependencies}
    assert "yq" not in {d.name for d in parse("dependencies: [cli-essentials]\n").dependencies}  # no go needed
    assert {"uv@0.11.6", "ruff", "black", "mypy", "pytest", "gofumpt@0.9.2", "govulncheck", "goreleaser@2.13.3",
            "golangci-lint@2.8.0"} <= specs


def test_protoc_its_plugins_and_the_aws_cli_come_from_debian_and_go_install() -> None:
    text = "\n".join(_render("dependencies: [go, node, protobuf, protobuf-es, aws]\n"))
    apt_line = next(line for line in text.splitlines() if "apt-get install" in line)
    assert {"protobuf-compiler", "libprotobuf-dev", "awscli"} <= set(apt_line.split())
    for package in ("google.golang.org/protobuf/cmd/protoc-gen-go@latest", "github.com/envoyproxy/protoc-gen-validate",
                    "@bufbuild/protoc-gen-es", "@connectrpc/protoc-gen-connect-es"):
        assert package in text
    assert details("protoc", CATALOG.get("protoc"))["apt_package"] == "protobuf-compiler libprotobuf-dev"  # type: ignore[arg-type]


def test_gcloud_comes_from_googles_signed_apt_repository_at_the_version_asked() -> None:
    text = "\n".join(_render("dependencies: [gcloud@528.0.0]\n"))
    assert "[signed-by=/usr/share/keyrings/cloud.google.gpg] https://packages.cloud.google.com/apt" in text
    assert '"google-cloud-cli$(test 528.0.0 = latest || echo =528.0.0-0)"' in text
    assert "gnupg" in next(line for line in text.splitlines() if "apt-get install" in line)


@pytest.mark.parametrize("text, message", [
    ("dependencies: [protoc-gen-go, go]\n", "protoc-gen-go needs protoc: add 'protoc' to dependencies"),
    ("dependencies: [ruff]\n", "ruff (ruff) is installed with uv, which needs uv: add 'uv' to dependencies"),
    ("dependencies: [uv]\n", "uv needs python: add 'python' to dependencies"),
    ("dependencies: [gopls]\n", "gopls (golang.org/x/tools/gopls) is built with go install, which needs go"),
    ("dependencies: [gh]\n", "gh needs git: add 'git' to dependencies"),
    ("dependencies: [fd@8]\n", "fd is installed from Debian's package 'fd-find' and takes no version"),
])
def test_what_an_installer_needs_is_said(text: str, message: str) -> None:
    assert message in only_problem(text)[1]


def test_a_release_binary_without_a_way_to_verify_it_cannot_enter_the_catalog() -> None:
    from moat.catalog.model import GithubBinary

    with pytest.raises(ValueError, match="needs a checksums file or a pinned sha256"):
        GithubBinary(description="x", repo="o/r", asset="a", default="1", targets={"amd64": "x"})
    with pytest.raises(ValueError, match="not 64 hex digits"):
        GithubBinary(description="x", repo="o/r", asset="a", default="1", targets={"amd64": "x"},
                     sha256={"1": {"amd64": "abc"}})


def test_cargo_builds_each_crate_with_its_lock_file() -> None:
    lines = _render("dependencies: [rust, 'cargo:ripgrep@14.1.1', 'cargo:cargo-nextest']\n")
    assert "RUN cargo install --locked cargo-nextest && cargo install --locked ripgrep@14.1.1" in lines
    assert "cargo:ripgrep is installed with cargo, which needs the rust runtime" in only_problem(
        "dependencies: ['cargo:ripgrep']\n")[1]


def test_go_and_uv_prefixes_install_one_package_per_command() -> None:
    lines = _render("dependencies: [python, go, uv, 'go:golang.org/x/tools/cmd/stringer@v0.26.0',"
                    " 'go:github.com/a/b/cmd/c', 'uv:httpie', 'uv:cowsay@6.1']\n")
    assert ("RUN GOBIN=/usr/local/bin go install github.com/a/b/cmd/c@latest && GOBIN=/usr/local/bin go install"
            " golang.org/x/tools/cmd/stringer@v0.26.0") in lines
    assert "RUN uv tool install cowsay==6.1 && uv tool install httpie" in lines
    assert "uv:cowsay is installed with uv, which needs uv: add 'uv' to dependencies" in only_problem(
        "dependencies: [python, 'uv:cowsay']\n")[1]
    assert "invalid go package name 'notapath'" in only_problem("dependencies: [go, 'go:notapath']\n")[1]


def test_vendor_downloads_are_verified_against_the_vendors_checksum_files() -> None:
    lines = _render("dependencies: [k8s, terraform]\n")
    kubectl, helm, terraform = (shlex.split(next(line for line in lines if f"name={n} " in line))
                                for n in ("kubectl", "helm", "terraform"))
    assert "url.amd64=https://dl.k8s.io/release/v1.31.4/bin/linux/amd64/kubectl" in kubectl
    assert "sums_url.amd64=https://dl.k8s.io/release/v1.31.4/bin/linux/amd64/kubectl.sha256" in kubectl
    assert "bin.arm64=linux-arm64/helm" in helm and "asset.arm64=helm-v3.16.0-linux-arm64.tar.gz" in helm
    assert ("sums_url.amd64=https://releases.hashicorp.com/terraform/1.10.0/terraform_1.10.0_SHA256SUMS"
            in terraform)
    assert not any(arg.startswith(("repo=", "tag=")) for arg in kubectl)  # not a GitHub release


def test_custom_installers_run_their_commands_with_the_verifying_downloader() -> None:
    lines = _render("dependencies: [node, rust@1.83.0, playwright]\n")
    [rust] = [line for line in lines if "rustup-init -y" in line]
    assert rust.startswith("RUN /usr/local/lib/moat/fetch-release name=rustup-init")  # verified before it runs
    assert "--default-toolchain 1.83.0" in rust
    assert "ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH RUSTUP_HOME=/usr/local/rustup" in lines
    assert "gcc" in next(line for line in lines if "apt-get install" in line)
    [playwright] = [line for line in lines if "playwright install" in line]
    assert playwright.startswith("RUN npm install --global --no-fund --no-audit --no-update-notifier playwright@latest")
    assert lines.index(playwright) > lines.index(next(line for line in lines if line.startswith("COPY fetch-release")))
    assert "playwright (playwright)" not in only_problem("dependencies: [playwright]\n")[1]
    assert "playwright needs node" in only_problem("dependencies: [playwright]\n")[1]


def test_yarn_and_pnpm_come_from_corepack_with_its_cache_where_the_agent_reads_it() -> None:
    lines = _render("dependencies: [node, yarn@4.5.3, pnpm]\n")
    env = "ENV COREPACK_ENABLE_DOWNLOAD_PROMPT=0 COREPACK_HOME=/usr/local/share/corepack"
    [yarn] = [line for line in lines if "corepack enable yarn" in line]
    assert yarn == ("RUN corepack enable yarn && corepack install --global yarn@4.5.3"
                    " && chmod -R a+rX /usr/local/share/corepack")
    assert lines[lines.index(yarn) - 1] == env  # set before: the install goes where the run looks
    assert any("corepack install --global pnpm@latest" in line for line in lines)


def test_versions_that_could_not_be_installed_as_asked_are_said_at_once() -> None:
    assert "it will not install sqlc@1.26.0 unverified" in only_problem("dependencies: [sqlc@1.26.0]\n")[1]
    lines = _render("dependencies: [go, gopls@latest, gofumpt@v0.9.2, mockgen@0.5.0]\n")
    [go] = [line for line in lines if "go install" in line]
    assert "golang.org/x/tools/gopls@latest" in go and "mvdan.cc/gofumpt@v0.9.2" in go
    assert "go.uber.org/mock/mockgen@v0.5.0" in go


def test_delta_is_built_with_cargo_after_the_rust_it_needs() -> None:
    lines = _render("dependencies: [git, delta, rust]\n")
    rust = next(i for i, line in enumerate(lines) if "rustup-init -y" in line)
    delta = next(i for i, line in enumerate(lines) if "cargo install --locked --root /usr/local git-delta@0.18.2"
                 in line)
    assert rust < delta  # though 'delta' sorts before 'rust'
    assert "delta needs rust: add 'rust' to dependencies" in only_problem("dependencies: [delta]\n")[1]


def test_the_compiled_catalog_is_the_yaml_and_is_what_moat_reads() -> None:
    """catalog.json (read at each start: ~2 ms, where the YAML takes ~55) is compiled from this very
    catalog.yaml; after an edit of the YAML, `make catalog` writes it again."""
    from importlib import resources

    from moat.catalog import CATALOG_JSON, CATALOG_YAML, compile_catalog

    files = resources.files("moat.catalog")
    assert files.joinpath(CATALOG_JSON).read_text(encoding="utf-8") == \
        compile_catalog(files.joinpath(CATALOG_YAML).read_text(encoding="utf-8")), "run `make catalog`"


def test_a_yaml_edited_after_compiling_is_read_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import moat.catalog as catalog_module

    package = tmp_path / "pkg"
    package.mkdir()
    source = resources_text("catalog.yaml")
    (package / "catalog.json").write_text(catalog_module.compile_catalog(source))
    (package / "catalog.yaml").write_text(source.replace("Git version control", "Git edited by hand"))
    monkeypatch.setattr(catalog_module.resources, "files", lambda _: package)
    catalog_module.load_catalog.cache_clear()
    try:
        assert catalog_module.load_catalog().get("git").description == "Git edited by hand"  # type: ignore[union-attr]
    finally:
        catalog_module.load_catalog.cache_clear()


def resources_text(name: str) -> str:
    from importlib import resources

    return resources.files("moat.catalog").joinpath(name).read_text(encoding="utf-8")


def test_a_catalog_json_cannot_hold_unchanged_is_never_compiled_and_a_broken_one_is_not_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import moat.catalog as catalog_module

    source = resources_text("catalog.yaml")
    with pytest.raises((ValueError, ValidationError)):  # a key YAML reads as the float 1.1
        catalog_module.compile_catalog(source + "\n1.10: x\n")
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "catalog.yaml").write_text(source)
    (package / "catalog.json").write_text("<<<<<<< HEAD\n" + catalog_module.compile_catalog(source))
    monkeypatch.setattr(catalog_module.resources, "files", lambda _: package)
    catalog_module.load_catalog.cache_clear()
    try:
        assert catalog_module.load_catalog().get("git") is not None  # the YAML, read itself
    finally:
        catalog_module.load_catalog.cache_clear()
