"""language_servers for real: the TypeScript language server (npm's, through this machine's
TLS-inspecting proxy: its CA is handed to the build) is in the agent's image and answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_moat, write_workspace

HOST_CAS = Path("/usr/local/share/ca-certificates")


@pytest.mark.engine
def test_the_typescript_language_server_is_in_the_image(engine: object, moat_home: Path, tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path / "ws", "language_servers: [typescript]\n")
    env = {"MOAT_BUILD_CA_CERTS": str(HOST_CAS)} if any(HOST_CAS.glob("*.crt")) else {}
    result = run_moat(["run", "--runtime", "docker", str(workspace), "--", "sh", "-c",
                       "typescript-language-server --version && tsc --version && command -v node"],
                      env=env, timeout=900)
    assert result.code == 0, result.output
    version, tsc, node = result.stdout.split("\n")[:3]
    assert version.split(".")[0].isdigit() and tsc.startswith("Version ") and node.endswith("/node")
