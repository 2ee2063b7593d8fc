import sys

from ._venv import ensure_environment

ensure_environment("testbed", ("pyroute2", "yaml"))

from .commands.cli import main  # noqa: E402

sys.exit(main())
