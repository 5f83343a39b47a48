"""``python -m moat``: the same as the ``moat`` command."""

import sys

from moat.cli.entry import main

sys.exit(main())
