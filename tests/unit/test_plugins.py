"""claude.plugins and claude.marketplaces: validated where written, built into the image as the
agent's user, fetched on the host (never through a link), and enabled in the agent's settings."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from moat.agents import plugins
from moat.agents.plugins import MarketplaceSource, PluginSet
from moat.errors import ConfigError, MoatError
from moat.plan.policy import plan_caveats
from tests.unit.support import config_error, parse, plan_for
from tests.unit.test_agents import setup

BLOCK = ("claude:\n  plugins:\n    hello@standin: true\n    off@standin: false\n"
         "  marketplaces:\n    standin:\n      source: github\n      repo: acme/claude-market\n")


@pytest.mark.parametrize("text, message", [
    ("claude:\n  plugins: {'bad key': true}\n", "expected PLUGIN@MARKETPLACE"),
    ("claude:\n  marketplaces: {m: {source: github, repo: 'not a repo'}}\n", "needs repo: OWNER/REPO"),
    ("claude:\n  marketplaces: {m: {source: git, url: 'https://x.test/a.git; rm -rf ~'}}\n", "needs url"),
    ("claude:\n  marketplaces: {m: {source: git, url: 'https://me:ghp_x@x.test/a.git'}}\n",
     "must not carry a user or token"),
    ("claude:\n  marketplaces: {m: {source: git, url: 'http://x.test/a.git'}}\n", "must be https://"),
    ("claude:\n  marketplaces: {m: {source: directory}}\n", "needs path"),
    ("claude:\n  marketplaces: {'a b': {source: directory, path: x}}\n", "letters, digits, _ and -"),
])
def test_what_could_reach_a_shell_line_or_leak_a_token_is_refused_where_it_is_written(text: str, message: str) -> None:
    [problem] = config_error(text).problems
    assert message in problem.message and problem.line is not None


def test_plain_http_is_allowed_on_this_machine_and_ssh_anywhere() -> None:
    for url in ("http://127.0.0.1:8080/m.git", "http://localhost/m.git", "git@github.com:acme/m.git",
                "ssh://git@git.example.com/acme/m.git"):
        parse(f"claude:\n  marketplaces: {{m: {{source: git, url: '{url}'}}}}\n")


def test_the_image_unpacks_each_marketplace_then_installs_the_enabled_plugins_as_the_agent() -> None:
    plan = plan_for(f"dependencies: [node, claude-code]\n{BLOCK}")
    lines = plan.image.dockerfile.splitlines()
    user = lines.index("USER 0:0") if "USER 0:0" in lines else next(i for i, line in enumerate(lines)
                                                                    if line.startswith("USER "))
    copy = next(i for i, line in enumerate(lines) if "claude-marketplaces/" in line)
    assert copy > user  # after the user exists: the files are the agent's
    install = lines[copy + 1]
    assert "tar -xf /tmp/moat-marketplaces/standin.tar" in install
    assert "claude plugin install hello@standin" in install and "off@standin" not in install
    assert "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1" in install
    known = json.loads(plan.image.context["claude-marketplaces/known_marketplaces.json"])
    assert known["standin"]["source"] == {"source": "github", "repo": "acme/claude-market"}
    assert plan.image.claude_plugins is not None
    assert plan.image.claude_plugins.marketplaces[0].clone_url() == "https://github.com/acme/claude-market.git"


def test_the_tag_follows_the_plugins_asked_for() -> None:
    base = plan_for(f"dependencies: [node, claude-code]\n{BLOCK}").image.tag
    assert plan_for(f"dependencies: [node, claude-code]\n{BLOCK}").image.tag == base
    other = BLOCK.replace("off@standin: false", "off@standin: true")
    assert plan_for(f"dependencies: [node, claude-code]\n{other}").image.tag != base


def test_without_claude_code_in_the_image_they_are_unused_and_the_user_is_told() -> None:
    plan = plan_for(f"dependencies: [node]\n{BLOCK}")
    assert "claude-marketplaces" not in plan.image.dockerfile
    assert any("claude-code is not among the dependencies" in note for note in plan_caveats(plan))


def test_the_sandbox_which_builds_no_image_refuses_them() -> None:
    with pytest.raises(ConfigError) as caught:
        plan_for(f"dependencies: [node, claude-code]\n{BLOCK}", runtime="sandbox")
    [problem] = caught.value.problems
    assert "use --runtime docker" in problem.message and problem.line == 3  # claude.plugins


def test_the_agents_settings_enable_and_disable_them_as_moat_yaml_says() -> None:
    s = setup("claude", BLOCK, grant="anthropic", env={"ANTHROPIC_API_KEY": "placeholder"})
    settings = json.loads(s.home_files[".claude/settings.json"])
    assert settings["enabledPlugins"] == {"hello@standin": True, "off@standin": False}


def _members(data: bytes) -> dict[str, tuple[int, bytes | None]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member)
            out[member.name] = (member.mode, handle.read() if handle else None)
    return out


def _directory_set(name: str, written: str, workspace: Path) -> PluginSet:
    return PluginSet((MarketplaceSource(name, "directory", str(workspace / written), "", written),), (), {})


def test_a_directory_marketplace_is_archived_without_git_links_or_setuid(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    market = workspace / "market"
    (market / ".git").mkdir(parents=True)
    (market / ".git" / "config").write_text("[remote]\n")
    (market / "bin").mkdir()
    (market / "bin" / "hook.sh").write_text("#!/bin/sh\n")
    os.chmod(market / "bin" / "hook.sh", 0o4755)
    (market / "marketplace.json").write_text("{}")
    secret = tmp_path / "id_ed25519"
    secret.write_text("PRIVATE KEY")
    (market / "key").symlink_to(secret)
    (market / "keys").symlink_to(tmp_path)  # a linked directory is not walked into either
    fetched = plugins.fetch(_directory_set("m", "market", workspace), workspace)
    members = _members(fetched["claude-marketplaces/m.tar"])
    assert set(members) == {"bin", "bin/hook.sh", "marketplace.json"}
    assert members["bin/hook.sh"][0] == 0o755  # still executable, never setuid
    assert b"PRIVATE KEY" not in fetched["claude-marketplaces/m.tar"]


@pytest.mark.parametrize("path", ["/etc", "~/.ssh", "../outside", "a/../../outside"])
def test_a_directory_marketplace_outside_the_workspace_is_refused_where_it_is_written(path: str) -> None:
    [problem] = config_error(f"claude:\n  marketplaces: {{m: {{source: directory, path: '{path}'}}}}\n").problems
    assert "inside the workspace" in problem.message


def test_a_link_on_the_way_to_a_directory_marketplace_is_refused(tmp_path: Path) -> None:
    """The agent writes the workspace: it could put a link where the marketplace was."""
    workspace, home = tmp_path / "ws", tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY")
    workspace.mkdir()
    (workspace / "market").symlink_to(home / ".ssh")
    (workspace / "plugins").symlink_to(home)
    for written in ("market", "plugins/.ssh"):
        with pytest.raises(MoatError, match="not a directory of the workspace"):
            plugins.fetch(_directory_set("m", written, workspace), workspace)


def test_the_image_records_the_path_as_written_never_the_hosts(tmp_path: Path) -> None:
    config = parse("claude:\n  marketplaces: {m: {source: directory, path: ./plugins}}\n")
    found = plugins.plugin_set(config.model.claude, Path("/work/space"))
    assert found is not None and found.marketplaces[0].location == "/work/space/plugins"
    known = json.loads(plugins.known_marketplaces(found, "/home/moatuser"))
    assert known["m"]["source"] == {"source": "directory", "path": "./plugins"}


def test_a_ref_is_cloned_and_named_in_the_dockerfile(tmp_path: Path) -> None:
    source = tmp_path / "src"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q", str(source)], ["-C", str(source), "commit", "-q", "--allow-empty", "-m", "one"],
                 ["-C", str(source), "tag", "v1"], ["-C", str(source), "checkout", "-q", "-b", "next"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    (source / "only-on-v1.txt").write_text("no")  # never committed: the tag is what is cloned
    url = f"file://{source}"
    market = PluginSet((MarketplaceSource("m", "git", url, "v1"),), (), {})
    fetched = plugins.fetch(market, tmp_path, env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert "only-on-v1.txt" not in _members(fetched["claude-marketplaces/m.tar"])
    lines = plugins.dockerfile_lines(market, "/root", 0, 0)
    assert f"# claude marketplace m: git {url}@v1" in lines
    [problem] = config_error("claude:\n  marketplaces: {m: {source: github, repo: a/b, ref: '-x'}}\n").problems
    assert "a branch or tag name" in problem.message


def test_a_clone_is_stopped_when_the_run_ends(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "git"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\nexec sleep 60\n")
    fake.chmod(0o755)
    abort = threading.Event()
    timer = threading.Timer(0.5, abort.set)
    timer.start()
    market = PluginSet((MarketplaceSource("m", "git", "https://git.example.test/m.git"),), (), {})
    with pytest.raises(MoatError, match="the clone was stopped"):
        plugins.fetch(market, tmp_path, env={"PATH": f"{fake.parent}:/usr/bin:/bin"}, abort=abort)
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_marketplace_that_cannot_be_cloned_says_which_and_why(tmp_path: Path) -> None:
    missing = PluginSet((MarketplaceSource("m", "git", f"file://{tmp_path}/nothing.git"),), (), {})
    with pytest.raises(MoatError) as caught:
        plugins.fetch(missing, tmp_path, env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert caught.value.message.startswith("claude.marketplaces.m: git could not clone")
    with pytest.raises(MoatError, match="is not a directory of the workspace"):
        plugins.fetch(_directory_set("d", "none", tmp_path), tmp_path)
