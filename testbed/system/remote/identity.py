"""What tells machines apart and their code the same: the testbed asks both of every machine."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

from ...describe.machines import PROJECT_ROOT

#: what must be the same on every machine of a testbed: the code that builds and serves
DIGEST_GLOBS = ("testbed/**/*.py", "testbed/**/*.c", "testbed/**/*.yaml", "loadgen/**/*.py")


def source_digest(root: Path = PROJECT_ROOT) -> str:
    """A digest of the project's sources: two machines with the same one run the same code."""
    h = hashlib.sha256()
    for pattern in DIGEST_GLOBS:
        for path in sorted(root.glob(pattern)):
            if "__pycache__" in path.parts:
                continue
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def machine_id() -> str:
    """This machine's identity (systemd's machine-id), to tell two machines from one."""
    try:
        return Path("/etc/machine-id").read_text().strip()
    except OSError:
        return socket.gethostname()
