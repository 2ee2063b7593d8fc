import sys

from testbed._venv import ensure_environment

ensure_environment("loadgen", ("numpy",))

from .cli import main  # noqa: E402

sys.exit(main())
