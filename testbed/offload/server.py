"""``python -m testbed.offload.server``: the daemon's former entry point, kept working.

The daemon lives in ``daemon.py`` and the modules it names; its command line is
``testbed/offload/__main__.py`` (``python -m testbed.offload``). This module only runs
that and re-exports the names other packages import from here.
"""

from __future__ import annotations

import sys

from .__main__ import main
from .config import ServerConfig, check_overload
from .daemon import TcpServer

__all__ = ["ServerConfig", "TcpServer", "check_overload", "main"]

if __name__ == "__main__":
    sys.exit(main())
