"""The agent image's Dockerfile, generated from resolved dependencies.

Layer order puts what changes least first (apt, then runtimes, then release binaries one layer each,
then the npm, uv and go tools, then packages, then the user), so adding one dependency reuses the
layers before its own: editing a pip package does not re-run apt.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from importlib import resources

from moat.agents import plugins
from moat.agents.plugins import PluginSet
from moat.catalog import Catalog, Custom, DepType, Download, GithubBinary, GoTool, NpmTool, Runtime, Tool, UvTool
from moat.catalog.deps import Dependency, quote_packages
from moat.catalog.model import DockerCli
from moat.constants import AGENT_HOME, AGENT_USER, WORKSPACE_MOUNT
from moat.plan import hooks

# Always installed: TLS roots for anything that talks HTTPS.
BASE_APT = ("ca-certificates",)
# The build's extra certificate authorities (MOAT_BUILD_CA_CERTS), under this name in the context.
BUILD_CA_FILE = "moat-build-ca.crt"
# Tools that do not read the system's roots by default are pointed at them (node has its own copy,
# pip its certifi bundle, uv its own) in the build's download steps only: the image's environment
# is the run's.
BUILD_CA_EXPORT = ("export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt"
                   " PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt; ")
# The release installer (see scripts/fetch-release), sent in the build context.
FETCH_RELEASE = "fetch-release"
FETCH_RELEASE_PATH = "/usr/local/lib/moat/fetch-release"
GITHUB = "https://github.com"


@dataclass(frozen=True)
class ImageInputs:
    base_image: str
    dependencies: tuple[Dependency, ...]
    uid: int
    gid: int
    # PEM text of certificate authorities the build must trust: behind a TLS-inspecting proxy,
    # npm's, pip's and curl's downloads fail without the proxy's CA. Baked into the image's roots.
    build_ca: str | None = None
    # Mirrors (MOAT_GITHUB_DOWNLOAD_BASE, MOAT_GOPROXY): where release binaries and Go modules come from.
    github_base: str = GITHUB
    goproxy: str | None = None
    claude_plugins: PluginSet | None = None  # installed last, as the agent's user (claude.plugins)
    docker_apt_base: str | None = None  # MOAT_DOCKER_APT_BASE: a mirror of Docker's apt repository
    post_build_root: str = ""  # hooks.post_build_root: a layer as root, after the dependencies
    post_build: str = ""  # hooks.post_build: the next, as the agent's user


def agent_home(uid: int) -> str:
    return "/root" if uid == 0 else AGENT_HOME


def choose_base_image(deps: tuple[Dependency, ...], catalog: Catalog, override: str | None) -> str:
    """``base_image`` if set; a runtime's own image when exactly one runtime is declared; else Debian."""
    if override:
        return override
    runtimes = [d for d in deps if d.type is DepType.RUNTIME]
    if len(runtimes) == 1:
        entry = catalog.get(runtimes[0].name)
        assert isinstance(entry, Runtime) and runtimes[0].version
        return entry.base_image.replace("{version}", runtimes[0].version)
    return catalog.default_base_image


def build_context(inputs: ImageInputs) -> dict[str, str]:
    """The files the Dockerfile COPYs: the build's CA, the release installer."""
    context = {BUILD_CA_FILE: inputs.build_ca} if inputs.build_ca else {}
    if any(d.type in (DepType.RELEASE, DepType.DOWNLOAD, DepType.CUSTOM) for d in inputs.dependencies):
        context[FETCH_RELEASE] = resources.files("moat.plan").joinpath("scripts", FETCH_RELEASE).read_text()
    if inputs.claude_plugins:
        context.update(plugins.context_files(inputs.claude_plugins, agent_home(inputs.uid)))
    return context


def _of(deps: tuple[Dependency, ...], kind: DepType) -> list[Dependency]:
    # Sorted: the order dependencies are listed in must not change the image (or its tag).
    return sorted((d for d in deps if d.type is kind), key=lambda d: d.name)


def render(inputs: ImageInputs, catalog: Catalog) -> str:
    deps = inputs.dependencies
    lines = [f"FROM {inputs.base_image}", "ENV DEBIAN_FRONTEND=noninteractive"]
    runtimes = _of(deps, DepType.RUNTIME)
    # A runtime whose own image is the base needs no install step.
    to_install = [] if len(runtimes) == 1 else runtimes
    releases = sorted((d for d in deps if d.type in (DepType.RELEASE, DepType.DOWNLOAD)), key=lambda d: d.name)
    # A custom installer another one needs (rust, for delta's cargo) goes first; else by name.
    customs = _of(deps, DepType.CUSTOM)
    needed = {r for d in customs if isinstance(entry := catalog.get(d.name), Custom) for r in entry.requires}
    customs.sort(key=lambda d: (d.name not in needed, d.name))
    apt = set(BASE_APT)
    links = []
    for dep in _of(deps, DepType.TOOL):
        entry = catalog.get(dep.name)
        assert isinstance(entry, Tool)
        apt.update((entry.apt, *entry.apt_with))
        if entry.link and entry.binary:
            links.append(f"ln -sf /usr/bin/{entry.link} /usr/local/bin/{entry.binary}")
    for dep in to_install:
        entry = catalog.get(dep.name)
        assert isinstance(entry, Runtime)
        apt.update(entry.install_apt)
    if releases or customs:  # the installer's own needs
        apt.update(("curl", "unzip"))
    docker = bool(_of(deps, DepType.DOCKER))
    if docker:
        apt.add("curl")
    for dep in customs:
        entry = catalog.get(dep.name)
        assert isinstance(entry, Custom)
        apt.update(entry.apt)
    lines.append(
        "RUN apt-get update \\\n"
        f" && apt-get install -y --no-install-recommends {' '.join(sorted(apt))} \\\n"
        + "".join(f" && {link} \\\n" for link in links)
        + " && rm -rf /var/lib/apt/lists/*"
    )
    if inputs.build_ca:  # after apt (over plain HTTP, it brings update-ca-certificates), before any download
        lines += [f"COPY {BUILD_CA_FILE} /usr/local/share/ca-certificates/{BUILD_CA_FILE}",
                  "RUN update-ca-certificates >/dev/null"]
    trust = BUILD_CA_EXPORT if inputs.build_ca else ""
    for dep in to_install:
        entry = catalog.get(dep.name)
        assert isinstance(entry, Runtime) and dep.version
        lines += [line.replace("{version}", dep.version) for line in entry.install]
    if releases or customs:
        lines += [f"COPY {FETCH_RELEASE} {FETCH_RELEASE_PATH}", f"RUN chmod 755 {FETCH_RELEASE_PATH}"]
    lines += _release_lines(releases, inputs, catalog, trust)
    if docker and catalog.data.docker is not None:
        lines.append(_docker_cli(catalog.data.docker, inputs.docker_apt_base, trust))
    npm_tools = _of(deps, DepType.NPM)
    if npm_tools:  # after the runtimes (npm comes with node), before the packages people change most
        specs = []
        for dep in npm_tools:
            entry = catalog.get(dep.name)
            assert isinstance(entry, NpmTool)
            specs.append(f"{entry.package}@{dep.version}" if dep.version else entry.package)
        lines.append(f"RUN {trust}npm install --global --no-fund --no-audit --no-update-notifier "
                     + " ".join(shlex.quote(spec) for spec in specs))
    uv_tools = _of(deps, DepType.UV)
    if uv_tools:  # uv's environment (its tool directories) is set by the uv layer above
        installs = []
        for dep in uv_tools:
            entry = catalog.get(dep.name)
            assert isinstance(entry, UvTool)
            spec = f"{entry.package}=={dep.version}" if dep.version else entry.package
            installs.append(f"uv tool install {shlex.quote(spec)}")
        lines.append(f"RUN {trust}" + " && ".join(installs) + " && uv cache clean")
    if inputs.goproxy and (_of(deps, DepType.GO) or any(d.manager == "go" for d in deps)):
        lines.append(f"ENV GOPROXY={shlex.quote(inputs.goproxy)}")  # the run's go uses the mirror too
    go_tools = _of(deps, DepType.GO)
    if go_tools:  # one module per go install (Go builds them at one version each)
        installs = []
        for dep in go_tools:
            entry = catalog.get(dep.name)
            assert isinstance(entry, GoTool)
            # A release (0.9.2, v0.9.2) is the module's tag; anything else (latest, a branch) is Go's to read.
            version = dep.version or "latest"
            if version[0].isdigit():
                version = f"v{version}"
            installs.append(f"GOBIN=/usr/local/bin go install {shlex.quote(f'{entry.package}@{version}')}")
        lines.append(f"RUN {trust}" + " && ".join(installs) + " && go clean -cache -modcache")
    for dep in customs:  # after the package managers they may use (playwright's npm), one layer each
        entry = catalog.get(dep.name)
        assert isinstance(entry, Custom) and dep.version
        commands = [c.replace("{version}", dep.version).replace("{fetch}", FETCH_RELEASE_PATH) for c in entry.install]
        if entry.env:  # before its commands: they install where the run will look (corepack's cache)
            lines.append("ENV " + " ".join(f"{key}={shlex.quote(value) if '$' not in value else value}"
                                           for key, value in sorted(entry.env.items())))
        lines.append(f"RUN {trust}" + " && ".join(commands))
    for prefix in sorted({d.manager for d in deps if d.manager}):
        manager = catalog.dynamic(prefix)
        assert manager is not None
        packages = sorted((d for d in deps if d.manager == prefix), key=lambda d: d.name)
        specs = quote_packages(packages, manager.version_separator, manager.default_version)
        commands = [manager.install.replace("{packages}", spec) for spec in specs] if manager.each \
            else [manager.install.replace("{packages}", " ".join(specs))]
        lines.append(f"RUN {trust}" + " && ".join(commands))
    lines += _user_lines(inputs.uid, inputs.gid)
    lines += _hook_lines(inputs, trust)
    if inputs.claude_plugins:  # last: the layer most likely to change (a plugin added, --rebuild)
        lines += plugins.dockerfile_lines(inputs.claude_plugins, agent_home(inputs.uid), inputs.uid, inputs.gid, trust)
    return "\n".join(lines) + "\n"


def _release_lines(releases: list[Dependency], inputs: ImageInputs, catalog: Catalog, trust: str) -> list[str]:
    """The release installer, then one layer per program: adding one reuses the others' layers."""
    lines: list[str] = []
    mirror = [f"base={inputs.github_base}"] if inputs.github_base != GITHUB else []
    env: dict[str, str] = {}
    for dep in releases:
        entry = catalog.get(dep.name)
        assert isinstance(entry, GithubBinary | Download) and dep.version
        args = [*release_arguments(dep.name, entry, dep.version), *(mirror if isinstance(entry, GithubBinary) else [])]
        lines.append(f"RUN {trust}{FETCH_RELEASE_PATH} " + " ".join(shlex.quote(arg) for arg in args))
        env.update(entry.env)
    if env:
        lines.append("ENV " + " ".join(f"{key}={shlex.quote(value)}" for key, value in sorted(env.items())))
    return lines


def release_arguments(name: str, entry: GithubBinary | Download, version: str) -> list[str]:
    """The installer's arguments for one program: its asset, path and checksum, per architecture."""
    command = entry.command or name
    args = [f"name={name}", f"command={command}"]
    if isinstance(entry, GithubBinary):
        args += [f"repo={entry.repo}", f"tag={entry.tag_prefix}{version}"]
    for arch, target in sorted(entry.targets.items()):
        def fill(template: str, target: str = target) -> str:
            return template.replace("{version}", version).replace("{target}", target).replace("{arch}", target)

        if isinstance(entry, Download):
            url = fill(entry.url)
            asset = url.rsplit("/", 1)[1]
            args += [f"url.{arch}={url}", f"asset.{arch}={asset}",
                     f"bin.{arch}={fill(entry.bin) if entry.bin else asset}",
                     f"sums_url.{arch}={fill(entry.checksums_url).replace('{url}', url)}"]
            continue
        asset = fill(entry.asset)
        args += [f"asset.{arch}={asset}", f"bin.{arch}={fill(entry.bin) if entry.bin else command}"]
        pinned = entry.sha256.get(version, {}).get(arch)
        if pinned:
            args.append(f"sha256.{arch}={pinned}")
        elif entry.checksums:
            args.append(f"sums.{arch}={fill(entry.checksums).replace('{asset}', asset)}")
    return args


def _docker_cli(cli: DockerCli, mirror: str | None, trust: str) -> str:
    """Docker's CLI from Docker's apt repository for the image's distribution (Debian or Ubuntu, by
    its os-release), apt checking each package against the repository's key."""
    base = mirror or cli.apt_base
    distro = '$(. /etc/os-release && echo "$ID")'
    return (f"RUN {trust}install -m 0755 -d /etc/apt/keyrings"
            f' && curl -fsSL -o /etc/apt/keyrings/docker.asc "{base}/{distro}/gpg"'
            " && chmod a+r /etc/apt/keyrings/docker.asc"
            f' && echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc] {base}/{distro}'
            ' $(. /etc/os-release && echo "$VERSION_CODENAME") stable" > /etc/apt/sources.list.d/docker.list'
            f" && apt-get update && apt-get install -y --no-install-recommends {' '.join(cli.packages)}"
            " && rm -rf /var/lib/apt/lists/*")


def _hook_lines(inputs: ImageInputs, trust: str) -> list[str]:
    """moat.yaml's build hooks (plan.hooks): root's, then the agent's user's, in the workspace."""
    lines = []
    # root's own home: the agent's (ENV HOME, set above) must not get root-owned caches.
    root = hooks.run_instruction("post_build_root", inputs.post_build_root, f"{trust}export HOME=/root\n")
    user = hooks.run_instruction("post_build", inputs.post_build, trust)
    if root:
        lines += ["USER 0:0", root, f"USER {inputs.uid}:{inputs.gid}"]
    if user:
        lines.append(user)
    return lines


def _user_lines(uid: int, gid: int) -> list[str]:
    # The agent runs as the workspace owner's uid/gid so files it writes in the workspace are theirs.
    # Base images may already own that uid or gid (node's "node" is 1000): the user is replaced,
    # an existing group is reused.
    if uid == 0:
        # A root-owned workspace: root without capabilities (see plan.identity); its home is root's.
        return [f"RUN mkdir -p {WORKSPACE_MOUNT}", "ENV HOME=/root", f"USER 0:{gid}", f"WORKDIR {WORKSPACE_MOUNT}"]
    return [
        f"RUN set -e; existing=$(getent passwd {uid} | cut -d: -f1); "
        f'if [ -n "$existing" ]; then userdel "$existing"; fi; '
        f"getent group {gid} >/dev/null || groupadd -g {gid} {AGENT_USER}; "
        f"useradd -m -d {AGENT_HOME} -u {uid} -g {gid} -s /bin/bash {AGENT_USER}; "
        f"mkdir -p {WORKSPACE_MOUNT} && chown {uid}:{gid} {WORKSPACE_MOUNT}",
        f"ENV HOME={AGENT_HOME}",
        f"USER {uid}:{gid}",
        f"WORKDIR {WORKSPACE_MOUNT}",
    ]
