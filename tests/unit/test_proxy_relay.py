"""The relay's command line (moat.proxy.relay); its relaying is tested in the integration tier
(Unix sockets)."""

from __future__ import annotations

import pytest

from moat.proxy import relay


def test_the_listen_address_is_checked() -> None:
    with pytest.raises(SystemExit):
        relay.main(["--listen", "127.0.0.1", "--to", "/x"])
    with pytest.raises(SystemExit):
        relay.main(["--listen", "127.0.0.1:70000", "--to", "/x"])
