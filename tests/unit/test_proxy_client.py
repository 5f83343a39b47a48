"""Finding the proxy's Python (moat.proxy.client), without any daemon or socket."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from moat.proxy import client
from moat.proxy.errors import ProxyError


def test_the_proxy_python_comes_from_the_environment_or_beside_moats(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    monkeypatch.setenv(client.ENV_PROXY_PYTHON, str(python))
    assert client.find_proxy_python() == python
    python.chmod(0o644)
    with pytest.raises(ProxyError, match="is not an executable Python"):
        client.find_proxy_python()
    monkeypatch.delenv(client.ENV_PROXY_PYTHON)
    (tmp_path / "venv" / "proxy" / "bin").mkdir(parents=True)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    with pytest.raises(ProxyError) as raised:
        client.find_proxy_python()
    assert "make install" in (raised.value.hint or "")
    beside = tmp_path / "venv" / "proxy" / "bin" / "python"
    beside.write_text("#!/bin/sh\n")
    beside.chmod(0o755)
    assert client.find_proxy_python() == beside
