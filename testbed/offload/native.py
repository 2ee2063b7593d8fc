"""Which fast path the engine runs: the compiled ``_native`` module, or pure Python.

``_native`` (``_native.c``, built by ``scripts/setup.sh`` through setuptools) holds the SAN
frame decoder and the shm ring copies, the per-frame and per-batch work that the profile
in docs/performance.md puts at the top of both processes. It is used when it was built
and ``TCPS_NATIVE`` is not ``0``; otherwise the pure-Python code, which stays the
reference, runs (``TCPS_NATIVE=0`` forces it, for tests and A/B runs). Both give the same
frames and the same ring bytes (tests/test_native.py).
"""

from __future__ import annotations

import os
from types import ModuleType


def load() -> ModuleType | None:
    if os.environ.get("TCPS_NATIVE", "1") == "0":
        return None
    try:
        from . import _native
    except ImportError:
        return None
    return _native


NATIVE = load()
