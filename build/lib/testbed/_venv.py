"""Run in the project's environment, whichever Python started us.

``sudo python3 -m testbed`` from the repository finds the package but not its dependencies,
which live in the virtual environment ``scripts/setup.sh`` makes (``.venv``); re-execute
there, once, instead of dying with ModuleNotFoundError. Imports nothing outside the
standard library.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
_GUARD = "TCPS_REEXEC"  # set in the re-executed process: never loop


def ensure_environment(module: str, needs: tuple[str, ...]) -> None:
    """Return if ``needs`` import; else re-execute ``python -m module`` in .venv, or exit
    with one line saying how to make it."""
    try:
        for name in needs:
            __import__(name)
        return
    except ImportError as e:
        missing = e.name or str(e)
    python = VENV / "bin" / "python"
    in_venv = Path(sys.prefix).resolve() == VENV.resolve()
    if python.exists() and not in_venv and not os.environ.get(_GUARD):
        os.environ[_GUARD] = "1"
        os.execv(str(python), [str(python), "-m", module, *sys.argv[1:]])
    sys.exit(f"{module}: the Python package {missing!r} is missing; set up the environment with "
             f"`sudo bash {ROOT / 'scripts' / 'setup.sh'}`, then run `sudo testbed ...`")
