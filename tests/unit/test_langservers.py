"""moat.yaml's language_servers: the servers' dependencies added after the file's own (whose version
wins), and, with Claude Code in the image, the official marketplace's plugins enabled."""

from __future__ import annotations

from moat.agents.plugins import MarketplaceSource, plugin_set, with_plugins
from moat.config.langservers import OFFICIAL_MARKETPLACE, SERVERS, dependencies, plugins
from moat.config.schema import ClaudeConfig
from tests.unit.support import only_problem, parse, plan_for


def test_each_server_brings_its_runtime_and_itself() -> None:
    assert [d.spec for d in parse("language_servers: [typescript]\n").dependencies] == [
        "node@22", "npm:typescript", "npm:typescript-language-server"]
    assert [d.spec for d in parse("dependencies: [go@1.22]\nlanguage_servers: [go]\n").dependencies] == [
        "go@1.22", "gopls"]  # the file's go wins
    assert dependencies(["python", "go", "python"]) == ("python", "uv", "uv:pyright", "go@1.25", "gopls")
    assert set(SERVERS) == {"go", "typescript", "python"}


def test_an_unknown_or_repeated_server_is_located() -> None:
    where, message, line, _ = only_problem("language_servers: [go, rust]\n")
    assert where == "language_servers[1]" and "'go', 'typescript', 'python'" in message and line == 1
    where, message, _, _ = only_problem("language_servers: [go, go]\n")
    assert where == "language_servers[1]" and "listed twice" in message


def test_claude_code_gets_the_official_plugins_others_get_the_servers() -> None:
    plan = plan_for("dependencies: [claude-code]\nlanguage_servers: [go, typescript]\n")
    dockerfile = plan.image.dockerfile
    assert "claude plugin install gopls-lsp@claude-plugins-official" in dockerfile
    assert "claude plugin install typescript-lsp@claude-plugins-official" in dockerfile
    assert "# claude marketplace claude-plugins-official: github anthropics/claude-plugins-official" in dockerfile
    without = plan_for("language_servers: [typescript]\n").image.dockerfile
    assert "typescript-language-server" in without and "claude plugin install" not in without
    assert plugins(["python"]) == (f"pyright-lsp@{OFFICIAL_MARKETPLACE}",)


def test_moat_yamls_own_setting_of_a_plugin_or_the_marketplace_wins() -> None:
    block = ClaudeConfig.model_validate({
        "plugins": {f"gopls-lsp@{OFFICIAL_MARKETPLACE}": False},
        "marketplaces": {OFFICIAL_MARKETPLACE: {"source": "github", "repo": "my-org/mirror"}}})
    merged = with_plugins(plugin_set(block, __import__("pathlib").Path("/w")), plugins(["go", "python"]))
    assert merged is not None
    assert merged.install == (f"pyright-lsp@{OFFICIAL_MARKETPLACE}",)  # gopls stays disabled, as asked
    assert merged.marketplaces == (MarketplaceSource(OFFICIAL_MARKETPLACE, "github", "my-org/mirror"),)


def test_no_marketplace_is_fetched_for_plugins_all_set_off() -> None:
    block = ClaudeConfig.model_validate({"plugins": {f"gopls-lsp@{OFFICIAL_MARKETPLACE}": False}})
    merged = with_plugins(plugin_set(block, __import__("pathlib").Path("/w")), plugins(["go"]))
    assert merged is None  # nothing to install, nothing to clone
